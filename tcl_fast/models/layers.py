"""Building blocks shared by the spiking models (all time-first ``[T, B, ...]``)."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from tcl_fast.nn import LIFMultiStep
from tcl_fast.nn.bnlif import IMPLS, bn_lif


class SNNOutput(NamedTuple):
    """What every model returns: per-step class scores and per-step projections."""

    logits: torch.Tensor  # [T, B, num_classes]
    features: torch.Tensor  # [T, B, proj_dim], not normalised (the loss does that)


class SeqToANN(nn.Module):
    """Apply ordinary (per-sample) layers to ``[T, B, ...]`` by merging T and B.

    Conv/BN/Pool/Linear have no notion of time, so one call on ``[T*B, ...]``
    is both correct and much faster than a Python loop over the steps.
    """

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.module(x.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])


def split_bn(seq: SeqToANN) -> tuple[nn.Module, nn.modules.batchnorm._BatchNorm] | None:
    """(layers before the BN, the BN) when ``seq`` ends in a BatchNorm, else None."""
    mods = seq.module
    if isinstance(mods, nn.Sequential) and len(mods) >= 2 and isinstance(mods[-1], nn.modules.batchnorm._BatchNorm):
        return mods[:-1], mods[-1]
    return None


def _pre_bn(seq: SeqToANN, x: torch.Tensor):
    before, bn = split_bn(seq)
    T, B = x.shape[:2]
    y = before(x.flatten(0, 1))
    return y.reshape(T, B, *y.shape[1:]), bn


def seq_bn_lif(seq: SeqToANN, lif: LIFMultiStep, x: torch.Tensor, residual: torch.Tensor | None = None,
               shortcut: SeqToANN | None = None, shortcut_x: torch.Tensor | None = None,
               impl: str = "auto") -> torch.Tensor:
    """``lif(seq(x) [+ shortcut(shortcut_x)] [+ residual])`` with the BN at the end of
    ``seq`` (and of ``shortcut``) run inside the LIF (``tcl_fast.nn.bnlif``, ``impl``
    as there): the BN inputs are the only full tensors kept for backward."""
    y, bn = _pre_bn(seq, x)
    sc = _pre_bn(shortcut, shortcut_x) if shortcut is not None else None
    return bn_lif(y, bn, lif, residual, shortcut=sc, impl=impl)


class FusableSequential(nn.Sequential):
    """``nn.Sequential`` (same state dict) that, with ``fuse_bn`` set, runs each
    ``SeqToANN(..., BatchNorm)`` followed by a ``LIFMultiStep`` as one
    ``bn_lif`` call, so the BN output is not kept for backward."""

    fuse_bn = False
    bn_impl = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fuse_bn:
            return super().forward(x)
        return run_fusable(list(self), x, self.bn_impl)


def run_fusable(mods: list[nn.Module], x: torch.Tensor, impl: str) -> torch.Tensor:
    """Run ``mods`` in order, each ``SeqToANN(..., BatchNorm)`` then ``LIFMultiStep`` as one ``bn_lif``
    (FusableSequential's fused forward; tcl_fast.memory runs slices of it)."""
    i = 0
    while i < len(mods):
        m = mods[i]
        if (i + 1 < len(mods) and isinstance(m, SeqToANN) and isinstance(mods[i + 1], LIFMultiStep)
                and split_bn(m) is not None):
            x = seq_bn_lif(m, mods[i + 1], x, impl=impl)
            i += 2
        else:
            x = m(x)
            i += 1
    return x


def set_bn_fusion(model: nn.Module, enabled: bool = True, impl: str = "auto") -> nn.Module:
    """Turn BN-into-LIF fusion on or off in every block of a tcl_fast model that
    supports it (parameters and state dict unchanged); ``impl`` as
    ``tcl_fast.nn.bn_lif``'s ("auto", "kernel", "recompute"). Returns the model."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    for m in model.modules():
        if hasattr(type(m), "fuse_bn"):
            m.fuse_bn = bool(enabled)
            m.bn_impl = impl
    return model


def make_lif(lif_backend: str, lif_kwargs: dict) -> LIFMultiStep:
    return LIFMultiStep(backend=lif_backend, **lif_kwargs)


def conv_bn(in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_ch)]


class ProjectionHead(nn.Module):
    """Linear-BN-ReLU-Linear on each step's pooled features (SupCon-style head)."""

    def __init__(self, in_dim: int, proj_dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or in_dim
        self.net = SeqToANN(
            nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, proj_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.net.module[1]
        if self.training and x.shape[0] * x.shape[1] == 1:
            # BatchNorm1d cannot take batch statistics of one sample (T = B = 1):
            # use the running statistics for this call instead of failing.
            bn.train(False)
            try:
                return self.net(x)
            finally:
                bn.train(True)
        return self.net(x)


class SpikingNet(nn.Module):
    """Common forward: encoding, time handling, the backbone, classifier and projection head.

    Subclasses set ``stem`` (a SeqToANN run once per distinct input), ``body``
    (time-first modules after the stem), ``classifier`` (pooled features ->
    logits, time-first) and ``head`` (pooled features -> projections).
    """

    stem: SeqToANN
    body: nn.Module
    classifier: nn.Module
    head: ProjectionHead

    def forward(self, x: torch.Tensor, T: int | None = None) -> SNNOutput:
        if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
            raise ValueError(f"T must be a positive int, got {T!r}")
        if x.dim() == 4:  # static image: direct encoding, the same input at every step
            if T is None:
                raise ValueError("static input [B, C, H, W] needs T (the number of time steps)")
            # The stem is per-step and the input repeats, so compute it once and repeat its output.
            y = self.stem.module(x)
            y = y.unsqueeze(0).expand(T, *y.shape).contiguous()
        elif x.dim() == 5:  # already time-first [T, B, C, H, W]
            if T is not None:
                if T > x.shape[0]:
                    raise ValueError(f"asked for T={T} steps but the input has only {x.shape[0]}")
                x = x[:T]
            y = self.stem(x)
        else:
            raise ValueError(f"expected [B, C, H, W] or [T, B, C, H, W] input, got shape {tuple(x.shape)}")
        pooled = self.body(y)  # [T, B, F]
        return SNNOutput(self.classifier(pooled), self.head(pooled))
