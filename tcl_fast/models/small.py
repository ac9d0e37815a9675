"""A small convolutional SNN for 8x8 inputs (sklearn digits); fast on a CPU."""
from __future__ import annotations

from torch import nn

from tcl_fast.models.layers import FusableSequential, ProjectionHead, SeqToANN, SpikingNet, conv_bn, make_lif


class SmallSNN(SpikingNet):
    """conv32 - conv64 - pool - conv128 - pool - global pool (-> 128 features) - FC."""

    def __init__(self, num_classes: int, in_channels: int, *, proj_dim: int = 128,
                 width: int = 32, lif_backend: str = "auto", **lif_kwargs):
        super().__init__()
        w = width
        self.stem = SeqToANN(*conv_bn(in_channels, w))
        self.body = FusableSequential(
            make_lif(lif_backend, lif_kwargs),
            SeqToANN(*conv_bn(w, 2 * w)),
            make_lif(lif_backend, lif_kwargs),
            SeqToANN(nn.AvgPool2d(2), *conv_bn(2 * w, 4 * w)),
            make_lif(lif_backend, lif_kwargs),
            SeqToANN(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        )
        self.feature_dim = 4 * w
        self.classifier = SeqToANN(nn.Linear(self.feature_dim, num_classes))
        self.head = ProjectionHead(self.feature_dim, proj_dim)
