"""`cryoal extract --copick` and OME-Zarr tomograms, checked against the MRC + RELION 5 STAR path.

The reference for every extraction is the same tomograms written as MRC files (the arrays copick
stores, read back through zarr) with the same picks as a RELION 5 STAR (Å from the centre): both
pools must hold the same boxes, voxel for voxel, under the same particle ids.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from cli_helpers import assert_one_error, cli
from copick_project import (
    PLANTED,
    SPACING,
    block_average,
    build_project,
    full_positions,
    make_volume,
    particle_id,
    pick_sets,
    require,
)

from cryoal.io.pool import open_pool

copick = require("copick")
zarr = require("zarr")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return build_project(tmp_path_factory.mktemp("copick"))


def level_array(config: Path, run: str, spacing: float, level: str = "0") -> np.ndarray:
    """A stored tomogram array, read through copick's API."""
    root = copick.from_file(str(config))
    tomo = root.get_run(run).get_voxel_spacing(spacing).get_tomograms("wbp")[0]
    return np.asarray(zarr.open_group(tomo.zarr(), mode="r")[level][...])


def write_reference(tmp: Path, config: Path, arrays: dict[str, np.ndarray], pixel: float,
                    keys=None) -> tuple[Path, Path]:
    """The MRC + RELION 5 STAR twin of a copick extraction: one MRC per run (`arrays`), and a STAR
    with every pick of `keys` (default all) in Å from the tomogram centre, named by its copick id."""
    tomo_dir = tmp / f"mrc{pixel:g}"
    tomo_dir.mkdir()
    for run, data in arrays.items():
        with mrcfile.new(tomo_dir / f"{run}.mrc") as mrc:
            mrc.set_data(data.astype(np.float32))
            mrc.voxel_size = pixel
    rows = []
    for key, pos in full_positions().items():
        if keys is not None and key not in keys:
            continue
        size_xyz = np.asarray(arrays[key[0]].shape[::-1], dtype=float)
        for k, p in enumerate(pos):
            centred = p - size_xyz / 2 * pixel
            rows.append(f"{key[0]} {particle_id(*key, k)} " + " ".join(repr(float(v)) for v in centred))
    star = tmp / f"picks{pixel:g}.star"
    star.write_text(
        "data_particles\n\nloop_\n_rlnTomoName\n_rlnTomoParticleName\n_rlnCenteredCoordinateXAngst\n"
        "_rlnCenteredCoordinateYAngst\n_rlnCenteredCoordinateZAngst\n" + "\n".join(rows) + "\n"
    )
    return star, tomo_dir


def assert_same_pools(got: Path, want: Path) -> None:
    with open_pool(got) as a, open_pool(want) as b:
        assert sorted(a.particle_ids) == sorted(b.particle_ids)
        order = b.index_of(list(a.particle_ids))
        np.testing.assert_array_equal(a.read(np.arange(len(a))), b.read(order))
        np.testing.assert_allclose(a.coords, b.coords[order], atol=1e-4)
        np.testing.assert_array_equal(a.edge, b.edge[order])
        np.testing.assert_array_equal(a.tomos, b.tomos[order])
        assert a.voxel_size == pytest.approx(b.voxel_size)


@pytest.mark.parametrize("box,bin_factor", [(16, 1), (8, 2)])
def test_copick_equals_mrc_and_relion5_star(tmp_path, project, box, bin_factor):
    arrays = {run: level_array(project, run, SPACING) for run in ("TS_01", "TS_02")}
    star, tomo_dir = write_reference(tmp_path, project, arrays, SPACING)
    args = ("-o", tmp_path / "c.h5", "--box", box, "--bin", bin_factor)
    res = cli("extract", "--copick", project, "--voxel-spacing", SPACING, *args)
    assert res.exit_code == 0, res.output
    ref = cli("extract", star, "--tomograms", tomo_dir, "-o", tmp_path / "r.h5", "--box", box,
              "--bin", bin_factor)
    assert ref.exit_code == 0, ref.output
    assert_same_pools(tmp_path / "c.h5", tmp_path / "r.h5")
    with open_pool(tmp_path / "c.h5") as pool:
        assert len(pool) == sum(len(v) for v in pick_sets().values())
        assert pool.edge.any()  # the near-edge pick was filled, as the MRC path fills it
        assert pool.voxel_size == SPACING * bin_factor


def test_planted_object_sits_at_the_box_centre(tmp_path, project):
    res = cli("extract", "--copick", project, "--voxel-spacing", SPACING, "--object", "ribosome",
              "-o", tmp_path / "c.h5", "--box", 16)
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "c.h5") as pool:
        i = int(pool.index_of([particle_id("TS_01", "ribosome", "alice", "1", 1)])[0])
        raw = level_array(project, "TS_01", SPACING)
        x, y, z = PLANTED["TS_01"][1]
        box = pool.read([i])[0]
        # z-scored, so compare the pattern: the L's centre and arms at box index 8 (+ arm offsets)
        want = raw[z - 8:z + 8, y - 8:y + 8, x - 8:x + 8]
        np.testing.assert_allclose(box, (want - want.mean()) / want.std(), rtol=1e-5, atol=1e-5)
        assert box[8, 8, 12] > box[8, 8, 11] > box[8, 8, 8]  # the x arm runs along the last axis
        np.testing.assert_allclose(pool.coords[i], (x, y, z))


