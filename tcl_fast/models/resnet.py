"""Spiking ResNet-19 (as in TET) and ResNet-18 for 32x32 inputs."""
from __future__ import annotations

import torch
from torch import nn

from tcl_fast.models.layers import (FusableSequential, ProjectionHead, SeqToANN, SpikingNet, conv_bn, make_lif,
                                    seq_bn_lif)


class BasicBlock(nn.Module):
    """conv-BN-LIF-conv-BN, add the shortcut, then LIF (spikes in, spikes out).

    With ``fuse_bn`` both BNs run inside their LIF (tcl_fast.nn.bnlif), the
    second with the shortcut added (a projection shortcut's BN inside it too):
    only the conv outputs are kept.
    """

    fuse_bn = False
    bn_impl = "auto"

    def __init__(self, in_ch: int, out_ch: int, stride: int, lif_backend: str, lif_kwargs: dict):
        super().__init__()
        self.conv1 = SeqToANN(*conv_bn(in_ch, out_ch, stride))
        self.lif1 = make_lif(lif_backend, lif_kwargs)
        self.conv2 = SeqToANN(*conv_bn(out_ch, out_ch))
        self.shortcut = (SeqToANN(*conv_bn(in_ch, out_ch, stride, kernel=1))
                         if stride != 1 or in_ch != out_ch else nn.Identity())
        self.lif2 = make_lif(lif_backend, lif_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fused: a projection shortcut's BN runs inside lif2 too
        return self._second(self._first(x), x)

    def _first(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_bn:
            return seq_bn_lif(self.conv1, self.lif1, x, impl=self.bn_impl)
        return self.lif1(self.conv1(x))

    def _second(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_bn:
            if isinstance(self.shortcut, SeqToANN):
                return seq_bn_lif(self.conv2, self.lif2, s, shortcut=self.shortcut, shortcut_x=x, impl=self.bn_impl)
            return seq_bn_lif(self.conv2, self.lif2, s, residual=self.shortcut(x), impl=self.bn_impl)
        return self.lif2(self.conv2(s) + self.shortcut(x))

    def checkpoint_halves(self):
        """The block as two steps, each from spikes to spikes: ``s = first(x)``, ``second(s, x)``
        (tcl_fast.optimize_memory recomputes one at a time)."""
        return self._first, self._second


class SpikingResNet(SpikingNet):
    def __init__(self, num_classes: int, in_channels: int, *, stem_width: int,
                 stages: list[tuple[int, int, int]], fc_hidden: int | None, proj_dim: int = 128,
                 lif_backend: str = "auto", **lif_kwargs):
        super().__init__()
        self.stem = SeqToANN(*conv_bn(in_channels, stem_width))
        layers: list[nn.Module] = [make_lif(lif_backend, lif_kwargs)]
        ch = stem_width
        for width, blocks, stride in stages:
            for i in range(blocks):
                layers.append(BasicBlock(ch, width, stride if i == 0 else 1, lif_backend, lif_kwargs))
                ch = width
        layers.append(SeqToANN(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        self.body = FusableSequential(*layers)
        self.feature_dim = ch
        if fc_hidden:  # ResNet-19: FC 256 + LIF before the class layer
            self.classifier = nn.Sequential(
                SeqToANN(nn.Linear(ch, fc_hidden)), make_lif(lif_backend, lif_kwargs),
                SeqToANN(nn.Linear(fc_hidden, num_classes)),
            )
        else:
            self.classifier = SeqToANN(nn.Linear(ch, num_classes))
        self.head = ProjectionHead(ch, proj_dim)


def resnet19(num_classes: int, in_channels: int, **kwargs) -> SpikingResNet:
    return SpikingResNet(num_classes, in_channels, stem_width=64,
                         stages=[(128, 3, 1), (256, 3, 2), (512, 2, 2)], fc_hidden=256, **kwargs)


def resnet18(num_classes: int, in_channels: int, **kwargs) -> SpikingResNet:
    return SpikingResNet(num_classes, in_channels, stem_width=64,
                         stages=[(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)], fc_hidden=None,
                         **kwargs)
