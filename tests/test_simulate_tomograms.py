"""`cryoal simulate --tomograms`: particles sit at the picked coordinates, false picks on background."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.io.star import read_star
from cryoal.simulate import class_names, class_shape, plan_tomograms, simulate_tomograms
from cryoal.simulate.particles import Imaging
from cryoal.simulate.physics import noise_gain, wedge_mask
from cryoal.simulate.render import render_shape
from cryoal.simulate.rotations import quaternion_to_matrix
from cryoal.simulate.tomograms import render_clean, tomogram_noise_std

VS = 20.0
SHAPE = (72, 64, 40)  # x, y, z
TOMO_ARGS = ["--tomograms", "2", "--classes", "3", "--per-class", "6", "--tomo-shape", "72,64,40",
             "--voxel-size", "20", "--box", "16", "--false-picks", "0.5", "--seed", "4"]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _box(vol: np.ndarray, xyz, b: int) -> np.ndarray:
    x, y, z = (int(round(v)) - b // 2 for v in xyz)  # project convention: centre voxel at index b // 2
    return vol[z : z + b, y : y + b, x : x + b]


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("tomo") / "sim"
    res = CliRunner().invoke(app, ["simulate", str(out), *TOMO_ARGS, "--snr", "inf", "--tilt-range", "90"])
    assert res.exit_code == 0, res.output
    return out


def test_files_and_columns(clean_set):
    star = read_star(clean_set / "tomograms.star")["particles"]
    assert list(star) == ["rlnTomoName", "rlnTomoParticleName", "rlnCenteredCoordinateXAngst",
                          "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
    truth = _csv(clean_set / "truth.csv")
    assert [r["particle_id"] for r in truth] == star["rlnTomoParticleName"]
    labels = [r["label"] for r in truth]
    assert sorted(set(labels)) == sorted([*class_names(3), "background"])
    assert sum(lab != "background" for lab in labels) == 18
    assert labels.count("background") == 10  # 0.5 * 9 = 4.5 rounds up to 5 in each of the two tomograms
    assert labels.index("background") < len(labels) - 10  # false picks are mixed in, not appended
    for name in ("tomo_001", "tomo_002"):
        with mrcfile.open(clean_set / "tomograms" / f"{name}.mrc") as m:
            assert m.data.shape == (40, 64, 72) and float(m.voxel_size.x) == VS
    assert star["rlnTomoParticleName"][0] == "tomo_001/1"


def test_particles_sit_at_relion5_coordinates(clean_set):
    star = read_star(clean_set / "tomograms.star")["particles"]
    rows = _csv(clean_set / "truth_positions.csv")
    size = np.array(SHAPE, dtype=np.float64)
    b = 24
    # zero padding lets every box be cut; the comparison below stays inside the tomogram anyway
    vols = {
        n: np.pad(mrcfile.read(clean_set / "tomograms" / f"{n}.mrc"), b)
        for n in ("tomo_001", "tomo_002")
    }
    checked = 0
    for k, row in enumerate(rows):
        ang = np.array([float(star[f"rlnCenteredCoordinate{a}Angst"][k]) for a in "XYZ"])
        pixel = ang / VS + size / 2  # RELION 5: Å from the centre, centre at size / 2
        assert np.allclose(pixel, [float(row[a]) for a in "xyz"], atol=1e-3)
        if row["label"] == "background":
            continue
        c = class_names(3).index(row["label"])
        r = quaternion_to_matrix(np.array([[float(row[q]) for q in ("qw", "qx", "qy", "qz")]]))[0]
        ref = render_shape(class_shape(c), r, (b // 2,) * 3, (b,) * 3, VS)
        got = _box(vols[row["tomo"]], pixel + b, b)
        # inside the particle's own sphere no neighbour reaches (non-overlap), so voxels match exactly
        z, y, x = np.indices(ref.shape) - b // 2
        inside = np.sqrt(x**2 + y**2 + z**2) <= class_shape(c).radius / VS - 1
        assert np.allclose(got[inside], ref[inside], atol=1e-4 * ref.max())
        checked += 1
    assert checked == 18


def test_false_picks_are_on_empty_background(clean_set):
    rows = _csv(clean_set / "truth_positions.csv")
    vols = {n: mrcfile.read(clean_set / "tomograms" / f"{n}.mrc") for n in ("tomo_001", "tomo_002")}
    peak = max(v.max() for v in vols.values())
    bg = [r for r in rows if r["label"] == "background"]
    assert bg and all(r["qw"] == "" for r in bg)
    for r in bg:
        x, y, z = (int(r[a]) for a in "xyz")
        around = vols[r["tomo"]][z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2]
        assert around.max() < 1e-3 * peak
        assert 8 <= x < 72 - 8 and 8 <= y < 64 - 8 and 8 <= z < 40 - 8  # a whole 16^3 box fits


def test_placement_non_overlapping_and_jitter():
    plans = plan_tomograms(3, 5, 40, (128, 128, 64), 10.0, 32, pick_jitter=30.0, seed=2)
    devs = []
    for plan in plans:
        radii = np.array([class_shape(int(c)).radius / 10.0 for c in plan.labels])
        d = np.linalg.norm(plan.centres[:, None] - plan.centres[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        assert np.all(d >= radii[:, None] + radii[None])
        assert np.all(plan.centres >= np.ceil(radii)[:, None])
        assert np.all(plan.centres <= np.array([127, 127, 63]) - np.ceil(radii)[:, None])
        # where the tomogram allows it, a whole 32^3 box around each particle fits (no edge filling)
        assert np.all(plan.centres >= 16) and np.all(plan.centres <= np.array([127, 127, 63]) - 16)
        devs.append((plan.picks - plan.centres) * 10.0)
    devs = np.concatenate(devs)
    assert devs.std() == pytest.approx(30.0, rel=0.1) and abs(devs.mean()) < 3
    assert sum(len(p.labels) for p in plans) == 200


def test_wedge_ctf_and_noise_on_whole_tomogram():
    kw = dict(classes=3, per_class=8, shape_xyz=(64, 64, 32), voxel_size=VS, box=16, defocus=5.0, seed=9)
    clean = simulate_tomograms(1, snr=math.inf, **kw)[0][0]
    noisy = simulate_tomograms(1, snr=0.5, **kw)[0][0]
    vol = clean.volume
    spec = np.abs(np.fft.rfftn(vol)) ** 2
    missing = wedge_mask(vol.shape, 60.0) == 0
    assert spec[missing].max() < 1e-8 * spec.max()  # the missing wedge of the whole tomogram is empty
    # the unfiltered density is the same particles: filtering changed it, placement did not
    assert np.corrcoef(render_clean(clean.plan, VS).ravel(), vol.ravel())[0, 1] > 0.2
    noise = noisy.volume.astype(np.float64) - vol
    sigma = tomogram_noise_std(3, Imaging(16, VS, 60.0, 5.0, 0.5), (64, 64, 32))
    expected = sigma**2 * (1 + noise_gain((32, 64, 64), VS, 60.0, 5.0))
    assert noise.var() == pytest.approx(expected, rel=0.03)


def test_cannot_place_too_many_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["simulate", str(tmp_path / "o"), "--tomograms", "1", "--tomo-shape",
                                   "40,40,24", "--per-class", "40", "--voxel-size", "20"])
    assert res.exit_code == 2 and "--per-class" in res.stderr and "cannot place" in res.stderr
