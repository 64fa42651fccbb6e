"""What an expert looks at for one particle: low-passed, slab-averaged orthogonal views and a projection.

Axis conventions (see the cross-team conventions): a subtomogram is (D, H, W) = (z, y, x) and the
box centre is voxel index ``n // 2`` on every axis. Every view is returned as a 2D array in
*display* orientation, row 0 at the top, named after its (horizontal, vertical) axes:

- ``XY``: x to the right, y upward; the average of a slab of z-planes around the centre.
- ``XZ``: x to the right, z upward; the average of a slab of y-planes. The missing wedge shows here.
- ``YZ``: y to the right, z upward; the average of a slab of x-planes.
- ``proj``: x to the right, y upward; the sum of every z-plane (a projection along the beam).

The vertical axis increases upward, as in IMOD and most cryo-EM viewers, so a view is not a
mirror image of what the expert sees there (handedness matters to them).
"""

from __future__ import annotations

import math

import numpy as np

VIEW_NAMES_3D = ("XY", "XZ", "YZ", "proj")
VIEW_NAMES_2D = ("image",)
# The default low-pass, in voxels: 1/3.5 cycles per voxel. At 10 A voxels that is 35 A, which
# makes SNR 0.05 particles visible while keeping their shape (checked by eye on simulated data).
DEFAULT_LOWPASS_VOXELS = 3.5


def default_slab(box: int) -> int:
    """Default slab thickness (voxels) for a box: a quarter of the box, at least 1.

    Averaging t planes divides the noise variance by t, while a particle that fills about half
    the box keeps its central section over box/4 planes; so the section is ~t times cleaner
    without smearing the particle's interior (8 planes at 32^3).
    """
    return max(1, int(round(box / 4)))


def lowpass(data: np.ndarray, cutoff_voxels: float | None, n_spatial: int | None = None) -> np.ndarray:
    """Gaussian low-pass in Fourier space over the last `n_spatial` axes (default: all).

    The filter's amplitude is 1/2 at the frequency 1/`cutoff_voxels` cycles per voxel, and it has
    no hard edge, so it does not ring. `cutoff_voxels` None or <= 0 returns the data unchanged.
    A leading axis beyond the spatial ones is treated as a batch.
    """
    data = np.asarray(data, dtype=np.float32)
    if not cutoff_voxels or cutoff_voxels <= 0:
        return data
    n_spatial = data.ndim if n_spatial is None else n_spatial
    axes = tuple(range(data.ndim - n_spatial, data.ndim))
    shape = [data.shape[a] for a in axes]
    # Squared radial frequency (cycles/voxel) on the rfft grid: full grid on all but the last axis.
    f2 = np.zeros([*(s for s in shape[:-1]), shape[-1] // 2 + 1], dtype=np.float64)
    for k, n in enumerate(shape):
        freqs = np.fft.rfftfreq(n) if k == len(shape) - 1 else np.fft.fftfreq(n)
        view = [1] * len(shape)
        view[k] = freqs.size
        f2 = f2 + freqs.reshape(view) ** 2
    fc = 1.0 / float(cutoff_voxels)
    gain = np.exp(-math.log(2.0) * f2 / fc**2)
    spec = np.fft.rfftn(data, axes=axes)
    out = np.fft.irfftn(spec * gain, s=shape, axes=axes)
    return out.astype(np.float32)


def _slab_range(n: int, thickness: int) -> slice:
    """The `thickness` planes around the centre plane `n // 2`, clipped to the box."""
    t = max(1, min(int(thickness), n))
    start = n // 2 - t // 2
    start = min(max(start, 0), n - t)
    return slice(start, start + t)


def orthogonal_views(volume: np.ndarray, slab: int) -> dict[str, np.ndarray]:
    """XY, XZ, YZ slab averages and the z projection of one (z, y, x) volume, display oriented."""
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {vol.shape}")
    d, h, w = vol.shape
    xy = vol[_slab_range(d, slab)].mean(axis=0)  # (y, x)
    xz = vol[:, _slab_range(h, slab), :].mean(axis=1)  # (z, x)
    yz = vol[:, :, _slab_range(w, slab)].mean(axis=2)  # (z, y)
    proj = vol.sum(axis=0)  # (y, x)
    # Rows are the vertical axis: flip so it increases upward.
    return {"XY": xy[::-1], "XZ": xz[::-1], "YZ": yz[::-1], "proj": proj[::-1]}


def image_views(image: np.ndarray) -> dict[str, np.ndarray]:
    """The single view of a 2D (y, x) image, y upward like the 3D views."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {img.shape}")
    return {"image": img[::-1]}


def particle_views(particle: np.ndarray, slab: int, cutoff_voxels: float | None) -> dict[str, np.ndarray]:
    """Low-pass a particle, then cut its views: 4 for a volume, 1 for an image."""
    filtered = lowpass(particle, cutoff_voxels)
    if filtered.ndim == 3:
        return orthogonal_views(filtered, slab)
    return image_views(filtered)


def mask_planes(mask: np.ndarray) -> dict[str, np.ndarray]:
    """The central plane of a label mask in each view's orientation (no averaging: labels are ints).

    A 2D mask gives {"image"}; a 3D one gives {"XY", "XZ", "YZ"} (a projection has no mask).
    """
    m = np.asarray(mask)
    if m.ndim == 2:
        return {"image": m[::-1]}
    d, h, w = m.shape
    return {"XY": m[d // 2][::-1], "XZ": m[:, h // 2, :][::-1], "YZ": m[:, :, w // 2][::-1]}


def to_uint8(view: np.ndarray, clip_percent: float = 1.0, invert: bool = False) -> np.ndarray:
    """Robust contrast: map the [p, 100-p] percentile range to 0..255, clipping beyond it.

    A flat view (no range) becomes mid-grey. `invert` makes dense (bright) regions dark.
    """
    v = np.asarray(view, dtype=np.float64)
    p = min(max(float(clip_percent), 0.0), 49.9)
    lo, hi = np.percentile(v, [p, 100.0 - p])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12 * max(1.0, abs(hi)):
        out = np.full(v.shape, 128, dtype=np.uint8)
    else:
        scaled = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
        out = np.round(scaled * 255.0).astype(np.uint8)
    return 255 - out if invert else out
