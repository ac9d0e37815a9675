"""VGGSNN for DVS event frames (2 x 48 x 48), as used by TET."""
from __future__ import annotations

from torch import nn

from tcl_fast.models.layers import FusableSequential, ProjectionHead, SeqToANN, SpikingNet, conv_bn, make_lif

_CFG = [64, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"]


class VGGSNN(SpikingNet):
    """conv stack per _CFG (avg pools), then flatten a 3x3 map -> FC.

    The final adaptive pool is the identity for 48x48 input (48/16 = 3) and
    lets the same net run on other sizes (e.g. tiny test inputs).
    """

    def __init__(self, num_classes: int, in_channels: int, *, proj_dim: int = 128,
                 lif_backend: str = "auto", final_hw: int = 3, **lif_kwargs):
        super().__init__()
        self.stem = SeqToANN(*conv_bn(in_channels, _CFG[0]))
        layers: list[nn.Module] = [make_lif(lif_backend, lif_kwargs)]
        ch = _CFG[0]
        for c in _CFG[1:]:
            if c == "P":
                layers.append(SeqToANN(nn.AvgPool2d(2)))
            else:
                layers += [SeqToANN(*conv_bn(ch, c)), make_lif(lif_backend, lif_kwargs)]
                ch = c
        layers.append(SeqToANN(nn.AdaptiveAvgPool2d(final_hw), nn.Flatten()))
        self.body = FusableSequential(*layers)
        self.feature_dim = ch * final_hw * final_hw
        self.classifier = SeqToANN(nn.Linear(self.feature_dim, num_classes))
        self.head = ProjectionHead(self.feature_dim, proj_dim, hidden=512)
