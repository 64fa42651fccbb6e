"""Simulated subtomograms: class template + uniform random pose + small shift, then noise, missing
wedge and CTF, then more noise.

SNR definition (also used for tomograms): signal variance over noise variance *in the output*.
The signal is the noise-free volume after wedge and CTF, its variance averaged over the classes
and over random poses; the noise is everything the two noise halves leave in the output. One noise
level serves the whole set (as one dose serves a whole data set), so bigger particles have a higher
SNR than smaller ones, and the set's mean is the requested value.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from cryoal.simulate.physics import apply_filter, fourier_filter, noise_gain, noise_std
from cryoal.simulate.render import box_centre, render_shape, single_thread_blas
from cryoal.simulate.rotations import random_rotations
from cryoal.simulate.shapes import class_names, class_shape

_CALIBRATION_POSES = 8  # random poses per class to estimate the mean filtered signal variance
_CALIBRATION_SEED = 77_001
_STREAM_PLAN, _STREAM_NOISE = 0, 1


@dataclass(frozen=True)
class Imaging:
    """How the volumes are imaged: grid, missing wedge, CTF and noise."""

    box: int = 32
    voxel_size: float = 10.0
    tilt_range: float = 60.0
    defocus: float | None = None  # µm underfocus; None: no CTF
    snr: float = 0.1

    def check(self) -> None:
        """Raise ValueError naming the option when a value is out of range."""
        if self.box < 4:
            raise ValueError(f"--box: must be at least 4, got {self.box}")
        if not self.voxel_size > 0:
            raise ValueError(f"--voxel-size: must be > 0 Å, got {self.voxel_size}")
        if not 0 < self.tilt_range <= 90:
            raise ValueError(f"--tilt-range: must be in (0, 90] degrees, got {self.tilt_range}")
        if self.defocus is not None and not self.defocus > 0:
            raise ValueError(f"--defocus: must be > 0 µm underfocus, got {self.defocus}")
        if not self.snr > 0:
            raise ValueError(f"--snr: must be > 0 (or inf for no noise), got {self.snr}")


def particle_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """An independent random stream per (seed, purpose, item): results do not depend on batching."""
    return np.random.default_rng([seed, stream, index])


def mean_signal_variance(classes: int, imaging: Imaging) -> float:
    """Mean variance of a noise-free, filtered, `box`-sized particle over classes and random poses.

    Uses a fixed private seed, so the noise level depends only on the classes and the imaging.
    """
    grid = (imaging.box,) * 3
    filt = fourier_filter(grid, imaging.voxel_size, imaging.tilt_range, imaging.defocus)
    rng = np.random.default_rng(_CALIBRATION_SEED)
    variances = []
    for c in range(classes):
        shape = class_shape(c)
        with single_thread_blas():
            vols = np.stack(
                [
                    render_shape(shape, r, box_centre(imaging.box), grid, imaging.voxel_size)
                    for r in random_rotations(_CALIBRATION_POSES, rng)
                ]
            )
        variances.append(apply_filter(vols, filt).astype(np.float64).var(axis=(1, 2, 3)).mean())
    return float(np.mean(variances))


def particle_noise_std(classes: int, imaging: Imaging) -> float:
    """Std of each noise half for particles of `box`^3 (see the module docstring for the SNR)."""
    gain = noise_gain((imaging.box,) * 3, imaging.voxel_size, imaging.tilt_range, imaging.defocus)
    return noise_std(mean_signal_variance(classes, imaging), imaging.snr, gain)


def check_fit(classes: int, box: int, voxel_size: float) -> list[str]:
    """Names of classes whose density reaches past the box edge (they are cut there)."""
    half = (box // 2) * voxel_size
    return [class_shape(c).name for c in range(classes) if class_shape(c).radius > half]


@dataclass(frozen=True)
class ParticlePlan:
    """Everything random about a particle set except the noise: order, classes, poses and shifts."""

    labels: np.ndarray  # (N,) class index
    rotations: np.ndarray  # (N, 3, 3)
    shifts: np.ndarray  # (N, 3) voxels (x, y, z)

    def __len__(self) -> int:
        return len(self.labels)


def plan_particles(n_per_class: int, classes: int, shift: float, seed: int) -> ParticlePlan:
    """Shuffle `n_per_class` particles of each class (ids must not reveal the class) and draw poses."""
    rng = particle_rng(seed, _STREAM_PLAN, 0)
    labels = rng.permutation(np.repeat(np.arange(classes), n_per_class))
    rotations = random_rotations(len(labels), rng)
    shifts = rng.normal(0.0, shift, (len(labels), 3)) if shift > 0 else np.zeros((len(labels), 3))
    return ParticlePlan(labels, rotations, shifts)


def iter_particles(
    plan: ParticlePlan,
    imaging: Imaging,
    seed: int,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start index, volumes (B, D, H, W) float32) batches of the simulated particles."""
    imaging.check()
    classes = int(plan.labels.max()) + 1 if len(plan) else 0
    grid = (imaging.box,) * 3
    filt = fourier_filter(grid, imaging.voxel_size, imaging.tilt_range, imaging.defocus)
    sigma = particle_noise_std(classes, imaging) if classes else 0.0
    centre = box_centre(imaging.box)
    for start in range(0, len(plan), batch_size):
        idx = range(start, min(start + batch_size, len(plan)))
        with single_thread_blas():
            vols = np.stack(
                [
                    render_shape(
                        class_shape(int(plan.labels[i])), plan.rotations[i], centre + plan.shifts[i],
                        grid, imaging.voxel_size,
                    )
                    for i in idx
                ]
            )
        noise_after = None
        if sigma > 0:
            # each particle's noise from its own stream: bytes do not depend on the batch size
            noise = np.stack(
                [particle_rng(seed, _STREAM_NOISE, i).standard_normal((2, *grid), np.float32) for i in idx]
            )
            noise *= np.float32(sigma)
            vols += noise[:, 0]
            noise_after = noise[:, 1]
        vols = apply_filter(vols, filt)
        if noise_after is not None:
            vols += noise_after
        if progress is not None:
            progress(len(idx))
        yield start, vols


def simulate_particles(
    n_per_class: int,
    classes: int = 5,
    snr: float = 0.1,
    box: int = 32,
    voxel_size: float = 10.0,
    tilt_range: float = 60.0,
    defocus: float | None = None,
    shift: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Simulate `n_per_class` subtomograms of each of `classes` classes, in random order.

    Returns (volumes (N, box, box, box) float32, labels (N,) int64 class indices, class names).
    `snr=math.inf` gives noise-free volumes with the same poses as any other SNR for this seed.
    """
    imaging = Imaging(box, voxel_size, tilt_range, defocus, snr)
    imaging.check()
    cut = check_fit(classes, box, voxel_size)
    if cut:
        warnings.warn(
            f"classes {', '.join(cut)} do not fit in a {box}^3 box at {voxel_size} Å/voxel and are cut",
            stacklevel=2,
        )
    plan = plan_particles(n_per_class, classes, shift, seed)
    out = np.empty((len(plan), box, box, box), dtype=np.float32)
    for start, vols in iter_particles(plan, imaging, seed):
        out[start : start + len(vols)] = vols
    return out, plan.labels.astype(np.int64), class_names(classes)


__all__ = [
    "Imaging", "ParticlePlan", "check_fit", "iter_particles", "mean_signal_variance",
    "particle_noise_std", "plan_particles", "simulate_particles",
]
