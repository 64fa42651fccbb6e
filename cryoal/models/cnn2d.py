"""CNN2D: a small VGG-style 2D classifier for the image mode (particle images, micrograph patches).

Stages of two 3x3 conv-BN-ReLU blocks, each but the last followed by 2x max pooling; the number
of poolings follows the image size (8 px images pool once, 64 px and larger four times), so the
same architecture serves 8x8 digits and 128x128 particle images. Then global average pooling,
dropout and the linear head. `Dropout2d` in the trunk and `Dropout` before the head keep MC-dropout
BALD possible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from cryoal.errors import CryoalError, OptionError
from cryoal.models._blocks import Classifier, init_weights

MIN_SIZE = 8
MAX_POOLS = 4


def conv_bn_relu_2d(c_in: int, c_out: int, kernel: int = 3) -> nn.Sequential:
    """A 2D convolution (same padding, no bias: BN supplies it), BatchNorm2d and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def n_pools(shape: Sequence[int], min_grid: int = 4, most: int = MAX_POOLS) -> int:
    """How many 2x poolings keep the smallest axis at `min_grid` pixels or more (at least 1)."""
    smallest = min(shape)
    fits = int(math.floor(math.log2(smallest / min_grid))) if smallest >= min_grid else 0
    return max(1, min(most, fits))


def check_input_dims(x, ndim: int, arch: str) -> None:
    """CryoalError when a batch is not (B, 1, *ndim spatial axes): e.g. 3D data given to a 2D model."""
    if x.dim() != ndim + 2:
        got = x.dim() - 2
        raise CryoalError(
            f"{arch}: a {ndim}D model was given {got}D data (batch shape {tuple(x.shape)}); "
            f"it expects (B, 1, {', '.join('DHW'[3 - ndim:])})"
        )


class CNN2D(Classifier):
    """Conv stages of width w, 2w, 4w, 4w, ... (`pools` + 1 of them), global pool, dropout, FC."""

    def __init__(self, n_classes: int, pools: int = 2, width: int = 32, dropout: float = 0.5,
                 spatial_dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for stage in range(pools + 1):
            c_out = width * 2 ** min(stage, 2)
            layers += [conv_bn_relu_2d(c_in, c_out), conv_bn_relu_2d(c_out, c_out)]
            if stage < pools:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        layers += [nn.Dropout2d(spatial_dropout), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)
        init_weights(self)

    def features(self, x):
        check_input_dims(x, 2, "cnn2d")
        return self.trunk(x)


IMAGE_ARCHS = {"cnn2d": CNN2D}
DEFAULT_IMAGE_ARCH = "cnn2d"


def build_image_model(arch: str, input_shape: Sequence[int], n_classes: int, **kw) -> nn.Module:
    """A fresh 2D classifier for images of shape (H, W); the pooling depth follows the size."""
    if arch not in IMAGE_ARCHS:
        raise OptionError(f"--arch: unknown image architecture '{arch}'; "
                          f"choose one of {', '.join(IMAGE_ARCHS)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 2:
        raise CryoalError(f"{arch}: expects a 2D image shape (H, W), got {len(shape)}D shape {shape}")
    if min(shape) < MIN_SIZE:
        raise CryoalError(f"{arch}: image shape {shape} is too small; images need >= {MIN_SIZE} pixels")
    if n_classes < 2:
        raise CryoalError(f"{arch}: needs at least 2 classes, got {n_classes}")
    kw = dict(kw)
    kw.setdefault("pools", n_pools(shape))
    model = IMAGE_ARCHS[arch](int(n_classes), **kw)
    model.arch = arch
    model.arch_kwargs = kw
    model.input_shape = list(shape)
    model.n_classes = int(n_classes)
    return model


__all__ = ["CNN2D", "DEFAULT_IMAGE_ARCH", "IMAGE_ARCHS", "build_image_model", "check_input_dims", "n_pools"]