def test_two_voxel_spacings_stored_and_pyramid_level(tmp_path, project):
    """--voxel-spacing 20: TS_01 stores 20 Å as its own tomogram, TS_02 only as pyramid level 1."""
    arrays = {"TS_01": level_array(project, "TS_01", 2 * SPACING),
              "TS_02": level_array(project, "TS_02", SPACING, level="1")}
    np.testing.assert_array_equal(arrays["TS_01"], block_average(make_volume("TS_01", 1)))
    star, tomo_dir = write_reference(tmp_path, project, arrays, 2 * SPACING)
    res = cli("extract", "--copick", project, "--voxel-spacing", 2 * SPACING, "-o", tmp_path / "c.h5",
              "--box", 8)
    assert res.exit_code == 0, res.output
    assert "VoxelSpacing20.000/wbp.zarr/0" in res.stdout and "VoxelSpacing10.000/wbp.zarr/1" in res.stdout
    ref = cli("extract", star, "--tomograms", tomo_dir, "-o", tmp_path / "r.h5", "--box", 8)
    assert ref.exit_code == 0, ref.output
    assert_same_pools(tmp_path / "c.h5", tmp_path / "r.h5")


def test_pool_records_run_pixels_and_copick_columns(tmp_path, project):
    res = cli("extract", "--copick", project, "--voxel-spacing", SPACING, "--user", "bob", "-o",
              tmp_path / "c.h5", "--box", 8)
    assert res.exit_code == 0, res.output
    positions = full_positions()
    with open_pool(tmp_path / "c.h5") as pool:
        assert set(pool.meta("copick_user")) == {"bob"}
        for i, pid in enumerate(pool.particle_ids):
            run = pool.tomos[i]
            obj, user, session, k = (pool.meta(c)[i] for c in
                                     ("copick_object", "copick_user", "copick_session", "copick_point"))
            assert pid == particle_id(run, obj, user, session, int(k))
            want = positions[(run, obj, user, session)][int(k)]
            np.testing.assert_allclose(pool.coords[i], want / SPACING, atol=1e-4)
            assert float(pool.meta("copick_x")[i]) == want[0]
            n = len(pick_sets()[(run, obj, user, session)])
            assert float(pool.meta("score")[i]) == pytest.approx(np.linspace(0.5, 0.9, n)[int(k)])
            assert pool.meta("instance_id")[i] == str(int(k) + 1)
        assert (pool.labels == -1).all()


def test_labels_from_object(tmp_path, project):
    res = cli("extract", "--copick", project, "--voxel-spacing", SPACING, "--labels-from-object",
              "-o", tmp_path / "c.h5", "--box", 8)
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "c.h5") as pool:
        assert pool.class_names == ["apoferritin", "ribosome"]
        names = [pool.class_names[k] for k in pool.labels]
        assert names == list(pool.meta("copick_object"))
        assert (pool.label_rounds == 0).all()
    # --append with one more object label keeps the classes already there
    extra = cli("extract", "--copick", project, "--voxel-spacing", SPACING, "--labels-from-object",
                "--append", "-o", tmp_path / "c.h5", "--box", 8)
    assert extra.exit_code == 1 and "already in the pool" in extra.stderr


def test_filters_and_default_tomo_type(tmp_path, project):
    res = cli("extract", "--copick", project, "--voxel-spacing", SPACING, "--object", "apoferritin",
              "--session", "7", "--tomo-type", "wbp", "-o", tmp_path / "c.h5", "--box", 8)
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "c.h5") as pool:
        assert set(pool.meta("copick_object")) == {"apoferritin"}
        assert len(pool) == 4


def test_plain_ome_zarr_tomograms_beside_mrc(tmp_path, project):
    """`--tomograms` accepts <tomo>.zarr directories (as the Data Portal serves them) and one .zarr."""
    from copick.util.ome import write_ome_zarr_3d

    arrays = {run: level_array(project, run, SPACING) for run in ("TS_01", "TS_02")}
    star, tomo_dir = write_reference(tmp_path, project, arrays, SPACING)
    zdir = tmp_path / "zarrs"
    zdir.mkdir()
    for run, data in arrays.items():
        write_ome_zarr_3d(str(zdir / f"{run}.zarr"), {SPACING: data}, chunk_size=(8, 16, 32))
    res = cli("extract", star, "--tomograms", zdir, "-o", tmp_path / "z.h5", "--box", 16)
    assert res.exit_code == 0, res.output
    ref = cli("extract", star, "--tomograms", tomo_dir, "-o", tmp_path / "r.h5", "--box", 16)
    assert ref.exit_code == 0, ref.output
    assert_same_pools(tmp_path / "z.h5", tmp_path / "r.h5")
    # one .zarr directory, picks without a tomogram column
    csv = tmp_path / "one.csv"
    csv.write_text("x,y,z\n20,30,14\n1,2,3\n")
    res = cli("extract", csv, "--tomograms", zdir / "TS_01.zarr", "-o", tmp_path / "one.h5", "--box", 8)
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "one.h5") as pool:
        assert list(pool.tomos) == ["TS_01", "TS_01"] and pool.voxel_size == SPACING
        assert pool.edge.tolist() == [False, True]  # rows follow the picks: (1, 2, 3) is the second


