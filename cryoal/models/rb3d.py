"""RB3D: a conv stem followed by four inception-style bottlenecks (1x1 and 3x3 branches).

Each bottleneck concatenates a 1x1 branch with a 1x1 -> 3x3 branch (the 1x1 reduces channels
before the costly 3x3, which is what keeps the net light). Every conv has its own BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from cryoal.models._blocks import Classifier, conv_bn_relu, init_weights


class Bottleneck(nn.Module):
    """Inception-style block: concat(1x1 conv, 1x1 -> 3x3 conv); `c_out` channels in total."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        half = c_out // 2
        self.branch1 = conv_bn_relu(c_in, half, kernel=1)
        self.branch3 = nn.Sequential(
            conv_bn_relu(c_in, max(half // 2, 8), kernel=1),
            conv_bn_relu(max(half // 2, 8), c_out - half, kernel=3),
        )

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch3(x)], dim=1)


class RB3D(Classifier):
    """Stem (3x3x3 conv, pool), four bottlenecks with pooling between, global pool, dropout, FC."""

    def __init__(self, n_classes: int, width: int = 32, dropout: float = 0.5, spatial_dropout: float = 0.1):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            conv_bn_relu(1, w), nn.MaxPool3d(2),
            Bottleneck(w, 2 * w), nn.MaxPool3d(2),
            Bottleneck(2 * w, 2 * w),
            Bottleneck(2 * w, 4 * w), nn.MaxPool3d(2),
            Bottleneck(4 * w, 4 * w),
            nn.Dropout3d(spatial_dropout),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(4 * w, n_classes)
        init_weights(self)
