"""Temporal supervised-contrastive losses for SNNs (TCL and STCL, Qiu et al. 2023).

An SNN emits one projection per time step. TCL treats every (time step,
sample) pair as an anchor of a supervised-contrastive loss: the same sample at
other steps and every same-class sample at any step are its positives. STCL
does the same over two augmented views of the batch, so both the other view
and the other time steps supply positives. Both reduce to ``supcon_loss`` on
the flattened ``[T*B, D]`` (or ``[2*T*B, D]``) matrix with the labels repeated,
which never builds the N x N similarity matrix.
"""
from __future__ import annotations

import torch
from torch import nn

from tcl_fast.ops.supcon import (
    BACKENDS,
    DEFAULT_TEMPERATURE,
    check_labels,
    check_temperature,
    supcon_loss,
)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_time_features(name: str, features) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if features.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {features.dtype}"
        )
    if features.dim() != 3:
        raise ValueError(f"{name} must be 3-D [T, B, D], got shape {tuple(features.shape)}")
    if min(features.shape) < 1:
        raise ValueError(f"{name} must have T, B, D >= 1, got shape {tuple(features.shape)}")


def tcl_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    base_temperature: float | None = None,
    *,
    normalize: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Temporal contrastive loss of per-step projections ``features: [T, B, D]``.

    Every one of the T*B representations is an anchor; ``labels: [B]`` holds
    one integer class per sample. Equal to ``supcon_loss`` on
    ``features.reshape(T * B, D)`` with ``labels.repeat(T)``. See
    ``supcon_loss`` for the temperatures, ``normalize``, ``backend``, dtype
    handling and NaN behaviour.
    """
    _check_time_features("features", features)
    t, b, d = features.shape
    check_labels(labels, b, features.device, length_name="B (features.shape[1])")
    return supcon_loss(features.reshape(t * b, d), labels.repeat(t), temperature,
                       base_temperature, normalize, backend=backend)


def stcl_loss(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = DEFAULT_TEMPERATURE,
    base_temperature: float | None = None,
    *,
    normalize: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Siamese temporal contrastive loss over two augmented views, each ``[T, B, D]``.

    All 2*T*B representations are anchors; a sample's other view and other
    time steps, and every same-class representation, are positives. Equal to
    ``supcon_loss`` on ``cat([features_a, features_b]).reshape(2*T*B, D)`` with
    ``labels.repeat(2*T)``. Both views must share shape, dtype and device.
    """
    _check_time_features("features_a", features_a)
    _check_time_features("features_b", features_b)
    if features_a.shape != features_b.shape:
        raise ValueError(
            f"features_a and features_b must have the same shape, got "
            f"{tuple(features_a.shape)} and {tuple(features_b.shape)}"
        )
    if features_a.dtype != features_b.dtype:
        raise TypeError(
            f"features_a and features_b must have the same dtype, got "
            f"{features_a.dtype} and {features_b.dtype}"
        )
    if features_a.device != features_b.device:
        raise ValueError(
            f"features_a is on {features_a.device} but features_b is on {features_b.device}"
        )
    t, b, d = features_a.shape
    check_labels(labels, b, features_a.device, length_name="B (features_a.shape[1])")
    views = torch.cat([features_a, features_b], dim=0).reshape(2 * t * b, d)
    return supcon_loss(views, labels.repeat(2 * t), temperature, base_temperature, normalize,
                       backend=backend)


class _ContrastiveLossBase(nn.Module):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, base_temperature: float | None = None,
                 normalize: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.temperature = check_temperature("temperature", temperature)
        self.base_temperature = check_temperature("base_temperature", base_temperature,
                                                  allow_none=True)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.normalize = normalize
        self.backend = backend

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, base_temperature={self.base_temperature}, "
                f"normalize={self.normalize}, backend={self.backend!r}")


class SupConLoss(_ContrastiveLossBase):
    """Module form of ``supcon_loss``: ``forward(z [N, D], labels [N])``."""

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon_loss(z, labels, self.temperature, self.base_temperature, self.normalize,
                           backend=self.backend)


class TCLLoss(_ContrastiveLossBase):
    """Module form of ``tcl_loss``: ``forward(features [T, B, D], labels [B])``."""

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return tcl_loss(features, labels, self.temperature, self.base_temperature,
                        normalize=self.normalize, backend=self.backend)


class STCLLoss(_ContrastiveLossBase):
    """Module form of ``stcl_loss``: ``forward(features_a, features_b [T, B, D], labels [B])``."""

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        return stcl_loss(features_a, features_b, labels, self.temperature,
                         self.base_temperature, normalize=self.normalize, backend=self.backend)
