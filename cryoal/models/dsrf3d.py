"""DSRF3D-v2: the VGG-style 3D CNN used as a subtomogram-classification baseline.

Three stages of two 3x3x3 convolutions (32-32, 64-64, 128-128), each followed by 2x max pooling,
then adaptive average pooling to 2^3 (so any box from 16^3 to 64^3 gives the same FC size), a
fully connected layer and the classifier head. This is the heaviest of the three archs: most of
its compute sits in the 32->32 convolution at full resolution.
"""

from __future__ import annotations

from torch import nn

from cryoal.models._blocks import Classifier, conv_bn_relu, init_weights


class DSRF3D(Classifier):
    """DSRF3D-v2 with BatchNorm; `width` scales the channel counts (32 = the published net)."""

    def __init__(self, n_classes: int, width: int = 32, fc: int = 256, dropout: float = 0.5,
                 spatial_dropout: float = 0.1):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.trunk = nn.Sequential(
            conv_bn_relu(1, w1), conv_bn_relu(w1, w1), nn.MaxPool3d(2),
            conv_bn_relu(w1, w2), conv_bn_relu(w2, w2), nn.MaxPool3d(2),
            conv_bn_relu(w2, w3), conv_bn_relu(w3, w3), nn.MaxPool3d(2),
            nn.Dropout3d(spatial_dropout),
            nn.AdaptiveAvgPool3d(2),
            nn.Flatten(),
            nn.Linear(w3 * 8, fc),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(fc, n_classes)
        init_weights(self)
