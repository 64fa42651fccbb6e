"""Training augmentation that respects the missing wedge.

The tilt axis is y and the beam is z, so the missing wedge is a double wedge around the kz axis
(conventions). Only transforms that keep the z axis on itself (up to sign) keep the wedge where it
is in real data:

- 90-degree rotations about z (in the x-y plane, array axes (H, W)). They move the tilt axis between
  y and x, but the wedge stays around kz, and real tilt series are collected with either
  orientation relative to the particle, so the network should not rely on it.
- "Flips" as 180-degree rotations about the x axis (reverse z and y together). A single-axis mirror
  would also keep the wedge, but it turns the particle into its mirror image (other handedness),
  which is a different structure; a proper rotation does not.
- Small shifts (periodic roll by a few voxels): picking is never perfectly centred.

Never rotate about x or y by anything but 180 degrees: that tilts the missing wedge off the beam
axis and shows the network wedges that real data never has.
"""

from __future__ import annotations

import torch

MAX_SHIFT = 2  # voxels; picks are usually within a few voxels of the particle centre


def augment_subtomograms(
    x: torch.Tensor, generator: torch.Generator, max_shift: int = MAX_SHIFT
) -> torch.Tensor:
    """Randomly rotate (about z), flip (180 deg about x) and shift each volume of a (B, 1, D, H, W) batch.

    Draws its randomness from `generator` (a CPU generator), so a seeded run is reproducible.
    Returns a new tensor on the same device.
    """
    b = x.shape[0]
    square = x.shape[-1] == x.shape[-2]
    k = torch.randint(0, 4, (b,), generator=generator)
    if not square:  # a 90-degree turn would change the shape: keep to 0 / 180 degrees
        k = (k // 2) * 2
    flip = torch.randint(0, 2, (b,), generator=generator)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 3), generator=generator)
    out = []
    for i in range(b):  # per-sample transforms on a small batch: negligible next to the network
        v = x[i]
        if k[i]:
            v = torch.rot90(v, int(k[i]), dims=(2, 3))
        if flip[i]:
            v = torch.flip(v, dims=(1, 2))
        if max_shift:
            v = torch.roll(v, shifts=tuple(int(s) for s in shifts[i]), dims=(1, 2, 3))
        out.append(v)
    return torch.stack(out)