# ------------------------------------------------------------------------------------------
# Bad input: one line, exit 1, nothing written
# ------------------------------------------------------------------------------------------


def _copy(project: Path, tmp: Path) -> Path:
    dest = tmp / "proj"
    shutil.copytree(project.parent, dest)
    config = json.loads((dest / "copick.json").read_text())
    config["overlay_root"] = "local://" + str((dest / "overlay").resolve())
    (dest / "copick.json").write_text(json.dumps(config))
    return dest / "copick.json"


def _bad(kind: str, project: Path, tmp: Path) -> tuple[list, str]:
    vs = ["--voxel-spacing", SPACING]
    if kind == "config-not-json":
        path = tmp / "bad.json"
        path.write_text("{not json")
        return ["--copick", path, *vs], "bad.json: not a copick config"
    if kind == "config-invalid":
        path = tmp / "bad.json"
        path.write_text(json.dumps({"config_type": "filesystem", "overlay_root": "local:///nowhere"}))
        return ["--copick", path, *vs], "bad.json: not a valid copick config"
    if kind == "config-missing":
        return ["--copick", tmp / "none.json", *vs], "none.json: copick config not found"
    if kind == "unknown-object":
        return ["--copick", project, *vs, "--object", "ribosome,proteasome"], "unknown object 'proteasome'"
    if kind == "object-without-picks":
        return ["--copick", project, *vs, "--object", "membrane"], "object 'membrane' has no picks"
    if kind == "unknown-user":
        return ["--copick", project, *vs, "--user", "carol"], "no picks by user 'carol'"
    if kind == "unknown-session":
        return ["--copick", project, *vs, "--session", "99"], "no picks by session '99'"
    if kind == "missing-voxel-spacing":
        return ["--copick", project, "--voxel-spacing", 15], "no 'wbp' tomogram at 15 Å"
    if kind == "voxel-spacing-ambiguous":
        return ["--copick", project], "several voxel spacings (10 Å, 20 Å)"
    if kind == "missing-tomo-type":
        return ["--copick", project, *vs, "--tomo-type", "denoised"], "no tomogram of type 'denoised'"
    if kind == "run-without-tomogram":
        config = _copy(project, tmp)
        root = copick.from_file(str(config))
        root.new_run("TS_03").new_picks("ribosome", session_id="1", user_id="alice").from_numpy(
            np.array([[100.0, 100.0, 100.0]]))
        return ["--copick", config, *vs], "run 'TS_03' has picks but no 'wbp' tomogram"
    if kind == "copick-with-picks-file":
        return ["--copick", project, "picks.star"], "PICKS: not used with --copick"
    if kind == "copick-option-without-copick":
        return ["picks.star", "-t", tmp, "--user", "alice"], "--user: only with --copick"
    raise AssertionError(kind)


BAD = ["config-not-json", "config-invalid", "config-missing", "unknown-object", "object-without-picks",
       "unknown-user", "unknown-session", "missing-voxel-spacing", "voxel-spacing-ambiguous",
       "missing-tomo-type", "run-without-tomogram", "copick-with-picks-file", "copick-option-without-copick"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_one_line_exit_1_nothing_written(kind, tmp_path, project):
    args, culprit = _bad(kind, project, tmp_path)
    res = cli("extract", *args, "-o", tmp_path / "pool.h5", "--box", 8)
    # options that do not go together are a usage error (exit 2); the rest are the project's (exit 1)
    assert_one_error(res, culprit, code=2 if kind.startswith("copick-") else 1)
    assert not (tmp_path / "pool.h5").exists()


def test_without_copick_installed_every_copick_option_says_how_to_install(tmp_path, project, monkeypatch):
    monkeypatch.setitem(sys.modules, "copick", None)  # `import copick` now raises ImportError
    res = cli("extract", "--copick", project, "-o", tmp_path / "pool.h5")
    assert_one_error(res, 'pip install "cryoal[copick]"')
    res = cli("export-copick", tmp_path / "pool.h5", project)
    assert_one_error(res, 'pip install "cryoal[copick]"')
    monkeypatch.setitem(sys.modules, "zarr", None)
    (tmp_path / "t.csv").write_text("x,y,z\n1,2,3\n")
    (tmp_path / "T.zarr").mkdir()
    res = cli("extract", tmp_path / "t.csv", "-t", tmp_path / "T.zarr", "-o", tmp_path / "pool.h5")
    assert_one_error(res, 'pip install "cryoal[copick]"')
    assert not (tmp_path / "pool.h5").exists()
