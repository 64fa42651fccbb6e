"""`cryoal extract`: boxes cut at picked coordinates, checked voxel for voxel against slow references.

The synthetic tomogram is non-cubic (x 64, y 48, z 40) with random background and an asymmetric
L-shaped object of distinct values, so that any axis mix-up or off-by-one shows.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import shutil
from pathlib import Path

import h5py
import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.errors import InputError
from cryoal.extract.boxes import centre_voxel, cut_box, fourier_bin, zscore
from cryoal.extract.picks import CENTRED_ANGST, Convention, to_tomogram_pixels
from cryoal.io.pool import open_pool

SHAPE_ZYX = (40, 48, 64)
PIXEL = 10.0
# Planted object: centre voxel (x, y, z) and the L-shape's arms, each voxel a distinct value.
OBJ_XYZ = (20, 30, 14)
CENTRE_VALUE = 50.0
ARMS = {(1, 0, 0): 50.0, (0, 1, 0): 60.0, (0, 0, 1): 70.0}  # (dx, dy, dz) -> base; voxel k = base + k
ARM_LENGTH = {(1, 0, 0): 4, (0, 1, 0): 3, (0, 0, 1): 2}

runner = CliRunner()


# ------------------------------------------------------------------------------------------
# Fixture builders and slow references
# ------------------------------------------------------------------------------------------


def make_volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(0.0, 1.0, SHAPE_ZYX).astype(np.float32)
    x, y, z = OBJ_XYZ
    vol[z, y, x] = CENTRE_VALUE
    for (dx, dy, dz), base in ARMS.items():
        for k in range(1, ARM_LENGTH[(dx, dy, dz)] + 1):
            vol[z + k * dz, y + k * dy, x + k * dx] = base + k
    return vol


def write_mrc(path: Path, data: np.ndarray, voxel_size: float = PIXEL) -> Path:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
    return path


def reference_box(vol: np.ndarray, centre_xyz, size: int, fill: float) -> np.ndarray:
    """The obvious per-voxel loop: box index i on an axis holds voxel centre - size//2 + i."""
    cx, cy, cz = centre_xyz
    out = np.empty((size, size, size), np.float32)
    depth, height, width = vol.shape
    for i in range(size):
        for j in range(size):
            for k in range(size):
                z, y, x = cz - size // 2 + i, cy - size // 2 + j, cx - size // 2 + k
                inside = 0 <= z < depth and 0 <= y < height and 0 <= x < width
                out[i, j, k] = vol[z, y, x] if inside else fill
    return out


def reference_zscore(box: np.ndarray) -> np.ndarray:
    values = box.astype(np.float64)
    return ((values - values.mean()) / values.std()).astype(np.float32)


