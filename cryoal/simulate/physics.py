"""Imaging physics in Fourier space: the missing wedge, the CTF, and Gaussian noise levels.

Frequencies are in cycles per voxel on numpy's FFT grid (`fftfreq` on z and y, `rfftfreq` on x for
the half grid that `rfftn` uses). Tilt axis y, beam z (see the project conventions): a point
(kx, ky, kz) is measured iff |kz| <= |kx| tan(alpha); points on the boundary are kept.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

VOLTAGE_KV = 300.0
CS_MM = 2.0
AMPLITUDE_CONTRAST = 0.07


def frequency_grid(shape: tuple[int, int, int], half: bool = True) -> tuple[np.ndarray, ...]:
    """Broadcastable (kz, ky, kx) in cycles/voxel for a (D, H, W) grid; `half` is the rfftn grid."""
    d, h, w = shape
    kz = np.fft.fftfreq(d)[:, None, None]
    ky = np.fft.fftfreq(h)[None, :, None]
    kx = (np.fft.rfftfreq(w) if half else np.fft.fftfreq(w))[None, None, :]
    return kz, ky, kx


def wedge_mask(shape: tuple[int, int, int], tilt_range: float, half: bool = True) -> np.ndarray:
    """1 where a single-axis (y) tilt series of ±`tilt_range` degrees samples Fourier space, else 0.

    `tilt_range` >= 90 means no missing wedge (all ones).
    """
    kz, ky, kx = frequency_grid(shape, half)
    full = (kz.shape[0], ky.shape[1], kx.shape[2])
    if tilt_range >= 90:
        return np.ones(full, dtype=np.float32)
    alpha = np.deg2rad(tilt_range)
    # |kz| cos a <= |kx| sin a avoids tan(); the tolerance keeps boundary points despite rounding
    kept = np.abs(kz) * np.cos(alpha) <= np.abs(kx) * np.sin(alpha) + 1e-9
    return np.broadcast_to(kept, full).astype(np.float32)


def electron_wavelength(voltage_kv: float = VOLTAGE_KV) -> float:
    """Relativistic electron wavelength in Å at an accelerating voltage in kV (0.0197 Å at 300 kV)."""
    v = voltage_kv * 1e3
    return 12.2642584 / np.sqrt(v * (1.0 + 0.978475e-6 * v))


def ctf_1d(
    k: np.ndarray | float,
    defocus_um: float,
    voltage_kv: float = VOLTAGE_KV,
    cs_mm: float = CS_MM,
    amplitude_contrast: float = AMPLITUDE_CONTRAST,
) -> np.ndarray:
    """CTF at spatial frequency `k` (1/Å) for an underfocus `defocus_um` (µm, positive = underfocus).

    CTF = sqrt(1 - A^2) sin(chi) + A cos(chi), chi = pi lambda df k^2 - pi/2 Cs lambda^3 k^4.
    The sign keeps protein density positive at low frequency (as after contrast inversion).
    """
    lam = electron_wavelength(voltage_kv)
    df = defocus_um * 1e4
    cs = cs_mm * 1e7
    k2 = np.asarray(k, dtype=np.float64) ** 2
    chi = np.pi * lam * df * k2 - 0.5 * np.pi * cs * lam**3 * k2 * k2
    a = amplitude_contrast
    return np.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi)


def ctf_3d(
    shape: tuple[int, int, int], voxel_size: float, defocus_um: float, half: bool = True
) -> np.ndarray:
    """The isotropic CTF on a (D, H, W) Fourier grid with `voxel_size` Å voxels (float32)."""
    kz, ky, kx = frequency_grid(shape, half)
    k = np.sqrt(kz**2 + ky**2 + kx**2) / voxel_size
    return ctf_1d(k, defocus_um).astype(np.float32)


def fourier_filter(
    shape: tuple[int, int, int],
    voxel_size: float,
    tilt_range: float,
    defocus_um: float | None,
    half: bool = True,
) -> np.ndarray:
    """Missing wedge times CTF (CTF omitted when `defocus_um` is None), on the (half) FFT grid."""
    filt = wedge_mask(shape, tilt_range, half)
    if defocus_um is not None:
        filt = filt * ctf_3d(shape, voxel_size, defocus_um, half)
    return filt


def apply_filter(volumes: np.ndarray, filt: np.ndarray) -> np.ndarray:
    """Multiply the 3D spectrum of each volume (last three axes) by a real half-grid filter."""
    spec = scipy.fft.rfftn(volumes, axes=(-3, -2, -1))
    spec *= filt
    return scipy.fft.irfftn(spec, s=volumes.shape[-3:], axes=(-3, -2, -1)).astype(np.float32, copy=False)


def noise_gain(
    shape: tuple[int, int, int], voxel_size: float, tilt_range: float, defocus_um: float | None
) -> float:
    """Variance of white unit-variance noise after the filter: the mean of |filter|^2 over the grid.

    Summed one kz plane at a time on the half grid (columns that stand for two conjugate
    frequencies count twice), so memory stays small for whole tomograms.
    """
    d, h, w = shape
    kx_weight = np.full(w // 2 + 1, 2.0)
    kx_weight[0] = 1.0
    if w % 2 == 0:
        kx_weight[-1] = 1.0  # the Nyquist column has no separate conjugate
    total = 0.0
    for i in range(d):
        plane = filter_plane(shape, i, voxel_size, tilt_range, defocus_um).astype(np.float64)
        total += float(np.sum(plane**2 * kx_weight))
    return total / (d * h * w)


def filter_plane(
    shape: tuple[int, int, int], iz: int, voxel_size: float, tilt_range: float, defocus_um: float | None
) -> np.ndarray:
    """Plane `iz` (one kz) of `fourier_filter` on the half grid, shape (H, W // 2 + 1)."""
    d, h, w = shape
    kz = np.fft.fftfreq(d)[iz]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    if tilt_range >= 90:
        plane = np.ones((h, len(kx[0])), dtype=np.float32)
    else:
        alpha = np.deg2rad(tilt_range)
        kept = abs(kz) * np.cos(alpha) <= np.abs(kx) * np.sin(alpha) + 1e-9
        plane = np.broadcast_to(kept, (h, kx.shape[1])).astype(np.float32)
    if defocus_um is not None:
        k = np.sqrt(kz**2 + ky**2 + kx**2) / voxel_size
        plane = plane * ctf_1d(k, defocus_um).astype(np.float32)
    return plane


def filter_volume(
    volume: np.ndarray, voxel_size: float, tilt_range: float, defocus_um: float | None
) -> np.ndarray:
    """Apply wedge and CTF to one large volume, building the filter one kz plane at a time."""
    spec = scipy.fft.rfftn(volume)
    for i in range(spec.shape[0]):
        spec[i] *= filter_plane(volume.shape, i, voxel_size, tilt_range, defocus_um)
    return scipy.fft.irfftn(spec, s=volume.shape).astype(np.float32, copy=False)


def noise_std(signal_variance: float, snr: float, gain: float) -> float:
    """Standard deviation of each of the two noise halves (before and after the filter).

    The output noise variance is s^2 * gain + s^2 (s^2 added before the filter, s^2 after), and
    it must equal signal_variance / snr; `snr` = inf gives 0.
    """
    if np.isinf(snr):
        return 0.0
    return float(np.sqrt(signal_variance / (snr * (1.0 + gain))))
