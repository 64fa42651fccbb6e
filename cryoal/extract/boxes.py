"""Cutting one box out of a (memory-mapped) tomogram, Fourier-crop binning, per-box z-score.

Box geometry (docs/conventions): a box of size `b` centred at the integer voxel (x, y, z) spans
`x - b//2 .. x - b//2 + b - 1` on each axis, so the centre voxel sits at index `b//2` of the box.
A fractional pick position is rounded half up, `floor(p + 0.5)`, to choose the centre voxel.
"""

from __future__ import annotations

import numpy as np

from cryoal.errors import InputError
from cryoal.io.preprocess import box_start


def centre_voxel(position_xyz: np.ndarray) -> np.ndarray:
    """Integer centre voxel(s) (x, y, z) of pick position(s) in tomogram pixels, rounding half up."""
    return np.floor(np.asarray(position_xyz, dtype=np.float64) + 0.5).astype(np.int64)


def crosses_edge(centre_xyz: np.ndarray, size: int, shape_zyx: tuple[int, int, int]) -> np.ndarray:
    """For each centre (x, y, z) (shape (..., 3)): does its box of `size` reach outside a volume
    of `shape_zyx`? Returns bool, shape (...)."""
    start = box_start(centre_xyz, size)
    dims_xyz = np.asarray(shape_zyx[::-1])
    return np.any((start < 0) | (start + size > dims_xyz), axis=-1)


def cut_box(data: np.ndarray, centre_xyz: np.ndarray, size: int, fill: float) -> tuple[np.ndarray, bool]:
    """Copy the box of `size`³ centred at voxel `centre_xyz` out of `data` (z, y, x) as float32.

    Only the voxels of the box are read, so `data` may be a memory map. The part of the box
    outside the volume is set to `fill`. Returns `(box (z, y, x), crossed_edge)`.
    """
    x0, y0, z0 = (int(v) for v in box_start(centre_xyz, size))
    depth, height, width = data.shape
    # Clip the box to the volume; the clipped part lands at offset (lo - start) inside the box.
    zl, zh = max(z0, 0), min(z0 + size, depth)
    yl, yh = max(y0, 0), min(y0 + size, height)
    xl, xh = max(x0, 0), min(x0 + size, width)
    inside = (zl, yl, xl, zh, yh, xh) == (z0, y0, x0, z0 + size, y0 + size, x0 + size)
    if inside:
        return np.array(data[z0 : z0 + size, y0 : y0 + size, x0 : x0 + size], dtype=np.float32), False
    box = np.full((size, size, size), fill, dtype=np.float32)
    if zl < zh and yl < yh and xl < xh:
        box[zl - z0 : zh - z0, yl - y0 : yh - y0, xl - x0 : xh - x0] = data[zl:zh, yl:yh, xl:xh]
    return box, True


def fourier_bin(box: np.ndarray, factor: int) -> np.ndarray:
    """Bin a cubic box by an integer `factor` by Fourier cropping, preserving the mean.

    A box of size M = factor·b becomes size b: keep the central b³ coefficients of the centred
    (fftshifted) spectrum, that is frequencies -b//2 .. b - 1 - b//2 on each axis, invert, take
    the real part, and divide by factor³ so that the mean is unchanged. Output voxel j sits at
    input position factor·j, so the centre voxel b//2 stays on the pick.
    """
    if factor == 1:
        return np.asarray(box, dtype=np.float32)
    from scipy import fft  # imported here: only --bin needs it

    big = box.shape[0]
    if box.shape != (big, big, big) or big % factor:
        raise ValueError(f"fourier_bin needs a cube whose size divides by {factor}, got {box.shape}")
    small = big // factor
    lo = big // 2 - small // 2
    spectrum = np.asarray(box, dtype=np.float64)
    # Separable crop: transform and crop one axis at a time, so later axes work on less data.
    for axis in (2, 1, 0):
        spectrum = fft.fftshift(fft.fft(spectrum, axis=axis), axes=axis)
        spectrum = np.take(spectrum, np.arange(lo, lo + small), axis=axis)
    out = fft.ifftn(fft.ifftshift(spectrum)).real / factor**3
    return out.astype(np.float32)


def zscore(box: np.ndarray, name: str, out: np.ndarray | None = None) -> np.ndarray:
    """Mean 0, standard deviation 1, float32, sums in float64: the same rule as ingest's
    `cryoal.io.preprocess.zscore` (NaN/Inf voxels or a constant box are bad input, named `name`).
    `out` (float32, the box's shape) receives the result when given.

    Written with ufunc reductions only: a BLAS dot product here costs milliseconds per box when
    OpenBLAS has to wake its threads between boxes on a busy machine.
    """
    vol = np.asarray(box, dtype=np.float32)
    flat = vol.reshape(-1)
    mean = float(np.add.reduce(flat, dtype=np.float64)) / flat.size
    if not np.isfinite(mean):
        bad = vol.size - int(np.count_nonzero(np.isfinite(vol)))
        raise InputError(f"{name}: {bad} of {vol.size} voxels are NaN or infinite")
    centred = np.subtract(vol, np.float32(mean), out=out)
    cflat = centred.reshape(-1)
    var = float(np.add.reduce(cflat * cflat, dtype=np.float64)) / flat.size
    if var == 0.0:
        value = float(vol.flat[0])
        raise InputError(f"{name}: constant box (every voxel is {value:g}); nothing to learn from")
    centred *= np.float32(1.0 / np.sqrt(var))
    return centred
