"""BatchNorm followed by LIF, keeping only the BN input for backward.

In a conv -> BN -> LIF block autograd keeps the BN input (the conv output) and
the LIF input (the BN output), both full size. :func:`bn_lif` keeps the BN
input only (plus the weight, bias and, with a residual, the addend); its
backward recomputes ``z = BN(y) [+ residual]`` and the LIF forward from it,
then runs the BN and LIF backward through the same PyTorch/tcl_fast ops as the
unfused block, so values, gradients and running statistics equal those of
``BatchNorm`` followed by ``LIFMultiStep`` (bit for bit on CPU; tests check it).

Status: the recompute runs PyTorch's batch_norm and tcl_fast's LIF op in the
backward (activation recomputation of the BN+LIF pair); it is *not* yet one
fused kernel that normalises inside the LIF kernel and reduces BN's
per-channel sums in the same pass. The memory saving is the same; the time
cost is one extra BN forward and LIF forward per block in the backward.

Statistics are over T*B (SpikingJelly's ``SeqToANNContainer(BatchNorm2d)``,
TET's tdBN-style layers): ``y`` is ``[T, B, C, ...]`` and BN sees
``[T*B, C, ...]``. Per-step statistics are not implemented.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcl_fast.nn.lif import LIFMultiStep
from tcl_fast.ops.lif import lif_multistep
from tcl_fast.ops.pack import mark_spikes

__all__ = ["BNLIF", "bn_lif"]


def _bn_args(bn: nn.modules.batchnorm._BatchNorm):
    """(bn_training, running_mean, running_var, exponential_average_factor), as _BatchNorm.forward."""
    if bn.momentum is None:
        factor = 0.0
    else:
        factor = bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn_training = bn.training or (bn.running_mean is None and bn.running_var is None)
    use_running = not bn.training or bn.track_running_stats
    return (bn_training, bn.running_mean if use_running else None,
            bn.running_var if use_running else None, factor)


def _lif_call(lif: LIFMultiStep, z: torch.Tensor, decay):
    return lif_multistep(z, None, decay=decay, spec=lif.spec, backend=lif.backend)


def _normalise(branches, stats, ys, weights, biases, factors, T):
    """sum over branches of BN_i(y_i), as ``[T, B, C, ...]`` (the unfused block's order)."""
    z = None
    for (bn, bn_training), (rmean, rvar), y, w, b, f in zip(branches, stats, ys, weights, biases, factors):
        zi = F.batch_norm(y.flatten(0, 1), rmean, rvar, w, b, bn_training, f, bn.eps)
        zi = zi.view(T, -1, *zi.shape[1:]) if zi.is_contiguous() else zi.reshape(T, -1, *zi.shape[1:])
        z = zi if z is None else z + zi
    return z


class _BNLIFFunction(torch.autograd.Function):
    """spikes = LIF(sum_i BN_i(y_i) + residual); saves the y_i, the residual and parameters.

    Inputs after ``(lif, branches, factors, n)``: ``residual, lif_w`` then, per
    branch, ``y, weight, bias, running_mean, running_var``.
    """

    @staticmethod
    def forward(ctx, lif, branches, factors, residual, lif_w, *per_branch):
        n = len(branches)
        ys, ws, bs = per_branch[0::5], per_branch[1::5], per_branch[2::5]
        running = list(zip(per_branch[3::5], per_branch[4::5]))
        T = ys[0].shape[0]
        z = _normalise(branches, running, ys, ws, bs, factors, T)
        if residual is not None:
            z = z + residual
        decay = torch.sigmoid(lif_w) if lif_w is not None else 1.0 / lif.tau
        spikes = _lif_call(lif, z, decay)
        # Eval mode normalises with the running statistics: keep this call's (C-sized) copy.
        stats = [(None, None) if training else (rm.clone(), rv.clone())
                 for (_, training), (rm, rv) in zip(branches, running)]
        ctx.save_for_backward(residual, lif_w, *ys, *ws, *bs, *(t for st in stats for t in st))
        ctx.n, ctx.lif, ctx.branches = n, lif, branches
        ctx.autocast = [(dev, True, torch.get_autocast_dtype(dev))
                        for dev in ("cpu", "cuda") if torch.is_autocast_enabled(dev)]
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        n = ctx.n
        saved = ctx.saved_tensors
        residual, lif_w = saved[0], saved[1]
        ys, ws, bs = saved[2:2 + n], saved[2 + n:2 + 2 * n], saved[2 + 2 * n:2 + 3 * n]
        flat = saved[2 + 3 * n:]
        stats = list(zip(flat[0::2], flat[1::2]))
        needs = ctx.needs_input_grad
        # needs index: 3 residual, 4 lif_w, 5 + 5*i + (0 y, 1 weight, 2 bias)
        leaves, slots = [], []

        def leaf(t, idx):
            if t is None:
                return None
            need = needs[idx]
            t = t.detach().requires_grad_(need)
            if need:
                leaves.append(t)
                slots.append(idx)
            return t

        r_, lw_ = leaf(residual, 3), leaf(lif_w, 4)
        ys_ = [leaf(y, 5 + 5 * i) for i, y in enumerate(ys)]
        ws_ = [leaf(w, 6 + 5 * i) for i, w in enumerate(ws)]
        bs_ = [leaf(b, 7 + 5 * i) for i, b in enumerate(bs)]
        with torch.enable_grad(), _autocast(ctx.autocast):
            z = _normalise(ctx.branches, stats, ys_, ws_, bs_, [0.0] * n, ys_[0].shape[0])
            if r_ is not None:
                z = z + r_
            decay = torch.sigmoid(lw_) if lw_ is not None else 1.0 / ctx.lif.tau
            spikes = _lif_call(ctx.lif, z, decay)
        grads = torch.autograd.grad(spikes, leaves, grad_spikes) if leaves else ()
        out = [None] * len(needs)
        for idx, g in zip(slots, grads):
            out[idx] = g
        return tuple(out)


class _autocast:
    """Re-enter the forward's autocast state in the backward."""

    def __init__(self, states):
        self.ctxs = [torch.autocast(dev, dtype=dtype, enabled=on) for dev, on, dtype in states]

    def __enter__(self):
        for c in self.ctxs:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.ctxs):
            c.__exit__(*exc)
        return False


