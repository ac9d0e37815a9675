"""Time-first spiking models that return per-step logits and projections."""
from __future__ import annotations

from typing import Callable

from torch import nn

from tcl_fast.models.layers import ProjectionHead, SeqToANN, SNNOutput, SpikingNet, set_bn_fusion
from tcl_fast.models.resnet import SpikingResNet, resnet18, resnet19
from tcl_fast.models.small import SmallSNN
from tcl_fast.models.vgg import VGGSNN

_MODELS: dict[str, Callable[..., SpikingNet]] = {
    "small": SmallSNN,
    "resnet18": resnet18,
    "resnet19": resnet19,
    "vggsnn": VGGSNN,
}
MODELS = tuple(_MODELS)


def build_model(name: str, num_classes: int, in_channels: int, *, proj_dim: int = 128,
                lif_backend: str = "auto", fuse_bn: bool = False, **lif_kwargs) -> nn.Module:
    """Build a model by name; extra keyword arguments go to every ``LIFMultiStep``.

    ``fuse_bn`` runs each BN that feeds a LIF inside it (``set_bn_fusion``): same
    parameters and state dict, less memory held for backward, results equal up
    to float rounding (bit for bit with ``set_bn_fusion(model, impl="recompute")``).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r}; choose one of {', '.join(MODELS)}")
    for what, value in (("num_classes", num_classes), ("in_channels", in_channels), ("proj_dim", proj_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive int, got {value!r}")
    model = _MODELS[name](num_classes, in_channels, proj_dim=proj_dim, lif_backend=lif_backend, **lif_kwargs)
    return set_bn_fusion(model, fuse_bn)


__all__ = ["MODELS", "build_model", "set_bn_fusion", "SNNOutput", "SeqToANN", "ProjectionHead", "SpikingNet",
           "SmallSNN", "SpikingResNet", "VGGSNN", "resnet18", "resnet19"]
