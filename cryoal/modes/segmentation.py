"""Segmentation mode: 2D images or 3D patches with per-pixel class masks, a U-Net, and the
per-sample loss = the mean cross-entropy over the sample's labelled pixels (-1 = unlabelled).

When every pixel is labelled (as in scoring, where the labels are the model's own or sampled),
the per-sample loss is the plain mean over pixels, and so its gradient with respect to the
logits of pixel j is (p_j - e_{y_j}) / L for L pixels: what `cryoal.scoring.segmentation` seeds
the gradient-norm engine with.

Augmentation transforms the image and its mask together: quarter turns and mirrors in the
(H, W) plane and small shifts (for 3D patches the same in-plane transform on every z section,
like the subtomogram mode's rotations about z).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cryoal.models.unet import DEFAULT_SEG_ARCH, SEG_ARCHS, build_segmentation_model
from cryoal.modes.base import Mode
from cryoal.modes.image import apply_plane_transform, plane_transforms, shift_for

IGNORE = -1


def pixel_mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample mean cross-entropy over labelled pixels: logits (B, C, *S), targets (B, *S) -> (B,).

    A sample without any labelled pixel has loss 0 (it adds no gradient).
    """
    targets = targets.long()
    ce = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="none")  # 0 where ignored
    valid = (targets != IGNORE).flatten(1).sum(1)
    return ce.flatten(1).sum(1) / valid.clamp_min(1)


def augment_pairs(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                  max_shift: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random in-plane transform on each image (B, 1, *S) and its mask (B, *S)."""
    max_shift = shift_for(x.shape[-2:], max_shift)
    k, flip, shifts = plane_transforms(generator, x.shape[0], x.shape[-1] == x.shape[-2], max_shift)
    xs, ys = [], []
    for i in range(x.shape[0]):
        args = (int(k[i]), bool(flip[i]), tuple(int(s) for s in shifts[i]))
        xs.append(apply_plane_transform(x[i], *args))
        ys.append(apply_plane_transform(y[i], *args))
    return torch.stack(xs), torch.stack(ys)


def pool_masks(pool, rows) -> np.ndarray:
    """The masks (N, *shape) int64 of pool `rows` (-1 = unlabelled pixel): the training targets."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.empty((0, *pool.shape), np.int64)
    return np.asarray(pool.read(rows, dataset="masks"), dtype=np.int64)


def augment_images_only(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What `Mode.augment` (images without targets) does here: nothing, since a mask must move
    with its image; training augments through `augment_pairs`."""
    return x


SEGMENTATION = Mode(
    name="segmentation",
    particle_ndim=2,  # or 3: 3D patches; the U-Net factory follows the pool's shape
    archs=tuple(SEG_ARCHS),
    default_arch=DEFAULT_SEG_ARCH,
    build_model=build_segmentation_model,
    per_sample_loss=pixel_mean_cross_entropy,
    augment=augment_images_only,
    augment_targets=augment_pairs,
    targets=pool_masks,
    augmentation="in-plane quarter turns, mirrors and small shifts, the same on each mask",
)

__all__ = ["IGNORE", "SEGMENTATION", "augment_pairs", "pixel_mean_cross_entropy"]
