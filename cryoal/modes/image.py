"""Image mode: (H, W) images (particle images, micrograph patches, tomogram slices), a 2D CNN
classifier, cross-entropy, and in-plane augmentation.

In-plane 90-degree rotations and mirrors are symmetries of projection images: a particle lies in
any in-plane orientation, and the mirror of a projection is the projection seen from the other
side. They are not symmetries of every 2D data set (a mirrored "6" is no "6"): train with
`--no-augment` for such data.
"""

from __future__ import annotations

import torch

from cryoal.models.cnn2d import DEFAULT_IMAGE_ARCH, IMAGE_ARCHS, build_image_model
from cryoal.modes.base import Mode
from cryoal.modes.subtomogram import cross_entropy_per_sample

MAX_SHIFT = 2  # pixels


def plane_transforms(generator: torch.Generator, b: int, square: bool, max_shift: int = MAX_SHIFT):
    """Per-sample random (quarter turns, mirror flag, (dy, dx) shift) for a batch of b samples."""
    k = torch.randint(0, 4, (b,), generator=generator)
    if not square:  # a quarter turn would change the shape: keep to 0 / 180 degrees
        k = (k // 2) * 2
    flip = torch.randint(0, 2, (b,), generator=generator)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
    return k, flip, shifts


def apply_plane_transform(v: torch.Tensor, k: int, flip: bool, shift: tuple[int, int]) -> torch.Tensor:
    """Rotate by k quarter turns, mirror (reverse x) and roll in the last two axes of `v`."""
    if k:
        v = torch.rot90(v, k, dims=(-2, -1))
    if flip:
        v = torch.flip(v, dims=(-1,))
    if any(shift):
        v = torch.roll(v, shifts=shift, dims=(-2, -1))
    return v


def shift_for(shape, max_shift: int = MAX_SHIFT) -> int:
    """The largest shift for images of `shape`: MAX_SHIFT pixels, but at most 1/16 of the smaller
    side (a shift rolls pixels round the border: 2 of 8 pixels would move a quarter of the image)."""
    return min(max_shift, min(int(s) for s in shape) // 16)


def augment_images(x: torch.Tensor, generator: torch.Generator, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Random quarter turns, mirrors and small shifts of each image of a (B, 1, H, W) batch."""
    max_shift = shift_for(x.shape[-2:], max_shift)
    k, flip, shifts = plane_transforms(generator, x.shape[0], x.shape[-1] == x.shape[-2], max_shift)
    return torch.stack([
        apply_plane_transform(x[i], int(k[i]), bool(flip[i]), tuple(int(s) for s in shifts[i]))
        for i in range(x.shape[0])
    ])


IMAGE = Mode(
    name="image",
    particle_ndim=2,
    archs=tuple(IMAGE_ARCHS),
    default_arch=DEFAULT_IMAGE_ARCH,
    build_model=build_image_model,
    per_sample_loss=cross_entropy_per_sample,
    augment=augment_images,
    augmentation="in-plane quarter turns, mirrors and small shifts",
)

__all__ = ["IMAGE", "apply_plane_transform", "augment_images", "plane_transforms"]