def dft_crop_matrix(big: int, small: int) -> np.ndarray:
    """(small, big) complex matrix: keep the central `small` frequencies of a `big`-point DFT and
    invert on the small grid, scaled by 1/big per axis (so the mean is kept). No FFT involved."""
    freqs = np.arange(-(small // 2), small - small // 2)
    j = np.arange(small)[:, None, None]
    x = np.arange(big)[None, None, :]
    k = freqs[None, :, None]
    return (np.exp(2j * np.pi * k * j / small) * np.exp(-2j * np.pi * k * x / big)).sum(axis=1) / big


def reference_fourier_bin(box: np.ndarray, factor: int) -> np.ndarray:
    big = box.shape[0]
    a = dft_crop_matrix(big, big // factor)
    out = np.einsum("ai,bj,ck,ijk->abc", a, a, a, box.astype(np.complex128))
    return out.real


def centred_angst(xyz, shape_zyx=SHAPE_ZYX, pixel=PIXEL) -> list[float]:
    size_xyz = shape_zyx[::-1]
    return [(p - s / 2) * pixel for p, s in zip(xyz, size_xyz, strict=True)]


def write_star(path: Path, columns: dict[str, list], optics: dict[str, list] | None = None) -> Path:
    lines = []
    for name, table in (("optics", optics), ("particles", columns)):
        if table is None:
            continue
        lines += [f"data_{name}", "", "loop_"] + [f"_{c}" for c in table]
        lines += [" ".join(str(v) for v in row) for row in zip(*table.values(), strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path: Path, columns: dict[str, list]) -> Path:
    rows = [",".join(columns)] + [",".join(str(v) for v in r) for r in zip(*columns.values(), strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def run(*args):
    return runner.invoke(app, ["extract", *[str(a) for a in args]])


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def tomo_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tomos"
    d.mkdir()
    write_mrc(d / "TS_01.mrc", make_volume(0))
    write_mrc(d / "TS_02.mrc", make_volume(1))
    return d


# Pick positions (x, y, z) in tomogram pixels, all far enough from the edge for a 16³ box.
PICKS = [OBJ_XYZ, (40, 20, 20), (30, 25, 12)]


# ------------------------------------------------------------------------------------------
# Cutting, rounding, binning (functions)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("centre", [OBJ_XYZ, (0, 0, 0), (63, 47, 39), (3, 44, 20), (70, 10, 10)])
@pytest.mark.parametrize("size", [8, 9])
def test_cut_box_matches_voxel_loop(centre, size):
    vol = make_volume()
    box, edge = cut_box(vol, np.array(centre), size, fill=-7.0)
    np.testing.assert_array_equal(box, reference_box(vol, centre, size, -7.0))
    lo = np.array(centre) - size // 2
    assert edge == bool(np.any(lo < 0) or np.any(lo + size > np.array(SHAPE_ZYX[::-1])))


def test_planted_object_lands_at_the_box_centre_with_axes_in_place():
    box, edge = cut_box(make_volume(), np.array(OBJ_XYZ), 16, fill=0.0)
    c = 16 // 2
    assert not edge
    assert box[c, c, c] == CENTRE_VALUE
    assert [box[c, c, c + k] for k in range(1, 5)] == [51, 52, 53, 54]  # x: last axis
    assert [box[c, c + k, c] for k in range(1, 4)] == [61, 62, 63]  # y: middle axis
    assert [box[c + k, c, c] for k in range(1, 3)] == [71, 72]  # z: first axis


def test_cut_box_reads_a_memory_map(tmp_path):
    vol = make_volume()
    path = write_mrc(tmp_path / "t.mrc", vol)
    with mrcfile.mmap(path, mode="r") as mrc:
        box, _ = cut_box(mrc.data, np.array(OBJ_XYZ), 12, fill=0.0)
    assert not isinstance(box, np.memmap)
    np.testing.assert_array_equal(box, reference_box(vol, OBJ_XYZ, 12, 0.0))


def test_centre_voxel_rounds_half_up():
    got = centre_voxel(np.array([[20.49, 20.5, 20.51], [-0.5, -0.51, 0.0]]))
    np.testing.assert_array_equal(got, [[20, 21, 21], [0, -1, 0]])


@pytest.mark.parametrize("big,factor", [(16, 2), (12, 3), (10, 2), (18, 2)])
def test_fourier_bin_matches_dft_matrix_reference(big, factor):
    box = np.random.default_rng(big).normal(3.0, 1.0, (big, big, big)).astype(np.float32)
    got = fourier_bin(box, factor)
    want = reference_fourier_bin(box, factor)
    assert got.shape == (big // factor,) * 3 and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert got.mean() == pytest.approx(box.mean(dtype=np.float64), abs=1e-5)


def test_fourier_bin_keeps_a_band_limited_signal_sampled_on_the_pick_grid():
    big, factor = 32, 2
    x = np.arange(big)
    wave = np.cos(2 * np.pi * 3 * x / big)  # frequency 3 < small/2 = 8: inside the kept band
    box = np.broadcast_to(wave[None, None, :] + 0.5 * wave[:, None, None] + 2.0, (big,) * 3)
    box = box.astype(np.float32)
    got = fourier_bin(box, factor)
    j = np.arange(big // factor)
    small_wave = np.cos(2 * np.pi * 3 * (factor * j) / big)  # output voxel j sits at factor*j
    want = small_wave[None, None, :] + 0.5 * small_wave[:, None, None] + 2.0
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), atol=1e-5)


def test_zscore_matches_reference_and_ingest_rule():
    box = np.random.default_rng(3).normal(5.0, 3.0, (16, 16, 16)).astype(np.float32)
    got = zscore(box, "b")
    np.testing.assert_allclose(got, reference_zscore(box), rtol=0, atol=1e-6)
    assert got.dtype == np.float32
    from cryoal.io.preprocess import zscore as ingest_zscore

    np.testing.assert_allclose(got, ingest_zscore(box), rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="b: constant box"):
        zscore(np.full((4, 4, 4), 2.0, np.float32), "b")
    box[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="b: 1 of 4096 voxels are NaN"):
        zscore(box, "b")


def test_pixel_conventions():
    shape = SHAPE_ZYX
    want = np.array([[20.0, 30.0, 14.0]])
    relion5 = Convention(CENTRED_ANGST, True)
    pixels = Convention(("x", "y", "z"), False)
    angst = np.array([centred_angst(OBJ_XYZ)])
    np.testing.assert_allclose(to_tomogram_pixels(angst, relion5, shape, PIXEL), want)
    np.testing.assert_allclose(to_tomogram_pixels(want, pixels, shape, PIXEL), want)
    # picks at 5 Å (twice the sampling of the 10 Å tomogram)
    np.testing.assert_allclose(to_tomogram_pixels(want * 2, pixels, shape, PIXEL, coord_pixel_size=5.0), want)
    # RELION's shift: the centre is the coordinate minus the origin
    origin = np.array([[30.0, -20.0, 10.0]])
    got = to_tomogram_pixels(angst + origin, relion5, shape, PIXEL, origin_angst=origin)
    np.testing.assert_allclose(got, want)
    got = to_tomogram_pixels(want + origin / PIXEL, pixels, shape, PIXEL, origin_angst=origin)
    np.testing.assert_allclose(got, want)


# ------------------------------------------------------------------------------------------
# Through the CLI: each coordinate convention gives the same, exact boxes
# ------------------------------------------------------------------------------------------


def _pool_boxes_by_id(pool_path: Path) -> dict[str, np.ndarray]:
    with open_pool(pool_path) as pool:
        vols = pool.read(np.arange(len(pool)))
        return dict(zip(pool.particle_ids, vols, strict=True))


def _check_boxes(pool_path: Path, tomo_dir: Path, ids_xyz: dict[str, tuple[str, tuple]], box: int = 16):
    got = _pool_boxes_by_id(pool_path)
    assert set(got) == set(ids_xyz)
    for pid, (tomo, xyz) in ids_xyz.items():
        vol = mrcfile.read(tomo_dir / f"{tomo}.mrc")
        want = reference_zscore(reference_box(vol, xyz, box, 0.0))
        np.testing.assert_allclose(got[pid], want, rtol=0, atol=2e-6, err_msg=pid)


def _relion5_star(path: Path, picks=PICKS, tomo="TS_01", names=True) -> Path:
    cols: dict[str, list] = {"rlnTomoName": [tomo] * len(picks)}
    for axis, col in enumerate(CENTRED_ANGST):
        cols[col] = [f"{centred_angst(p)[axis]:.3f}" for p in picks]
    if names:
        cols["rlnTomoParticleName"] = [f"{tomo}/{i + 1}" for i in range(len(picks))]
    cols["rlnOpticsGroup"] = [1] * len(picks)
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
              "rlnTomoTiltSeriesPixelSize": [2.5]}
    return write_star(path, cols, optics)


def test_relion5_centred_angstrom(tmp_path, tomo_dir):
    star = _relion5_star(tmp_path / "picks.star")
    result = run(star, "--tomograms", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 0, result.output
    want = {f"TS_01/{i + 1}": ("TS_01", p) for i, p in enumerate(PICKS)}
    _check_boxes(tmp_path / "pool.h5", tomo_dir, want)
    assert "extracted 3 particles" in result.stdout


def test_relion4_pixels_and_pool_columns(tmp_path, tomo_dir):
    picks = [("TS_01", PICKS[0]), ("TS_02", PICKS[1]), ("TS_01", PICKS[2])]
    cols = {
        "rlnTomoName": [t for t, _ in picks],
        "rlnCoordinateX": [p[0] for _, p in picks],
        "rlnCoordinateY": [p[1] for _, p in picks],
        "rlnCoordinateZ": [p[2] for _, p in picks],
        "rlnAutopickFigureOfMerit": ["0.9", "0.5", "0.7"],
    }
    star = write_star(tmp_path / "picks.star", cols)
    result = run(star, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 0, result.output
    # ids <tomo>_<n>: n counts that tomogram's picks in file order
    ids = {"TS_01_1": ("TS_01", PICKS[0]), "TS_02_1": ("TS_02", PICKS[1]), "TS_01_2": ("TS_01", PICKS[2])}
    _check_boxes(tmp_path / "pool.h5", tomo_dir, ids)
    with open_pool(tmp_path / "pool.h5") as pool:
        # order: the picks file's, although TS_01 is read in z order (PICKS[2] has z 12 < 14)
        assert list(pool.particle_ids) == ["TS_01_1", "TS_02_1", "TS_01_2"]
        assert list(pool.tomos) == ["TS_01", "TS_02", "TS_01"]
        np.testing.assert_array_equal(pool.coords, [PICKS[0], PICKS[1], PICKS[2]])
        assert set(pool.meta_columns) == set(cols)
        assert list(pool.meta("rlnAutopickFigureOfMerit")) == ["0.9", "0.5", "0.7"]
        assert list(pool.meta("rlnCoordinateX")) == ["20", "40", "30"]
        assert pool.voxel_size == PIXEL and pool.box == 16 and pool.mode == "subtomogram"
        assert not pool.edge.any()
        assert list(pool.labels) == [-1, -1, -1]
        assert pool.sources[0] == str((tomo_dir / "TS_01.mrc").resolve())


def test_csv_pixels_with_fractional_coordinates(tmp_path, tomo_dir):
    # 20.5 rounds up to 21; 29.6 to 30; 13.5 to 14
    csv = write_csv(tmp_path / "picks.csv", {"tomo": ["TS_02"], "x": ["20.5"], "y": ["29.6"], "z": ["13.5"]})
    result = run(csv, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 0, result.output
    _check_boxes(tmp_path / "pool.h5", tomo_dir, {"TS_02_1": ("TS_02", (21, 30, 14))})
    with open_pool(tmp_path / "pool.h5") as pool:
        np.testing.assert_allclose(pool.coords[0], [20.5, 29.6, 13.5], rtol=1e-6)


def test_coord_pixel_size_rescales_pixel_picks(tmp_path, tomo_dir):
    # picks in 2.5 Å pixels (unbinned tilt series) for a 10 Å tomogram: 4x the tomogram pixels
    cols = {"tomo": ["TS_01"] * 3}
    for axis, name in enumerate("xyz"):
        cols[name] = [p[axis] * 4 for p in PICKS]
    csv = write_csv(tmp_path / "picks.csv", cols)
    result = run(csv, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16, "--coord-pixel-size", 2.5)
    assert result.exit_code == 0, result.output
    want = {f"TS_01_{i + 1}": ("TS_01", p) for i, p in enumerate(PICKS)}
    _check_boxes(tmp_path / "pool.h5", tomo_dir, want)


def test_tomo_pixel_size_needed_when_header_says_zero(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    write_mrc(d / "TS_01.mrc", make_volume(), voxel_size=0.0)
    star = _relion5_star(tmp_path / "picks.star")
    result = run(star, "-t", d, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 1
    assert "TS_01.mrc" in result.stderr and "--tomo-pixel-size" in result.stderr
    assert not (tmp_path / "pool.h5").exists()
    result = run(star, "-t", d, "-o", tmp_path / "pool.h5", "--box", 16, "--tomo-pixel-size", PIXEL)
    assert result.exit_code == 0, result.output
    _check_boxes(tmp_path / "pool.h5", d, {f"TS_01/{i + 1}": ("TS_01", p) for i, p in enumerate(PICKS)})


def test_bin2_matches_fourier_crop_reference(tmp_path, tomo_dir):
    star = _relion5_star(tmp_path / "picks.star")
    result = run(star, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 8, "--bin", 2)
    assert result.exit_code == 0, result.output
    got = _pool_boxes_by_id(tmp_path / "pool.h5")
    vol = mrcfile.read(tomo_dir / "TS_01.mrc")
    for i, p in enumerate(PICKS):
        want = reference_zscore(reference_fourier_bin(reference_box(vol, p, 16, 0.0), 2))
        np.testing.assert_allclose(got[f"TS_01/{i + 1}"], want, rtol=0, atol=1e-4)
    with open_pool(tmp_path / "pool.h5") as pool:
        assert pool.voxel_size == 2 * PIXEL and pool.shape == (8, 8, 8)
        np.testing.assert_allclose(pool.coords, PICKS)  # tomogram pixels, in the picks' order


# ------------------------------------------------------------------------------------------
# Tomogram lookup
# ------------------------------------------------------------------------------------------


def test_tomogram_list_single_file_rec_prefix_and_gzip(tmp_path):
    vol = make_volume()
    sub = tmp_path / "recs"
    sub.mkdir()
    write_mrc(sub / "a.mrc", vol)
    picks = write_csv(tmp_path / "p.csv", {"tomo": ["TS_09"], "x": [20], "y": [30], "z": [14]})
    # a tomo,path list, paths relative to the list
    listing = write_csv(tmp_path / "tomos.csv", {"tomo": ["TS_09"], "path": ["recs/a.mrc"]})
    assert run(picks, "-t", listing, "-o", tmp_path / "p1.h5", "--box", 16).exit_code == 0
    # a RELION 5 tomograms.star
    star = write_star(tmp_path / "tomograms.star", {"rlnTomoName": ["TS_09"],
                                                    "rlnTomoReconstructedTomogram": ["recs/a.mrc"]})
    assert run(picks, "-t", star, "-o", tmp_path / "p2.h5", "--box", 16).exit_code == 0
    # one MRC file, and picks with no tomogram column
    xyz_only = write_csv(tmp_path / "xyz.csv", {"x": [20], "y": [30], "z": [14]})
    assert run(xyz_only, "-t", sub / "a.mrc", "-o", tmp_path / "p3.h5", "--box", 16).exit_code == 0
    # RELION 5's rec_ prefix, gzip-compressed: read whole, with a warning
    with open(sub / "a.mrc", "rb") as fin, gzip.open(sub / "rec_TS_09.mrc.gz", "wb") as fout:
        shutil.copyfileobj(fin, fout)
    (sub / "a.mrc").unlink()
    result = run(picks, "-t", sub, "-o", tmp_path / "p4.h5", "--box", 16)
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "rec_TS_09.mrc.gz" in result.stderr and "whole" in result.stderr
    want = reference_zscore(reference_box(vol, OBJ_XYZ, 16, 0.0))
    for name, pid in (("p1", "TS_09_1"), ("p2", "TS_09_1"), ("p3", "a_1"), ("p4", "TS_09_1")):
        np.testing.assert_allclose(_pool_boxes_by_id(tmp_path / f"{name}.h5")[pid], want, atol=2e-6)


# ------------------------------------------------------------------------------------------
# Edges and picks outside
# ------------------------------------------------------------------------------------------


def test_edge_boxes_filled_with_tomogram_mean_and_flagged(tmp_path, tomo_dir):
    near_edge = [(2, 30, 14), (62, 1, 38), OBJ_XYZ]
    cols = {"tomo": ["TS_01"] * 3, "x": [p[0] for p in near_edge], "y": [p[1] for p in near_edge],
            "z": [p[2] for p in near_edge]}
    csv = write_csv(tmp_path / "picks.csv", cols)
    result = run(csv, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 0, result.output
    vol = mrcfile.read(tomo_dir / "TS_01.mrc")
    mean = float(vol.astype(np.float64).mean())  # small tomogram: the exact mean is used
    got = _pool_boxes_by_id(tmp_path / "pool.h5")
    for i, p in enumerate(near_edge):
        want = reference_zscore(reference_box(vol, p, 16, mean))
        np.testing.assert_allclose(got[f"TS_01_{i + 1}"], want, rtol=0, atol=2e-6)
    with open_pool(tmp_path / "pool.h5") as pool:
        edge = dict(zip(pool.particle_ids, pool.edge, strict=True))
    assert edge == {"TS_01_1": True, "TS_01_2": True, "TS_01_3": False}
    assert "edge-filled 2" in result.stdout

    result = run(csv, "-t", tomo_dir, "-o", tmp_path / "skip.h5", "--box", 16, "--skip-edge")
    assert result.exit_code == 0, result.output
    assert "edge-skipped 2" in result.stdout
    assert list(_pool_boxes_by_id(tmp_path / "skip.h5")) == ["TS_01_3"]


def test_some_picks_outside_are_skipped_and_counted(tmp_path, tomo_dir):
    cols = {"tomo": ["TS_01"] * 4, "x": [20, 64, -1, 30], "y": [30, 10, 10, 25], "z": [14, 10, 10, 40]}
    csv = write_csv(tmp_path / "picks.csv", cols)
    result = run(csv, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 0, result.output
    assert "outside 3" in result.stdout
    assert list(_pool_boxes_by_id(tmp_path / "pool.h5")) == ["TS_01_1"]


# Picks of two tomograms, interleaved, with z values in no order; one lies outside its tomogram.
UNSORTED = [("TS_02", (40, 20, 30)), ("TS_01", (20, 30, 14)), ("TS_01", (30, 25, 29)),
            ("TS_02", (25, 22, 9)), ("TS_01", (500, 20, 20)), ("TS_01", (45, 12, 10)),
            ("TS_02", (12, 35, 21)), ("TS_01", (33, 18, 24)), ("TS_02", (50, 30, 12))]


@pytest.mark.parametrize("batch_boxes", [1000, 3])
def test_pool_rows_follow_the_picks_file_not_the_read_order(tmp_path, tomo_dir, monkeypatch, batch_boxes):
    import cryoal.extract.run as run_module

    # 3 boxes a batch: the batches of one tomogram scatter over the pool's rows
    monkeypatch.setattr(run_module, "BATCH_BYTES", batch_boxes * 16**3 * 4)
    cols = {"particle_id": [f"k{i}" for i in range(len(UNSORTED))], "tomo": [t for t, _ in UNSORTED]}
    cols |= {axis: [p[k] for _, p in UNSORTED] for k, axis in enumerate("xyz")}
    csv = write_csv(tmp_path / "picks.csv", cols)
    result = run(csv, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 0, result.output
    kept = [(f"k{i}", t, p) for i, (t, p) in enumerate(UNSORTED) if p[0] < 64]
    with open_pool(tmp_path / "pool.h5") as pool:
        assert list(pool.particle_ids) == [pid for pid, _, _ in kept]  # row k is the k-th extracted pick
        assert list(pool.tomos) == [t for _, t, _ in kept]
        np.testing.assert_array_equal(pool.coords, [p for _, _, p in kept])
        assert list(pool.meta("z")) == [str(p[2]) for _, _, p in kept]
        for row, (pid, tomo, xyz) in enumerate(kept):  # and each row holds its own pick's box
            vol = mrcfile.read(tomo_dir / f"{tomo}.mrc")
            want = reference_zscore(reference_box(vol, xyz, 16, 0.0))
            np.testing.assert_allclose(pool.read([row])[0], want, rtol=0, atol=2e-6, err_msg=pid)


def test_append_puts_new_picks_after_the_pool_in_file_order(tmp_path, tomo_dir):
    pool = tmp_path / "pool.h5"
    first = write_csv(tmp_path / "a.csv", {"particle_id": ["old"], "tomo": ["TS_01"], "x": [20], "y": [30],
                                           "z": [14]})
    assert run(first, "-t", tomo_dir, "-o", pool, "--box", 16).exit_code == 0
    picks = [("TS_02", (40, 20, 30)), ("TS_01", (30, 25, 29)), ("TS_02", (25, 22, 9))]
    second = write_csv(tmp_path / "b.csv", {"particle_id": ["n1", "n2", "n3"], "tomo": [t for t, _ in picks],
                                            "x": [p[0] for _, p in picks], "y": [p[1] for _, p in picks],
                                            "z": [p[2] for _, p in picks]})
    result = run(second, "-t", tomo_dir, "-o", pool, "--box", 16, "--append")
    assert result.exit_code == 0, result.output
    with open_pool(pool) as p:
        assert list(p.particle_ids) == ["old", "n1", "n2", "n3"]
        np.testing.assert_array_equal(p.coords[1:], [xyz for _, xyz in picks])
    _check_boxes(pool, tomo_dir, {"old": ("TS_01", (20, 30, 14)), "n1": picks[0], "n2": picks[1],
                                  "n3": picks[2]})


# ------------------------------------------------------------------------------------------
# Append
# ------------------------------------------------------------------------------------------


def test_append_adds_and_refuses_mismatches(tmp_path, tomo_dir):
    pool = tmp_path / "pool.h5"
    first = write_csv(tmp_path / "a.csv", {"tomo": ["TS_01"], "x": [20], "y": [30], "z": [14]})
    second = write_csv(tmp_path / "b.csv", {"particle_id": ["extra"], "tomo": ["TS_02"], "x": [40], "y": [20],
                                            "z": [20]})
    assert run(first, "-t", tomo_dir, "-o", pool, "--box", 16).exit_code == 0
    result = run(second, "-t", tomo_dir, "-o", pool, "--box", 16, "--append")
    assert result.exit_code == 0, result.output
    _check_boxes(pool, tomo_dir, {"TS_01_1": ("TS_01", PICKS[0]), "extra": ("TS_02", PICKS[1])})
    with open_pool(pool) as p:
        assert list(p.meta("particle_id")) == ["", "extra"]
    before = file_hash(pool)
    for args, words in (
        ((first, "--box", 16), ["TS_01_1", "already in the pool"]),  # the same ids again
        ((second, "--box", 16, "--bin", 2), ["voxel size", "20 Å"]),
        ((second, "--box", 16, "--tomo-pixel-size", 12), ["voxel size", "12 Å"]),
        ((second, "--box", 12), ["(16, 16, 16)"]),
    ):
        result = run(*args[:1], "-t", tomo_dir, "-o", pool, "--append", *args[1:])
        assert result.exit_code == 1
        assert all(w in result.stderr for w in words), result.stderr
        assert file_hash(pool) == before


# ------------------------------------------------------------------------------------------
# Bad input: one line naming the culprit, exit 1, no pool or the pool unchanged
# ------------------------------------------------------------------------------------------


def _bad_case(kind: str, tmp_path: Path, tomo_dir: Path) -> tuple[list, str]:
    good = {"tomo": ["TS_01"], "x": [20], "y": [30], "z": [14]}
    if kind == "unknown-tomo":
        picks = write_csv(tmp_path / "p.csv", {**good, "tomo": ["TS_77"]})
        return [picks, "-t", tomo_dir], "'TS_77'"
    if kind == "missing-tomogram":
        listing = write_csv(tmp_path / "list.csv", {"tomo": ["TS_01"], "path": ["gone/TS_01.mrc"]})
        return [write_csv(tmp_path / "p.csv", good), "-t", listing], "gone/TS_01.mrc"
    d = tmp_path / kind
    d.mkdir()
    if kind == "corrupt-tomogram":
        (d / "TS_01.mrc").write_bytes(np.random.default_rng(0).bytes(5000))
        return [write_csv(tmp_path / "p.csv", good), "-t", d], "TS_01.mrc"
    if kind == "truncated-tomogram":
        data = (tomo_dir / "TS_01.mrc").read_bytes()
        (d / "TS_01.mrc").write_bytes(data[: len(data) // 2])
        return [write_csv(tmp_path / "p.csv", good), "-t", d], "TS_01.mrc"
    if kind == "2d-image":
        write_mrc(d / "TS_01.mrc", make_volume()[0])
        return [write_csv(tmp_path / "p.csv", good), "-t", d], "TS_01.mrc"
    if kind == "all-outside":
        # pixel values written as if they were RELION 5 Å: every pick lands outside
        cols = {"rlnTomoName": ["TS_01"] * 2, "rlnCenteredCoordinateXAngst": [400, 350],
                "rlnCenteredCoordinateYAngst": [300, 250], "rlnCenteredCoordinateZAngst": [240, 230]}
        return [write_star(tmp_path / "p.star", cols), "-t", tomo_dir], (
            "all 2 picks fall outside their tomograms assuming rlnCenteredCoordinateXAngst in Å from the "
            "tomogram centre with pixel size 10 Å: wrong units?"
        )
    if kind == "no-coordinates":
        cols = {"rlnTomoName": ["TS_01"], "rlnImageName": ["a.mrc"], "rlnAngleRot": [0]}
        return [write_star(tmp_path / "p.star", cols), "-t", tomo_dir], "p.star: no coordinate columns"
    raise AssertionError(kind)


BAD_KINDS = ["unknown-tomo", "missing-tomogram", "corrupt-tomogram", "truncated-tomogram", "2d-image",
             "all-outside", "no-coordinates"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_one_line_exit_1_no_pool(kind, tmp_path, tomo_dir):
    args, culprit = _bad_case(kind, tmp_path, tomo_dir)
    result = run(*args, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert culprit in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "pool.h5").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_leaves_existing_pool_unchanged(kind, tmp_path, tomo_dir):
    pool = tmp_path / "pool.h5"
    seed = write_csv(tmp_path / "seed.csv", {"particle_id": ["s"], "tomo": ["TS_02"], "x": [20], "y": [30],
                                            "z": [14]})
    assert run(seed, "-t", tomo_dir, "-o", pool, "--box", 16).exit_code == 0
    before = file_hash(pool)
    args, culprit = _bad_case(kind, tmp_path, tomo_dir)
    result = run(*args, "-o", pool, "--box", 16, "--append")
    assert result.exit_code == 1 and culprit in result.stderr
    assert file_hash(pool) == before


def test_constant_box_is_named(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    write_mrc(d / "TS_01.mrc", np.zeros(SHAPE_ZYX, np.float32))
    result = run(write_csv(tmp_path / "p.csv", {"tomo": ["TS_01"], "x": [20], "y": [30], "z": [14]}),
                 "-t", d, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 1 and "TS_01_1" in result.stderr and "constant" in result.stderr


def test_pool_file_written_is_a_valid_pool(tmp_path, tomo_dir):
    star = _relion5_star(tmp_path / "picks.star", names=False)
    assert run(star, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16).exit_code == 0
    with h5py.File(tmp_path / "pool.h5", "r") as h5:
        assert h5["edge"].dtype == bool and h5["volumes"].shape == (3, 16, 16, 16)
        assert math.isclose(float(h5.attrs["voxel_size"]), PIXEL)
    with open_pool(tmp_path / "pool.h5") as pool:
        assert sorted(pool.particle_ids) == ["TS_01_1", "TS_01_2", "TS_01_3"]


# ------------------------------------------------------------------------------------------
# The memory-mapped reader
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("meter", [True, False])
def test_reader_stays_exact_when_unmapping_after_every_box(tmp_path, monkeypatch, meter):
    from cryoal.extract import tomograms as tm

    if not meter:  # no /proc: the reader falls back to its own estimate of what it has read
        monkeypatch.setattr(tm._MappedMeter, "__call__", lambda self: None)
    vol = make_volume()
    path = write_mrc(tmp_path / "t.mrc", vol)
    info = tm.inspect_tomogram("t", path)
    released = []
    centres = [(10, 10, 5), (20, 30, 14), (40, 20, 20), (30, 25, 30), (60, 44, 38)]  # z order
    with tm.open_tomogram(info, budget=1) as reader:
        monkeypatch.setattr(reader, "release", lambda orig=reader.release: (released.append(1), orig()))
        for c in centres:
            box, _ = reader.box(np.array(c), 12, fill=-1.0)
            np.testing.assert_array_equal(box, reference_box(vol, c, 12, -1.0))
    assert len(released) == len(centres)  # budget 1 byte: everything unmapped after each box


def test_edge_fill_mean_subsamples_large_tomograms(tmp_path, monkeypatch):
    from cryoal.extract import tomograms as tm

    vol = make_volume()
    path = write_mrc(tmp_path / "t.mrc", vol)
    info = tm.inspect_tomogram("t", path)
    with tm.open_tomogram(info) as reader:
        assert reader.mean() == pytest.approx(vol.astype(np.float64).mean(), rel=1e-12)
    monkeypatch.setattr(tm, "MEAN_SAMPLE_VOXELS", vol.size // 10)  # step ceil(10) = 10 slices
    with tm.open_tomogram(info) as reader:
        assert reader.mean() == pytest.approx(vol[::10].astype(np.float64).mean(), rel=1e-12)


# ------------------------------------------------------------------------------------------
# Round trip: simulate tomograms -> extract -> label with the truth -> status
# ------------------------------------------------------------------------------------------


def test_round_trip_simulated_tomograms(tmp_path):
    import csv
    import json

    sim = tmp_path / "sim"
    result = runner.invoke(app, [
        "simulate", str(sim), "--tomograms", "2", "--classes", "3", "--per-class", "4",
        "--tomo-shape", "80,64,40", "--box", "16", "--false-picks", "0.25", "--seed", "5",
    ])
    assert result.exit_code == 0, result.output
    pool = tmp_path / "pool.h5"
    result = run(sim / "tomograms.star", "-t", sim / "tomograms", "-o", pool, "--box", 16)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["label", str(pool), str(sim / "truth.csv")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["status", str(pool), "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)

    with open(sim / "truth_positions.csv", newline="") as fh:
        truth = {row["particle_id"]: row for row in csv.DictReader(fh)}
    n_false = sum(row["label"] == "background" for row in truth.values())
    assert n_false > 0
    assert status["total"] == status["labelled"] == len(truth)
    assert status["per_class"]["background"] == n_false
    assert status["voxel_size"] == 10.0 and status["box"] == 16

    # every box is the tomogram cut at simulate's own truth position (RELION 5 Å round trip),
    # and every label landed on its particle
    with open_pool(pool) as p:
        names = p.class_names
        vols = p.read(np.arange(len(p)))
        for pid, tomo, xyz, label, vol in zip(p.particle_ids, p.tomos, p.coords, p.labels, vols, strict=True):
            row = truth[pid]
            assert tomo == row["tomo"] and names[label] == row["label"]
            pick = np.array([float(row[k]) for k in ("pick_x", "pick_y", "pick_z")])
            np.testing.assert_allclose(xyz, pick, atol=1e-3)
            tomogram = mrcfile.read(sim / "tomograms" / f"{tomo}.mrc")
            fill = float(tomogram.astype(np.float64).mean())  # used only if the box crosses the edge
            want = reference_zscore(reference_box(tomogram, centre_voxel(pick), 16, fill))
            np.testing.assert_allclose(vol, want, rtol=0, atol=2e-6, err_msg=pid)


def test_duplicate_ids_and_skip_edge_leaving_nothing_are_refused(tmp_path, tomo_dir):
    dup = write_csv(tmp_path / "dup.csv", {"particle_id": ["a", "a"], "tomo": ["TS_01"] * 2, "x": [20, 30],
                                           "y": [30, 25], "z": [14, 12]})
    result = run(dup, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16)
    assert result.exit_code == 1 and "dup.csv: particle id 'a' appears more than once" in result.stderr
    edge = write_csv(tmp_path / "edge.csv", {"tomo": ["TS_01"], "x": [1], "y": [30], "z": [14]})
    result = run(edge, "-t", tomo_dir, "-o", tmp_path / "pool.h5", "--box", 16, "--skip-edge")
    assert result.exit_code == 1 and "--skip-edge leaves them all out" in result.stderr
    assert not (tmp_path / "pool.h5").exists()
