"""A small 3D ResNet: a full-resolution stem and three strided residual stages (BasicBlocks).

Light in compute: only the 16-channel stem runs at full resolution, each stage halves the grid.
"""

from __future__ import annotations

from torch import nn

from cryoal.models._blocks import Classifier, conv_bn_relu, init_weights


class BasicBlock(nn.Module):
    """Two 3x3x3 convs with BatchNorm and an identity (or strided 1x1 conv + BN) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(c_in, c_out, stride=stride)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out)
            )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNet3D(Classifier):
    """Stem 16 ch at full resolution, stages 32/64/128 at stride 2, global pool, dropout, FC."""

    def __init__(self, n_classes: int, width: int = 16, dropout: float = 0.5, spatial_dropout: float = 0.1):
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            conv_bn_relu(1, w),
            BasicBlock(w, 2 * w, stride=2),
            BasicBlock(2 * w, 4 * w, stride=2),
            BasicBlock(4 * w, 8 * w, stride=2),
            nn.Dropout3d(spatial_dropout),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(8 * w, n_classes)
        init_weights(self)
