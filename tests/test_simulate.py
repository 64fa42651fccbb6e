"""Simulation physics and API: rotations, shapes, rendering, wedge, CTF, SNR, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import erf

from cryoal.simulate import class_names, class_shape, point_group, simulate_particles
from cryoal.simulate.particles import Imaging, iter_particles, plan_particles
from cryoal.simulate.physics import (
    apply_filter,
    ctf_1d,
    ctf_3d,
    electron_wavelength,
    fourier_filter,
    noise_gain,
    wedge_mask,
)
from cryoal.simulate.render import box_centre, render_points, render_shape
from cryoal.simulate.rotations import (
    axis_angle,
    quaternion_to_matrix,
    random_quaternions,
    random_rotations,
    rotation_angle,
)

# ------------------------------------------------------------------ rotations


def test_rotations_are_proper_and_orthonormal():
    r = random_rotations(5000, np.random.default_rng(1))
    assert np.allclose(r @ np.swapaxes(r, 1, 2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(r), 1.0, atol=1e-12)


def test_rotation_angle_follows_haar_measure():
    # uniform on SO(3): the rotation angle has density (1 - cos t) / pi, CDF (t - sin t) / pi
    angles = rotation_angle(random_rotations(20000, np.random.default_rng(2)))
    p = stats.kstest(angles, lambda t: (t - np.sin(t)) / np.pi).pvalue
    assert p > 1e-3
    # a rotation from a random matrix by SVD fails this test: the check has teeth
    m = np.random.default_rng(3).uniform(size=(20000, 3, 3))
    u, _, vt = np.linalg.svd(m)
    bad = u @ vt
    bad = bad[np.linalg.det(bad) > 0]
    assert stats.kstest(rotation_angle(bad), lambda t: (t - np.sin(t)) / np.pi).pvalue < 1e-6


def test_rotated_axis_is_uniform_on_the_sphere():
    r = random_rotations(20000, np.random.default_rng(4))
    for axis in np.eye(3):
        v = r @ axis
        assert stats.kstest(v[:, 2], stats.uniform(-1, 2).cdf).pvalue > 1e-3  # Archimedes: z ~ U(-1, 1)
        azimuth = np.arctan2(v[:, 1], v[:, 0])
        assert stats.kstest(azimuth, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 1e-3


def test_quaternion_matrix_matches_rodrigues():
    rng = np.random.default_rng(5)
    for _ in range(20):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        t = rng.uniform(0, np.pi)
        q = np.concatenate([[np.cos(t / 2)], np.sin(t / 2) * axis])
        assert np.allclose(quaternion_to_matrix(q[None])[0], axis_angle(axis, t), atol=1e-12)
    q = random_quaternions(100, rng)
    assert np.all(q[:, 0] >= 0) and np.allclose(np.linalg.norm(q, axis=1), 1)


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize(("sym", "order"), [("C6", 6), ("D7", 14), ("T", 12), ("O", 24), ("I", 60)])
def test_point_groups_are_closed_rotation_groups(sym, order):
    g = point_group(sym)
    assert len(g) == order
    assert np.allclose(np.linalg.det(g), 1)
    flat = g.reshape(order, 9)
    for a in g[:: max(1, order // 6)]:
        prods = (a @ g).reshape(order, 9)  # each product must be in the group
        dist = np.min(np.linalg.norm(prods[:, None] - flat[None], axis=-1), axis=1)
        assert dist.max() < 1e-8


def _nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.min(np.linalg.norm(a[:, None] - b[None], axis=-1), axis=1)


def test_named_classes_have_their_symmetry():
    n_symmetric = 0
    for i in range(13):
        shape = class_shape(i)
        if shape.symmetry in ("C1", "helical"):
            continue
        n_symmetric += 1
        for op in point_group(shape.symmetry):
            assert _nearest(shape.positions @ op.T, shape.positions).max() < 1e-6, shape.name
        # and no larger cyclic symmetry about z than declared would make it trivial: one generic op moves it
        assert _nearest(shape.positions @ axis_angle([0.3, 0.2, 1], 0.4).T, shape.positions).max() > 1.0
    assert n_symmetric >= 9
    # the filament is helical: 166.15 degrees and 27.5 Å per subunit map subunits k -> k + 1
    fil = class_shape(6)
    per = len(fil.positions) // 8
    turned = fil.positions[: 7 * per] @ axis_angle([0, 0, 1], np.deg2rad(166.15)).T
    shift = np.mean(fil.positions[per:] - turned, axis=0)  # the helix axis is off the centre of mass
    assert np.abs(fil.positions[per:] - turned - shift).max() < 1e-6
    assert shift[2] == pytest.approx(27.5)


def test_class_names_are_readable_unique_and_fixed():
    names = class_names(20)
    assert len(set(names)) == 20
    assert all(n.replace("_", "").isalnum() and n.islower() and n != "background" for n in names)
    before = class_shape(3).positions.copy()
    class_shape.cache_clear()
    assert np.array_equal(class_shape(3).positions, before)  # shapes never depend on a seed


def _log_radial_power(vol: np.ndarray) -> np.ndarray:
    # rotation- and shift-invariant description of a density: its spherically averaged power spectrum
    power = np.abs(np.fft.fftn(vol)) ** 2
    k = np.sqrt(sum(f**2 for f in np.meshgrid(*[np.fft.fftfreq(n) for n in vol.shape], indexing="ij")))
    shell = np.minimum(np.rint(k * vol.shape[0]).astype(int), vol.shape[0] // 2)
    return np.log(np.bincount(shell.ravel(), power.ravel()) / np.bincount(shell.ravel()))


def test_classes_are_distinct_without_alignment():
    rng = np.random.default_rng(6)
    n = 16  # the 13 named classes and 3 procedural ones
    first, spread = [], []
    for c in range(n):
        centres = box_centre(32) + rng.uniform(-1, 1, (3, 3))
        feats = [
            _log_radial_power(render_shape(class_shape(c), r, centre, (32,) * 3, 10.0))
            for r, centre in zip(random_rotations(3, rng), centres, strict=True)
        ]
        first.append(feats[0])
        spread.append(max(np.linalg.norm(feats[i] - feats[j]) for i in range(3) for j in range(i)))
    f = np.array(first)
    between = np.linalg.norm(f[:, None] - f[None], axis=-1)[~np.eye(n, dtype=bool)]
    # any two classes differ by far more than one class differs from itself under a new pose
    assert between.min() > 3 * max(spread)


# ------------------------------------------------------------------ rendering


def test_render_matches_naive_voxel_integration():
    rng = np.random.default_rng(7)
    xyz = rng.uniform(1, 7, (3, 3))
    sig = rng.uniform(0.5, 1.5, 3)
    w = rng.uniform(0.5, 2, 3)
    got = render_points(xyz, sig, w, (8, 9, 10))
    ref = np.zeros((8, 9, 10))
    for z in range(8):
        for y in range(9):
            for x in range(10):
                for a in range(3):
                    part = 1.0
                    for c, v in zip(xyz[a], (x, y, z), strict=True):
                        s = sig[a] * math.sqrt(2)
                        part *= 0.5 * (erf((v + 0.5 - c) / s) - erf((v - 0.5 - c) / s))
                    ref[z, y, x] += w[a] * part
    assert np.allclose(got, ref, atol=1e-6)


def test_render_axis_order_and_centre():
    vol = render_points(np.array([[3.0, 5.0, 6.0]]), np.array([0.6]), np.array([1.0]), (10, 10, 10))
    assert np.unravel_index(np.argmax(vol), vol.shape) == (6, 5, 3)  # point (x, y, z) -> vol[z, y, x]
    # a rotated, shifted template: centre of mass and second moments follow R and the shift
    shape = class_shape(1)
    r = random_rotations(1, np.random.default_rng(8))[0]
    centre = box_centre(40) + np.array([0.7, -1.2, 0.4])
    vol = render_shape(shape, r, centre, (40, 40, 40), 10.0).astype(np.float64)
    z, y, x = np.indices(vol.shape)
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    m = vol.ravel() / vol.sum()
    com = m @ pts
    assert np.allclose(com, centre, atol=1e-3)
    cov = (pts - com).T @ ((pts - com) * m[:, None])
    w = shape.weights / shape.weights.sum()
    atoms = shape.positions / 10.0
    blur = w @ (shape.sigmas / 10.0) ** 2 + 1 / 12  # blob width plus voxel binning (Sheppard)
    expected = r @ (atoms.T @ (atoms * w[:, None])) @ r.T + np.eye(3) * blur
    assert np.allclose(cov, expected, atol=1e-3 * np.abs(expected).max())


# ------------------------------------------------------------------ missing wedge and CTF


def test_wedge_convention_points():
    shape = (32, 32, 32)
    mask = wedge_mask(shape, 60.0, half=False)

    def at(kx, ky, kz):  # frequencies in cycles/voxel -> mask value
        return mask[round(kz * 32) % 32, round(ky * 32) % 32, round(kx * 32) % 32]

    assert at(0, 0, 0) == 1  # DC
    assert at(0, 0.25, 0) == 1  # the ky (tilt) axis is always measured
    assert at(0, 0, 0.25) == 0  # the beam axis kz is missing
    assert at(0.25, 0, 0.25) == 1  # 45 degrees from kx: inside ±60
    assert at(0.0625, 0, 0.25) == 0  # |kz| = 4 |kx| > tan 60 |kx|: in the wedge
    assert at(-0.25, 0.1, -0.40625) == 1  # |kz| = 1.625 |kx| <= 1.732 |kx|
    assert at(0.25, 0.1, 0.46875) == 0  # |kz| = 1.875 |kx| > 1.732 |kx|
    assert np.all(wedge_mask(shape, 90.0) == 1)


def test_wedge_mask_matches_naive_loop_and_half_grid():
    d, h, w = 10, 12, 14
    for alpha in (30.0, 45.0, 60.0):
        full = wedge_mask((d, h, w), alpha, half=False)
        t = math.tan(math.radians(alpha))
        for iz in range(d):
            for ix in range(w):
                kz = np.fft.fftfreq(d)[iz]
                kx = np.fft.fftfreq(w)[ix]
                expect = float(abs(kz) <= abs(kx) * t + 1e-9)
                assert np.all(full[iz, :, ix] == expect)
        assert np.array_equal(wedge_mask((d, h, w), alpha), full[:, :, : w // 2 + 1])


def test_filter_removes_beam_waves_and_keeps_tilt_axis_waves():
    z, y, x = np.indices((32, 32, 32))
    along_z = np.cos(2 * np.pi * 4 * z / 32).astype(np.float32)
    along_x = np.cos(2 * np.pi * 4 * x / 32).astype(np.float32)
    along_y = np.cos(2 * np.pi * 4 * y / 32).astype(np.float32)
    filt = fourier_filter((32,) * 3, 10.0, 60.0, None)
    out = apply_filter(np.stack([along_z, along_x, along_y]), filt)
    assert np.abs(out[0]).max() < 1e-5
    assert np.allclose(out[1], along_x, atol=1e-5) and np.allclose(out[2], along_y, atol=1e-5)


def _ctf_reference(k: float, defocus_um: float) -> float:
    # textbook constants; written independently of the code under test
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = 300e3
    lam = h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c))) * 1e10  # Å
    chi = math.pi * lam * defocus_um * 1e4 * k * k - math.pi / 2 * 2.0e7 * lam**3 * k**4
    return math.sqrt(1 - 0.07**2) * math.sin(chi) + 0.07 * math.cos(chi)


def test_ctf_matches_naive_formula():
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=2e-6)
    grid = (8, 10, 12)
    ctf = ctf_3d(grid, 10.0, 5.0, half=False)
    for iz, iy, ix in np.ndindex(*grid):
        kz, ky, kx = np.fft.fftfreq(8)[iz], np.fft.fftfreq(10)[iy], np.fft.fftfreq(12)[ix]
        k = math.sqrt(kz**2 + ky**2 + kx**2) / 10
        assert ctf[iz, iy, ix] == pytest.approx(_ctf_reference(k, 5.0), abs=2e-5)


@pytest.mark.parametrize("defocus", [2.0, 5.0, 8.0])
def test_ctf_first_zero_at_the_right_frequency(defocus):
    k = np.linspace(1e-4, 0.06, 200001)
    values = ctf_1d(k, defocus)
    first = k[np.argmax(np.sign(values[1:]) != np.sign(values[:-1]))]
    lam = electron_wavelength(300)
    phase = math.asin(0.07)  # CTF = sin(chi + asin A): first zero at chi = pi - asin A
    a, b, c = math.pi / 2 * 2e7 * lam**3, -math.pi * lam * defocus * 1e4, math.pi - phase
    u = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)  # smaller root of a u^2 + b u + c = 0, u = k^2
    assert first == pytest.approx(math.sqrt(u), abs=1e-6)
    # close to the Cs-free, phase-only textbook value 1 / sqrt(lambda df)
    assert first == pytest.approx(1 / math.sqrt(lam * defocus * 1e4), rel=0.06)


def test_noise_gain_is_mean_squared_filter():
    grid = (9, 10, 12)
    full = fourier_filter(grid, 10.0, 60.0, 5.0, half=False)
    assert noise_gain(grid, 10.0, 60.0, 5.0) == pytest.approx(float(np.mean(full.astype(np.float64) ** 2)))
    noise = np.random.default_rng(9).standard_normal((200, *grid)).astype(np.float32)
    filtered = apply_filter(noise, fourier_filter(grid, 10.0, 60.0, 5.0))
    assert filtered.var() == pytest.approx(noise_gain(grid, 10.0, 60.0, 5.0), rel=0.02)


# ------------------------------------------------------------------ particles: SNR, determinism


SMALL = dict(classes=4, box=16, voxel_size=20.0, defocus=5.0)


def test_snr_is_signal_variance_over_noise_variance():
    snr = 0.5
    noisy, labels, _ = simulate_particles(50, snr=snr, seed=11, **SMALL)
    clean, labels2, _ = simulate_particles(50, snr=math.inf, seed=11, **SMALL)
    assert np.array_equal(labels, labels2)
    noise = noisy.astype(np.float64) - clean
    measured = clean.var(axis=(1, 2, 3)).mean() / noise.var(axis=(1, 2, 3)).mean()
    assert measured == pytest.approx(snr, rel=0.1)
    # half the noise before the filter, half after: noise power is s^2 (1 + |H|^2) at each frequency
    filt = fourier_filter((16,) * 3, 20.0, 60.0, 5.0, half=False).astype(np.float64)
    power = np.mean(np.abs(np.fft.fftn(noise, axes=(1, 2, 3))) ** 2, axis=0) / 16**3
    in_wedge = power[filt == 0].mean()
    strong = filt**2 > 0.8
    ratio = power[strong].mean() / in_wedge
    assert ratio == pytest.approx(1 + (filt[strong] ** 2).mean(), rel=0.05)


def test_particles_deterministic_and_seed_dependent():
    a, la, names = simulate_particles(3, snr=0.2, seed=5, **SMALL)
    b, lb, _ = simulate_particles(3, snr=0.2, seed=5, **SMALL)
    c, lc, _ = simulate_particles(3, snr=0.2, seed=6, **SMALL)
    assert a.dtype == np.float32 and a.shape == (12, 16, 16, 16)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert not np.allclose(a, c)
    assert names == class_names(4)
    assert np.bincount(la).tolist() == [3, 3, 3, 3]
    # batch size does not change a single byte: each particle has its own noise stream
    plan = plan_particles(3, 4, 1.0, 5)
    img = Imaging(16, 20.0, 60.0, 5.0, 0.2)
    small_batches = np.concatenate([v for _, v in iter_particles(plan, img, 5, batch_size=5)])
    assert small_batches.tobytes() == a.tobytes()


def test_particle_order_is_shuffled_and_poses_differ():
    _, labels, _ = simulate_particles(10, snr=math.inf, seed=1, **SMALL)
    assert not np.array_equal(labels, np.sort(labels))  # ids must not give the class away
    plan = plan_particles(10, 4, 1.0, 1)
    assert np.abs(plan.shifts).max() < 6 and 0.7 < plan.shifts.std() < 1.3


def test_noise_free_particle_is_filtered_template():
    vols, labels, _ = simulate_particles(1, snr=math.inf, seed=3, shift=0.0, tilt_range=90.0, **{
        k: v for k, v in SMALL.items() if k != "defocus"
    })
    plan = plan_particles(1, 4, 0.0, 3)
    for i in range(4):
        ref = render_shape(class_shape(int(labels[i])), plan.rotations[i], box_centre(16), (16,) * 3, 20.0)
        assert np.allclose(vols[i], ref, atol=1e-5 * ref.max())
