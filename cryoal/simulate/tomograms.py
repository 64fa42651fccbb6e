"""Simulated whole tomograms with particles at known positions, and picks in RELION 5 form.

Particles of the class templates sit at random non-overlapping integer voxel positions with
uniform random orientations. Noise, missing wedge and CTF are applied to the whole tomogram, as
in real data. The noise level is the one `simulate_particles` uses for the same classes and
imaging, so a `box`-sized region around a particle has the same SNR as a simulated subtomogram.

Coordinates: pixel (x, y, z) is `volume[z, y, x]`, 0-based. A RELION 5 centred coordinate is
(pixel - size / 2) * voxel_size Å, with size = (X, Y, Z) of the tomogram.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from cryoal.simulate.particles import Imaging, mean_signal_variance, particle_rng
from cryoal.simulate.physics import filter_volume, noise_gain, noise_std
from cryoal.simulate.render import render_shape, single_thread_blas
from cryoal.simulate.rotations import quaternion_to_matrix, random_quaternions
from cryoal.simulate.shapes import class_names, class_shape

BACKGROUND = "background"
_STREAM_ASSIGN, _STREAM_PLACE, _STREAM_NOISE = 10, 11, 12
_MAX_TRIES = 20_000
_BACKGROUND_GAP = 2.0  # voxels between a false pick and the 2-sigma surface of any particle
_NOISE_SLAB = 8  # z slices of noise drawn at a time: bounded memory, fixed (deterministic) order


@dataclass(frozen=True)
class TomogramPlan:
    """Everything random about one tomogram except the noise. Row k is pick k (written order)."""

    name: str
    shape_xyz: tuple[int, int, int]
    labels: np.ndarray  # (M,) class index, -1 for a false pick on background
    centres: np.ndarray  # (M, 3) int, true pixel (x, y, z); for false picks the picked spot
    picks: np.ndarray  # (M, 3) float, written pick in pixels (true centre + jitter)
    quaternions: np.ndarray  # (M, 4) float (w, x, y, z); NaN for false picks

    @property
    def particle_ids(self) -> list[str]:
        """RELION 5 style rlnTomoParticleName: `<tomo>/<1-based index>`."""
        return [f"{self.name}/{k + 1}" for k in range(len(self.labels))]

    def picks_angstrom(self, voxel_size: float) -> np.ndarray:
        """Picks as RELION 5 rlnCenteredCoordinate{X,Y,Z}Angst: Å from the tomogram centre."""
        return (self.picks - np.asarray(self.shape_xyz, dtype=np.float64) / 2.0) * voxel_size


@dataclass(frozen=True)
class SimulatedTomogram:
    """A rendered tomogram (Z, Y, X) float32 with its plan (positions, labels, picks)."""

    plan: TomogramPlan
    volume: np.ndarray


def tomogram_name(index: int, n_tomograms: int) -> str:
    """`tomo_001`, `tomo_002`, ... (at least three digits)."""
    return f"tomo_{index + 1:0{max(3, len(str(n_tomograms)))}d}"


def _radius_vox(c: int, voxel_size: float) -> float:
    return class_shape(c).radius / voxel_size


def _place_particles(
    labels: np.ndarray,
    shape_xyz: tuple[int, int, int],
    voxel_size: float,
    box: int,
    rng: np.random.Generator,
    name: str,
) -> np.ndarray:
    """Integer centres (n, 3) so that particles lie inside and their 2-sigma spheres do not overlap.

    Along each axis where the tomogram is big enough, a whole `box` around the centre fits too,
    so that exact picks need no edge filling.
    """
    size = np.asarray(shape_xyz)
    radii = np.array([_radius_vox(int(c), voxel_size) for c in labels])
    centres = np.zeros((len(labels), 3), dtype=np.int64)
    placed: list[int] = []
    for i in np.argsort(-radii, kind="stable"):  # big ones first: random packing fails less often
        r = radii[i]
        lo = np.full(3, int(np.ceil(r)), dtype=np.int64)
        lo = np.where(size - 1 - 2 * np.maximum(lo, box // 2) >= 0, np.maximum(lo, box // 2), lo)
        hi = size - 1 - lo
        if np.any(hi < lo):
            raise ValueError(
                f"--tomo-shape: class {class_shape(int(labels[i])).name} ({2 * r:.0f} px across) does not "
                f"fit in a {'x'.join(map(str, shape_xyz))} tomogram"
            )
        for _ in range(_MAX_TRIES):
            c = rng.integers(lo, hi + 1)
            if not placed or np.all(np.linalg.norm(centres[placed] - c, axis=1) >= radii[placed] + r):
                centres[i] = c
                placed.append(int(i))
                break
        else:
            raise ValueError(
                f"--per-class: cannot place {len(labels)} non-overlapping particles in {name} "
                f"({'x'.join(map(str, shape_xyz))}); use fewer particles or more/larger tomograms"
            )
    return centres


def _place_background(
    n: int, centres: np.ndarray, radii: np.ndarray, shape_xyz: tuple[int, int, int], box: int,
    rng: np.random.Generator, name: str,
) -> np.ndarray:
    """`n` integer positions on empty background, a whole box from the edge where the size allows."""
    size = np.asarray(shape_xyz)
    margin = np.where(size > box, box // 2, 0)
    out = np.zeros((n, 3), dtype=np.int64)
    for k in range(n):
        for _ in range(_MAX_TRIES):
            c = rng.integers(margin, size - margin)
            if len(centres) == 0 or np.all(np.linalg.norm(centres - c, axis=1) >= radii + _BACKGROUND_GAP):
                out[k] = c
                break
        else:
            raise ValueError(f"--false-picks: no empty background left in {name} for {n} false picks")
    return out


def plan_tomograms(
    n_tomograms: int,
    classes: int,
    per_class: int,
    shape_xyz: tuple[int, int, int] = (256, 256, 100),
    voxel_size: float = 10.0,
    box: int = 32,
    pick_jitter: float = 0.0,
    false_picks: float = 0.0,
    seed: int = 0,
) -> list[TomogramPlan]:
    """Spread `per_class` particles of each class over `n_tomograms` tomograms and place them.

    `pick_jitter` (Å) is the standard deviation of the Gaussian error added to each true pick,
    per axis; `false_picks` is the number of background picks as a fraction of true picks.
    """
    if n_tomograms < 1:
        raise ValueError(f"--tomograms: must be at least 1, got {n_tomograms}")
    if pick_jitter < 0:
        raise ValueError(f"--pick-jitter: must be >= 0 Å, got {pick_jitter}")
    if false_picks < 0:
        raise ValueError(f"--false-picks: must be >= 0, got {false_picks}")
    rng = particle_rng(seed, _STREAM_ASSIGN, 0)
    all_labels = rng.permutation(np.repeat(np.arange(classes), per_class))
    plans = []
    for t, labels in enumerate(np.array_split(all_labels, n_tomograms)):
        name = tomogram_name(t, n_tomograms)
        rng = particle_rng(seed, _STREAM_PLACE, t)
        centres = _place_particles(labels, shape_xyz, voxel_size, box, rng, name)
        quats = random_quaternions(len(labels), rng)
        picks = centres + rng.normal(0.0, pick_jitter / voxel_size, centres.shape) if pick_jitter else centres
        radii = np.array([_radius_vox(int(c), voxel_size) for c in labels])
        n_false = int(math.floor(false_picks * len(labels) + 0.5))  # half rounds up
        bg = _place_background(n_false, centres, radii, shape_xyz, box, rng, name)
        order = rng.permutation(len(labels) + n_false)  # false picks must not all sit at the end
        plans.append(
            TomogramPlan(
                name=name,
                shape_xyz=tuple(int(s) for s in shape_xyz),
                labels=np.concatenate([labels, np.full(n_false, -1)])[order],
                centres=np.concatenate([centres, bg])[order],
                picks=np.concatenate([np.asarray(picks, dtype=np.float64), bg.astype(np.float64)])[order],
                quaternions=np.concatenate([quats, np.full((n_false, 4), np.nan)])[order],
            )
        )
    return plans


def render_clean(plan: TomogramPlan, voxel_size: float) -> np.ndarray:
    """The noise-free, unfiltered density of a tomogram, (Z, Y, X) float32."""
    x, y, z = plan.shape_xyz
    vol = np.zeros((z, y, x), dtype=np.float32)
    size = np.array([x, y, z])
    rotations = quaternion_to_matrix(np.nan_to_num(plan.quaternions))
    with single_thread_blas():
        for k, label in enumerate(plan.labels):
            if label < 0:
                continue
            shape = class_shape(int(label))
            # render window: every blob out to 4.5 sigma (mass beyond it < 1e-5)
            reach = np.max(np.linalg.norm(shape.positions, axis=1) + 4.5 * shape.sigmas)
            half = int(math.ceil(reach / voxel_size))
            local = render_shape(shape, rotations[k], (half, half, half), (2 * half + 1,) * 3, voxel_size)
            lo = plan.centres[k] - half  # tomogram pixel of local voxel 0, per axis (x, y, z)
            a = np.maximum(lo, 0)
            b = np.minimum(lo + 2 * half + 1, size)
            la, lb = a - lo, b - lo
            vol[a[2] : b[2], a[1] : b[1], a[0] : b[0]] += local[la[2] : lb[2], la[1] : lb[1], la[0] : lb[0]]
    return vol


def tomogram_noise_std(classes: int, imaging: Imaging, shape_xyz: tuple[int, int, int]) -> float:
    """Std of each noise half, matched to the SNR of `box`-sized particles (module docstring)."""
    grid = (shape_xyz[2], shape_xyz[1], shape_xyz[0])
    gain = noise_gain(grid, imaging.voxel_size, imaging.tilt_range, imaging.defocus)
    return noise_std(mean_signal_variance(classes, imaging), imaging.snr, gain)


def _add_noise(vol: np.ndarray, sigma: float, rng: np.random.Generator) -> None:
    for z0 in range(0, vol.shape[0], _NOISE_SLAB):
        slab = vol[z0 : z0 + _NOISE_SLAB]
        slab += rng.standard_normal(slab.shape, dtype=np.float32) * np.float32(sigma)


def render_tomogram(plan: TomogramPlan, index: int, classes: int, imaging: Imaging, seed: int) -> np.ndarray:
    """Particles, then half the noise, then wedge and CTF on the whole volume, then the other half."""
    vol = render_clean(plan, imaging.voxel_size)
    sigma = tomogram_noise_std(classes, imaging, plan.shape_xyz)
    rng = particle_rng(seed, _STREAM_NOISE, index)
    if sigma > 0:
        _add_noise(vol, sigma, rng)
    vol = filter_volume(vol, imaging.voxel_size, imaging.tilt_range, imaging.defocus)
    if sigma > 0:
        _add_noise(vol, sigma, rng)
    return vol


def iter_tomograms(
    plans: list[TomogramPlan],
    classes: int,
    imaging: Imaging,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[SimulatedTomogram]:
    """Render the planned tomograms one at a time (a tomogram can be large)."""
    imaging.check()
    for t, plan in enumerate(plans):
        vol = render_tomogram(plan, t, classes, imaging, seed)
        if progress is not None:
            progress(1)
        yield SimulatedTomogram(plan, vol)


def simulate_tomograms(
    n_tomograms: int,
    classes: int = 5,
    per_class: int = 20,
    snr: float = 0.1,
    shape_xyz: tuple[int, int, int] = (256, 256, 100),
    voxel_size: float = 10.0,
    box: int = 32,
    tilt_range: float = 60.0,
    defocus: float | None = None,
    pick_jitter: float = 0.0,
    false_picks: float = 0.0,
    seed: int = 0,
) -> tuple[list[SimulatedTomogram], list[str]]:
    """Simulate whole tomograms in memory. Returns (tomograms, class names).

    Each tomogram's `plan` holds the picks (`picks`, pixels; `picks_angstrom()`), the exact
    centres, the labels (-1 = false pick) and the orientations.
    """
    imaging = Imaging(box, voxel_size, tilt_range, defocus, snr)
    imaging.check()
    plans = plan_tomograms(
        n_tomograms, classes, per_class, shape_xyz, voxel_size, box, pick_jitter, false_picks, seed
    )
    return list(iter_tomograms(plans, classes, imaging, seed)), class_names(classes)
