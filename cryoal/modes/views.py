"""Random views of subtomograms for self-supervised pretraining (`cryoal pretrain`).

Two views of the same particle must differ in everything the embedding should ignore (pose about
the beam axis, centring, noise, contrast) and keep what tells particles apart. Every transform
here keeps the missing wedge physically meaningful (conventions of `cryoal.modes.augment`: tilt
axis y, beam z, wedge around kz):

- quarter turns about z, 180-degree flips about x and small periodic shifts
  (`augment_subtomograms`, the training augmentation);
- an arbitrary in-plane rotation about z, done slice by slice (each output z-slice comes from the
  same input z-slice only), so no power moves between kz planes: the wedge turns about kz with the
  particle, as it does for particles lying at any in-plane angle to the tilt axis;
- Gaussian noise whose missing cone (the frequencies no in-plane orientation of a +-60 degree
  tilt series measures: |kz| > tan(60 deg) * |k_xy|) is removed, so the noise never fills the part
  of Fourier space real noise never has;
- intensity scaling (a linear map keeps every empty frequency empty).

Never a rotation about x or y by anything but 180 degrees: it would tilt the wedge off kz.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cryoal.modes.augment import augment_subtomograms

TILT_DEG = 60.0  # the simulate default; the noise cone assumes at least this much is missing


@dataclass(frozen=True)
class ViewSettings:
    """Strength of each random transform of a view."""

    max_shift: int = 2  # voxels
    rotate: bool = True  # arbitrary in-plane angle on top of the quarter turns
    noise: float = 0.5  # noise std drawn in [0, noise] (volumes are normalised to std ~1)
    scale: tuple[float, float] = (0.8, 1.25)  # intensity factor, log-uniform


def missing_cone(shape: tuple[int, int, int], tilt_deg: float = TILT_DEG,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (D, H, W) mask, in `torch.fft.fftn` order, of the frequencies in the missing cone:
    |kz| > tan(tilt) * |k_xy| (the part of every in-plane orientation's wedge; DC excluded)."""
    d, h, w = shape
    kz = torch.fft.fftfreq(d, device=device).view(d, 1, 1)
    ky = torch.fft.fftfreq(h, device=device).view(1, h, 1)
    kx = torch.fft.fftfreq(w, device=device).view(1, 1, w)
    kxy = torch.sqrt(kx**2 + ky**2)
    return kz.abs() > math.tan(math.radians(tilt_deg)) * kxy


def rotate_in_plane(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each volume of a (B, 1, D, H, W) batch about z by `angles` (B,) radians.

    Bilinear, slice by slice: the (H, W) planes of a volume all turn by its angle and never mix,
    so the rotation acts on (ky, kx) only. Outside the box reads as 0 (the normalised mean).
    """
    b, c, d, h, w = x.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta = theta.repeat_interleave(c * d, dim=0)  # one 2D transform per slice, shared by its volume
    planes = x.reshape(b * c * d, 1, h, w)
    grid = F.affine_grid(theta, list(planes.shape), align_corners=False)
    out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b, c, d, h, w)


def cone_free_noise(shape: tuple[int, ...], generator: torch.Generator,
                    tilt_deg: float = TILT_DEG) -> torch.Tensor:
    """Gaussian noise of a (B, 1, D, H, W) shape with the missing cone removed, rescaled to unit std."""
    noise = torch.randn(shape, generator=generator)
    spectrum = torch.fft.fftn(noise, dim=(-3, -2, -1))
    spectrum[..., missing_cone(tuple(shape[-3:]), tilt_deg)] = 0
    noise = torch.fft.ifftn(spectrum, dim=(-3, -2, -1)).real
    return noise / noise.std().clamp_min(1e-6)


def random_view(x: torch.Tensor, generator: torch.Generator,
                settings: ViewSettings = ViewSettings()) -> torch.Tensor:
    """One random, wedge-respecting view of each volume of a (B, 1, D, H, W) CPU batch.

    All randomness comes from `generator`, so a seeded run is reproducible.
    """
    b = x.shape[0]
    v = augment_subtomograms(x, generator, max_shift=settings.max_shift)
    if settings.rotate and x.shape[-1] == x.shape[-2]:
        # the quarter turns already cover multiples of 90 degrees
        angles = torch.rand(b, generator=generator) * (math.pi / 2)
        v = rotate_in_plane(v, angles)
    if settings.noise > 0:
        sigma = torch.rand(b, generator=generator).view(b, 1, 1, 1, 1) * settings.noise
        v = v + sigma * cone_free_noise(tuple(v.shape), generator)
    lo, hi = settings.scale
    if hi > lo:
        log_scale = torch.empty(b).uniform_(math.log(lo), math.log(hi), generator=generator)
        v = v * log_scale.exp().view(b, 1, 1, 1, 1)
    return v


__all__ = ["TILT_DEG", "ViewSettings", "cone_free_noise", "missing_cone", "random_view", "rotate_in_plane"]
