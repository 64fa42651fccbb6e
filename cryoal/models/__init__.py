"""Model registry for 3D subtomogram classifiers.

`build_model(arch, input_shape, n_classes, **kw)` returns an `nn.Module` that takes
(B, 1, D, H, W) float32 and returns logits (B, C), with `features(x) -> (B, F)` and a
`head: nn.Linear` such that `forward(x) == head(features(x))`. Every model keeps dropout
layers (`nn.Dropout3d` in the trunk, `nn.Dropout` before the head) so MC-dropout BALD works.
The arch name and its keyword arguments are recorded on the model (`arch`, `arch_kwargs`,
`input_shape`, `n_classes`) so a checkpoint can rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cryoal.errors import CryoalError, OptionError
from cryoal.models.dsrf3d import DSRF3D
from cryoal.models.rb3d import RB3D
from cryoal.models.resnet3d import ResNet3D

ARCHS: dict[str, Callable[..., nn.Module]] = {
    "dsrf3d": DSRF3D,
    "rb3d": RB3D,
    "resnet3d": ResNet3D,
}
# Chosen by benchmarks/arch_compare.py (see docs/studies.md; CPU only): at SNR 0.1 (5 classes,
# 32^3, CTF, +-60 deg wedge) rb3d had the best validation accuracy in both seeds, trains about as fast
# as resnet3d and 5x faster than dsrf3d, and is the lightest net for gradient-norm scoring.
DEFAULT_ARCH = "rb3d"
MIN_BOX = 8  # three 2x poolings need at least 8 voxels per axis


def build_model(arch: str, input_shape: Sequence[int], n_classes: int, **kw) -> nn.Module:
    """Build a fresh (randomly initialised, seed-dependent) classifier for one-particle shape
    `input_shape` (D, H, W) and `n_classes` classes."""
    if arch not in ARCHS:
        raise OptionError(f"--arch: unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise CryoalError(f"{arch}: expects a 3D particle shape (D, H, W), got {shape}")
    if min(shape) < MIN_BOX:
        raise CryoalError(f"{arch}: particle shape {shape} is too small; boxes need >= {MIN_BOX} voxels")
    if n_classes < 2:
        raise CryoalError(f"{arch}: needs at least 2 classes, got {n_classes}")
    model = ARCHS[arch](int(n_classes), **kw)
    model.arch = arch
    model.arch_kwargs = dict(kw)
    model.input_shape = list(shape)
    model.n_classes = int(n_classes)
    return model


__all__ = ["ARCHS", "DEFAULT_ARCH", "build_model"]
