"""Subtomogram mode: (D, H, W) volumes, 3D CNN classifiers, cross-entropy, wedge-safe augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryoal.models import ARCHS, DEFAULT_ARCH, build_model
from cryoal.modes.augment import MAX_SHIFT, augment_subtomograms
from cryoal.modes.base import Mode


def cross_entropy_per_sample(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample, shape (B,)."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


SUBTOMOGRAM = Mode(
    name="subtomogram",
    particle_ndim=3,
    archs=tuple(ARCHS),
    default_arch=DEFAULT_ARCH,
    build_model=build_model,
    per_sample_loss=cross_entropy_per_sample,
    augment=augment_subtomograms,
    augmentation=f"quarter turns about z, 180° flips about x, shifts of up to {MAX_SHIFT} voxels",
)
