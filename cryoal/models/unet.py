"""A small U-Net, 2D or 3D, for the segmentation mode: (B, 1, *spatial) -> logits (B, C, *spatial).

Encoder levels of two conv-BN-ReLU blocks with 2x max pooling between them, a bottleneck with
spatial dropout (so MC-dropout BALD works), and a decoder of 2x transposed convolutions whose
output is concatenated with the encoder's skip connection. The head is a 1x1 convolution.

`depth` (number of poolings) follows the patch size: the coarsest grid keeps at least 4 pixels.
Inputs whose size is not a multiple of 2^depth are zero-padded (zero is the mean of a z-scored
image) and the output is cropped back, so any size works.

`features(x)` returns the decoder's last feature map averaged over space, (B, width): the pooled
embedding coreset and badge use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cryoal.errors import CryoalError, OptionError
from cryoal.models._blocks import init_weights
from cryoal.models.cnn2d import check_input_dims, n_pools

MIN_SIZE = 8
_LAYERS = {
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ConvTranspose2d, nn.Dropout2d),
    3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.ConvTranspose3d, nn.Dropout3d),
}


def _double_conv(ndim: int, c_in: int, c_out: int) -> nn.Sequential:
    conv, bn = _LAYERS[ndim][:2]
    return nn.Sequential(
        conv(c_in, c_out, 3, padding=1, bias=False), bn(c_out), nn.ReLU(inplace=True),
        conv(c_out, c_out, 3, padding=1, bias=False), bn(c_out), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with `depth` poolings; level k has width * 2**k channels."""

    def __init__(self, n_classes: int, ndim: int = 2, depth: int = 3, width: int = 16, dropout: float = 0.1):
        super().__init__()
        if ndim not in _LAYERS:
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        _, _, pool, up, drop = _LAYERS[ndim]
        self.ndim, self.depth = ndim, depth
        widths = [width * 2**k for k in range(depth + 1)]
        self.encoder = nn.ModuleList()
        c_in = 1
        for w in widths[:-1]:
            self.encoder.append(_double_conv(ndim, c_in, w))
            c_in = w
        self.pool = pool(2)
        self.bottleneck = _double_conv(ndim, c_in, widths[-1])
        self.dropout = drop(dropout)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for k in reversed(range(depth)):
            self.up.append(up(widths[k + 1], widths[k], 2, stride=2))
            self.decoder.append(_double_conv(ndim, 2 * widths[k], widths[k]))
        self.head = _LAYERS[ndim][0](widths[0], n_classes, 1)
        init_weights(self)

    def decode(self, x):
        """The last decoder feature map (B, width, *spatial), at the input's size."""
        check_input_dims(x, self.ndim, f"unet{self.ndim}d")
        size = x.shape[2:]
        step = 2**self.depth
        pad: list[int] = []
        for s in reversed(size):
            pad += [0, (-s) % step]
        if any(pad):
            x = F.pad(x, pad)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, block, skip in zip(self.up, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        if any(pad):
            x = x[(slice(None), slice(None), *(slice(0, s) for s in size))]
        return x

    def features(self, x):
        """Pooled decoder features (B, width): what coreset and badge embed."""
        return self.decode(x).flatten(2).mean(2)

    def forward(self, x):
        return self.head(self.decode(x))


SEG_ARCHS = {"unet": UNet}
DEFAULT_SEG_ARCH = "unet"


def build_segmentation_model(arch: str, input_shape: Sequence[int], n_classes: int, **kw) -> nn.Module:
    """A fresh U-Net for patches of shape (H, W) or (D, H, W) and `n_classes` classes."""
    if arch not in SEG_ARCHS:
        raise OptionError(f"--arch: unknown segmentation architecture '{arch}'; "
                          f"choose one of {', '.join(SEG_ARCHS)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (2, 3):
        raise CryoalError(f"{arch}: expects a 2D (H, W) or 3D (D, H, W) patch shape, got {shape}")
    if min(shape) < MIN_SIZE:
        raise CryoalError(f"{arch}: patch shape {shape} is too small; patches need >= {MIN_SIZE} pixels")
    if n_classes < 2:
        raise CryoalError(f"{arch}: needs at least 2 classes, got {n_classes}")
    kw = dict(kw)
    kw.setdefault("ndim", len(shape))
    kw.setdefault("depth", n_pools(shape, min_grid=4, most=4 if len(shape) == 2 else 3))
    kw.setdefault("width", 16 if len(shape) == 2 else 8)
    if kw["ndim"] != len(shape):
        raise CryoalError(f"{arch}: ndim={kw['ndim']} does not match the {len(shape)}D patch shape {shape}")
    model = SEG_ARCHS[arch](int(n_classes), **kw)
    model.arch = arch
    model.arch_kwargs = kw
    model.input_shape = list(shape)
    model.n_classes = int(n_classes)
    return model


__all__ = ["DEFAULT_SEG_ARCH", "SEG_ARCHS", "UNet", "build_segmentation_model"]