def bn_lif(y: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, lif: LIFMultiStep,
           residual: torch.Tensor | None = None, *,
           shortcut: tuple[torch.Tensor, nn.modules.batchnorm._BatchNorm] | None = None) -> torch.Tensor:
    """``lif(BN(y) [+ shortcut_bn(shortcut_y)] [+ residual])``, BN over T*B; keeps only the BN inputs.

    ``y: [T, B, C, ...]``; ``bn`` an ``nn.BatchNorm1d/2d/3d`` (its parameters,
    buffers and train/eval mode are used and updated exactly as calling it
    would); ``lif`` a :class:`~tcl_fast.nn.LIFMultiStep`. ``shortcut=(y2, bn2)``
    adds a second normalised branch (a ResNet's projection shortcut) whose BN
    output is not kept either. Spikes come back marked for
    :func:`tcl_fast.pack_spikes`. Under torch.compile, or when no gradient is
    recorded, it runs the modules as they are.
    """
    if y.dim() < 3:
        raise ValueError(f"bn_lif expects y of shape [T, B, C, ...], got {tuple(y.shape)}")
    pairs = [(y, bn)] + ([shortcut] if shortcut is not None else [])
    needs_grad = torch.is_grad_enabled() and (
        any(t.requires_grad for t, _ in pairs) or (residual is not None and residual.requires_grad)
        or any(p.requires_grad for _, m in pairs for p in m.parameters())
        or any(p.requires_grad for p in lif.parameters()))
    if torch.compiler.is_compiling() or not needs_grad:
        T = y.shape[0]
        z = None
        for t, m in pairs:
            zi = m(t.flatten(0, 1))
            zi = zi.reshape(T, -1, *zi.shape[1:])
            z = zi if z is None else z + zi
        return lif(z if residual is None else z + residual)
    branches, factors, flat = [], [], []
    for t, m in pairs:
        training, rmean, rvar, factor = _bn_args(m)
        branches.append((m, training))
        factors.append(factor)
        flat += [t, m.weight, m.bias, rmean, rvar]
    spikes = _BNLIFFunction.apply(lif, tuple(branches), tuple(factors), residual,
                                  lif.w if lif.learnable_tau else None, *flat)
    return mark_spikes(spikes)


class BNLIF(nn.Module):
    """``BatchNorm`` (over T*B) then ``LIFMultiStep``, saving only the BN input.

    ``BNLIF(64)`` builds a BatchNorm2d(64) and a LIFMultiStep(**lif_kwargs);
    ``BNLIF.from_modules(bn, lif)`` wraps existing ones (shares their
    parameters). Call as ``bnlif(y)`` or ``bnlif(y, residual)`` with
    ``y: [T, B, C, ...]``; the state dict holds ``bn.*`` and ``lif.*``.
    """

    def __init__(self, num_features: int | None = None, *, eps: float = 1e-5, momentum: float | None = 0.1,
                 bn: nn.Module | None = None, lif: LIFMultiStep | None = None, **lif_kwargs):
        super().__init__()
        if bn is None:
            if num_features is None:
                raise ValueError("BNLIF needs num_features or a bn module")
            bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.bn = bn
        self.lif = lif if lif is not None else LIFMultiStep(**lif_kwargs)

    @classmethod
    def from_modules(cls, bn: nn.Module, lif: LIFMultiStep) -> BNLIF:
        return cls(bn=bn, lif=lif)

    def forward(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return bn_lif(y, self.bn, self.lif, residual)
