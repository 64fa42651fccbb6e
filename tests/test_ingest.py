"""`cryoal ingest`: every input form, crop/pad/z-score values, append, bad input, atomicity, flat memory."""

from __future__ import annotations

import hashlib
import math
import tracemalloc
from pathlib import Path

import foreign_files as ff
import numpy as np
import pytest
from typer.testing import CliRunner

import cryoal.ingest as ingest_mod
from cryoal.cli import app
from cryoal.errors import CryoalError, InputError
from cryoal.ingest import IngestOptions, ingest
from cryoal.io.pool import open_pool


def run(*args) -> object:
    return CliRunner().invoke(app, ["ingest", *map(str, args)])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ref_zscore(vol: np.ndarray) -> np.ndarray:
    v = np.asarray(vol, dtype=np.float64)
    return (v - v.mean()) / v.std()


def ref_fit(vol: np.ndarray, box: int) -> np.ndarray:
    """Slow reference for crop -> z-score -> pad: per-axis index arithmetic, per voxel copy."""
    n = vol.shape
    lo = [max(0, k // 2 - box // 2) for k in n]  # crop start on axes longer than the box
    kept = vol[
        lo[0] : lo[0] + min(box, n[0]), lo[1] : lo[1] + min(box, n[1]), lo[2] : lo[2] + min(box, n[2])
    ]
    z = ref_zscore(kept)
    out = np.zeros((box, box, box))
    off = [box // 2 - k // 2 if k < box else 0 for k in kept.shape]  # kept index k//2 -> box//2
    for i in range(kept.shape[0]):
        for j in range(kept.shape[1]):
            for k in range(kept.shape[2]):
                out[i + off[0], j + off[1], k + off[2]] = z[i, j, k]
    return out


def write_vols(directory: Path, n: int, box: int = 8, seed: int = 0, voxel: float = 10.0) -> list[np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    vols = []
    for i in range(n):
        v = ff.smooth_volume((box, box, box), seed=seed + i).astype(np.float32)
        ff.plain_volume(directory / f"p{i:03d}.mrc", v, voxel_size=voxel)
        vols.append(v)
    return vols


def assert_one_error(res, *culprits: str, code: int = 1) -> None:
    """One `error:` line naming every culprit, exit `code` (2 for a usage error)."""
    assert res.exit_code == code, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    for c in culprits:
        assert c in lines[0], (c, lines[0])
    assert "Traceback" not in res.output


def no_temp(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if ".tmp-" in p.name]


# ------------------------------------------------------------------------------------------
# Input forms
# ------------------------------------------------------------------------------------------


def test_directory_ingest_values_ids_and_sources(tmp_path):
    vols = write_vols(tmp_path / "data" / "sub", 5)
    (tmp_path / "data" / "notes.txt").write_text("not a volume")  # ignored: not an MRC suffix
    (tmp_path / "data" / ".hidden.mrc").write_bytes(b"junk")  # ignored: hidden
    res = run(tmp_path / "data", "-o", tmp_path / "pool.h5")
    assert res.exit_code == 0, res.output
    assert "added 5 particles (8x8x8, voxel size 10 Å)" in res.stdout
    with open_pool(tmp_path / "pool.h5") as p:
        assert list(p.particle_ids) == [f"p{i:03d}" for i in range(5)]
        assert p.sources[2] == str((tmp_path / "data" / "sub" / "p002.mrc").resolve())
        assert p.voxel_size == 10.0 and p.box == 8 and p.class_names == []
        assert list(p.labels) == [-1] * 5 and list(p.label_rounds) == [-1] * 5
        stored = p.read(range(5))
    for v, s in zip(vols, stored, strict=True):
        np.testing.assert_allclose(s, ref_zscore(v), atol=2e-5)
        assert abs(float(s.mean())) < 1e-5 and float(s.std()) == pytest.approx(1.0, abs=1e-5)


def test_relion_star_manifest_with_labels_tomos_coords_and_meta(tmp_path):
    vols = write_vols(tmp_path / "Subtomograms", 4)
    star = tmp_path / "particles.star"
    classes = ["2", "1", '""', "10"]  # row 3 has an empty class: unlabelled
    rows = "\n".join(
        f"Subtomograms/p{i:03d}.mrc  TS_{i % 2}  {10 * i}.5  {20 * i}  {30 * i}  {classes[i]}  x{i}"
        for i in range(4)
    )
    star.write_text(
        "data_particles\nloop_\n_rlnImageName\n_rlnTomoName\n_rlnCoordinateX\n_rlnCoordinateY\n"
        "_rlnCoordinateZ\n_rlnClassNumber\n_rlnExtra\n" + rows + "\n"
    )
    res = run(star, "-o", tmp_path / "pool.h5")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "pool.h5") as p:
        assert list(p.particle_ids) == ["p000", "p001", "p002", "p003"]
        assert p.class_names == ["1", "2", "10"]  # numeric class numbers, sorted as numbers
        assert list(p.labels) == [1, 0, -1, 2]
        assert list(p.label_rounds) == [0, 0, -1, 0]
        assert list(p.tomos) == ["TS_0", "TS_1", "TS_0", "TS_1"]
        np.testing.assert_array_equal(p.coords[3], [30.5, 60, 90])
        assert set(p.meta_columns) == {
            "rlnImageName", "rlnTomoName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ",
            "rlnClassNumber", "rlnExtra",
        }
        assert list(p.meta("rlnExtra")) == ["x0", "x1", "x2", "x3"]
        assert p.meta("rlnCoordinateX")[1] == "10.5"  # verbatim text
        assert p.meta("rlnImageName")[0] == "Subtomograms/p000.mrc"
        np.testing.assert_allclose(p.read([2])[0], ref_zscore(vols[2]), atol=2e-5)


def test_csv_manifest_with_ids_and_named_labels(tmp_path):
    vols = write_vols(tmp_path / "d", 3)
    man = tmp_path / "list.csv"
    man.write_text(
        "path,particle_id,label,tomo,x,y,z\n"
        "d/p000.mrc,ribo_1,ribosome,t1,1,2,3\n"
        "d/p001.mrc,prot_1,proteasome,t1,4,5,6\n"
        f"{(tmp_path / 'd' / 'p002.mrc').resolve()},ribo_2,ribosome,t2,7,8,9\n"  # absolute path
    )
    res = run(man, "-o", tmp_path / "pool.h5")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "pool.h5") as p:
        assert list(p.particle_ids) == ["ribo_1", "prot_1", "ribo_2"]
        assert p.class_names == ["proteasome", "ribosome"]
        assert list(p.labels) == [1, 0, 1]
        np.testing.assert_array_equal(p.coords[:, 0], [1, 4, 7])
        np.testing.assert_allclose(p.read([1])[0], ref_zscore(vols[1]), atol=2e-5)


def test_custom_id_and_label_columns(tmp_path):
    write_vols(tmp_path / "d", 2)
    man = tmp_path / "m.csv"
    man.write_text("path,myid,cls\nd/p000.mrc,A,k1\nd/p001.mrc,B,k2\n")
    res = run(man, "-o", tmp_path / "pool.h5", "--id-column", "myid", "--label-column", "cls")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "pool.h5") as p:
        assert list(p.particle_ids) == ["A", "B"] and p.class_names == ["k1", "k2"]
    assert_one_error(run(man, "-o", tmp_path / "p2.h5", "--id-column", "nope"), "m.csv", "nope")


def test_relion_stack_references_and_whole_stacks(tmp_path):
    fx = ff.volume_stack(tmp_path, n=3, box=8)
    star = tmp_path / "stack.star"
    star.write_text("data_particles\nloop_\n_rlnImageName\n3@subtomos.mrcs\n1@subtomos.mrcs\n")
    res = run(star, "-o", tmp_path / "a.h5")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "a.h5") as p:
        assert list(p.particle_ids) == ["subtomos#3", "subtomos#1"]
        assert p.sources[0].endswith("subtomos.mrcs#3")
        np.testing.assert_allclose(p.read([0])[0], ref_zscore(fx.expected[2]), atol=2e-5)
        np.testing.assert_allclose(p.read([1])[0], ref_zscore(fx.expected[0]), atol=2e-5)
    res = run(fx.path, "-o", tmp_path / "b.h5")  # a stack file named directly: every volume
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "b.h5") as p:
        assert list(p.particle_ids) == ["subtomos#1", "subtomos#2", "subtomos#3"]
    star.write_text("data_particles\nloop_\n_rlnImageName\n4@subtomos.mrcs\n")
    assert_one_error(run(star, "-o", tmp_path / "c.h5"), "stack.star, row 1", "item 4", "holds 3")
    star.write_text("data_particles\nloop_\n_rlnImageName\n0@subtomos.mrcs\n")
    assert_one_error(run(star, "-o", tmp_path / "c.h5"), "stack index 0", "counts from 1")
    cubes = ff.cube_stack_no_ispg(tmp_path, n=2, box=8)
    res = run(cubes.path, "-o", tmp_path / "d.h5", "--stack")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "d.h5") as p:
        assert list(p.particle_ids) == ["cubes#1", "cubes#2"]


def test_globs_recursive_and_duplicates_read_once(tmp_path):
    write_vols(tmp_path / "a", 2)
    write_vols(tmp_path / "b" / "deep", 2, seed=10)
    for f in (tmp_path / "b" / "deep").iterdir():
        f.rename(f.with_name("q" + f.name))
    res = run(str(tmp_path / "**" / "*.mrc"), tmp_path / "a", "-o", tmp_path / "pool.h5")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "pool.h5") as p:
        assert sorted(p.particle_ids) == ["p000", "p001", "qp000", "qp001"]
    assert_one_error(run(str(tmp_path / "*.nothing"), "-o", tmp_path / "x.h5"), "no files match")


def test_foreign_formats_into_one_pool_with_box(tmp_path):
    d = tmp_path / "foreign"
    d.mkdir()
    fixtures = ff.all_volume_fixtures(d)
    # the .map, .map.gz and .map.bz2 share a stem: as a directory they clash, so name them in a manifest
    assert_one_error(run(d, "-o", tmp_path / "pool.h5", "--box", "12"), "duplicate particle id 'emd_12345'")
    manifest = tmp_path / "all.csv"
    manifest.write_text("path,particle_id\n" + "".join(f"{fx.path},{fx.path.name}\n" for fx in fixtures))
    res = run(manifest, "-o", tmp_path / "pool.h5", "--box", "12", "--voxel-size", "4")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "pool.h5") as p:
        assert len(p) == len(fixtures) and p.shape == (12, 12, 12) and p.voxel_size == 4.0
        by_source = {s: i for i, s in enumerate(p.sources)}
        for fx in fixtures:
            row = by_source[str(fx.path.resolve())]
            np.testing.assert_allclose(p.read([row])[0], ref_fit(fx.expected, 12), atol=3e-5)


def test_crop_and_pad_are_centred_like_a_pick(tmp_path):
    # a volume with one bright voxel at its centre index n//2 keeps it at box index b//2
    for n, b in ((10, 12), (14, 12), (9, 8), (7, 12)):
        vol = np.random.default_rng(n).standard_normal((n, n, n)).astype(np.float32) * 0.1
        vol[n // 2, n // 2, n // 2] = 50.0
        path = ff.plain_volume(tmp_path / f"c{n}_{b}.mrc", vol)
        out = tmp_path / f"c{n}_{b}.h5"
        ingest([str(path)], out, IngestOptions(box=b))
        with open_pool(out) as p:
            stored = p.read([0])[0]
        assert np.unravel_index(np.argmax(stored), stored.shape) == (b // 2,) * 3
        np.testing.assert_allclose(stored, ref_fit(vol, b), atol=3e-5)
        if n < b:  # padding is 0 (the mean) and the kept voxels keep mean 0, std 1
            core = stored[b // 2 - n // 2 : b // 2 - n // 2 + n][:, b // 2 - n // 2 : b // 2 - n // 2 + n]
            core = core[:, :, b // 2 - n // 2 : b // 2 - n // 2 + n]
            assert float(core.std()) == pytest.approx(1.0, abs=1e-5)
            assert stored[0, 0, 0] == 0.0


def test_image_mode(tmp_path):
    fei = ff.fei_micrograph(tmp_path)
    ts = ff.serialem_tilt_series(tmp_path)
    res = run(fei.path, ts.path, "-o", tmp_path / "img.h5", "--mode", "image", "--box", "32")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "img.h5") as p:
        assert p.mode == "image" and p.shape == (32, 32) and len(p) == 6
        assert list(p.particle_ids)[:2] == ["FoilHole_1234_Data_5678", "TS_01#1"]
        want = ref_zscore(fei.expected[0][48 // 2 - 16 : 48 // 2 + 16, 64 // 2 - 16 : 64 // 2 + 16])
        np.testing.assert_allclose(p.read([0])[0], want, atol=3e-5)
    res = run(fei.path, "-o", tmp_path / "s.h5", "--mode", "volumes")
    assert_one_error(res, "--mode must be one of subtomogram, image, segmentation (got 'volumes')", code=2)
    assert not (tmp_path / "s.h5").exists()


# ------------------------------------------------------------------------------------------
# Append, overwrite, voxel size
# ------------------------------------------------------------------------------------------


def test_append_and_duplicate_ids(tmp_path):
    write_vols(tmp_path / "a", 3)
    pool = tmp_path / "pool.h5"
    assert run(tmp_path / "a", "-o", pool).exit_code == 0
    more = write_vols(tmp_path / "b", 2, seed=50)
    for f in (tmp_path / "b").iterdir():
        f.rename(f.with_name("new_" + f.name))
    res = run(tmp_path / "b", "-o", pool, "--append")
    assert res.exit_code == 0, res.output
    assert "pool holds 5" in res.stdout
    with open_pool(pool) as p:
        assert list(p.particle_ids)[3:] == ["new_p000", "new_p001"]
        np.testing.assert_allclose(p.read([4])[0], ref_zscore(more[1]), atol=2e-5)
    before = digest(pool)
    assert_one_error(run(tmp_path / "a", "-o", pool, "--append"), "p000", "already in")
    assert digest(pool) == before and no_temp(tmp_path)
    # two files with one stem in one run
    write_vols(tmp_path / "c" / "x", 1)
    write_vols(tmp_path / "c" / "y", 1)
    assert_one_error(run(tmp_path / "c", "-o", tmp_path / "dup.h5"), "duplicate particle id 'p000'")
    assert not (tmp_path / "dup.h5").exists()
    # --box must agree with the pool when appending
    assert_one_error(run(tmp_path / "b", "-o", pool, "--append", "--box", "10"), "8x8x8", "10x10x10")


def test_existing_pool_needs_append_or_overwrite(tmp_path):
    write_vols(tmp_path / "a", 2)
    pool = tmp_path / "pool.h5"
    assert run(tmp_path / "a", "-o", pool).exit_code == 0
    before = digest(pool)
    assert_one_error(run(tmp_path / "a", "-o", pool), "already exists", "--append")
    assert digest(pool) == before
    res = run(tmp_path / "a", "-o", pool, "--overwrite", "--box", "6")
    assert res.exit_code == 0, res.output
    with open_pool(pool) as p:
        assert p.shape == (6, 6, 6)


def test_voxel_size_warning_and_override(tmp_path):
    write_vols(tmp_path / "a", 2, voxel=10.0)
    write_vols(tmp_path / "b", 1, seed=9, voxel=12.0)
    (tmp_path / "b" / "p000.mrc").rename(tmp_path / "b" / "other.mrc")
    res = run(tmp_path / "a", tmp_path / "b", "-o", tmp_path / "p.h5")
    assert res.exit_code == 0, res.output
    assert "warning: voxel sizes differ" in res.stderr and "12 Å" in res.stderr
    with open_pool(tmp_path / "p.h5") as p:
        assert p.voxel_size == 10.0
    res = run(tmp_path / "a", "-o", tmp_path / "q.h5", "--voxel-size", "3.3")
    with open_pool(tmp_path / "q.h5") as p:
        assert p.voxel_size == pytest.approx(3.3)


def test_shape_mismatch_without_box(tmp_path):
    write_vols(tmp_path / "d", 2, box=8)
    ff.plain_volume(tmp_path / "d" / "z_big.mrc", ff.smooth_volume((10, 10, 10)).astype(np.float32))
    assert_one_error(run(tmp_path / "d", "-o", tmp_path / "p.h5"), "z_big.mrc", "10x10x10", "--box")
    assert not (tmp_path / "p.h5").exists() and no_temp(tmp_path)


# ------------------------------------------------------------------------------------------
# Bad input: one line naming the culprit, exit 1, nothing written, old pool unchanged
# ------------------------------------------------------------------------------------------

BAD = {
    "truncated": (ff.truncated, "truncated MRC file"),
    "not_mrc": (ff.not_mrc_text, "not an MRC file"),
    "png": (ff.png_file, "not an MRC file"),
    "image_2d": (lambda d: ff.fei_micrograph(d).path, "2D image"),
    "nan": (ff.nan_volume, "1 of 512 voxels are NaN or infinite"),
    "inf": (lambda d: ff.nan_volume(d, "inf.mrc", math.inf), "NaN or infinite"),
    "constant": (ff.constant_volume, "constant volume"),
    "complex": (ff.complex_map, "mode 4"),
    "truncated_gzip": (ff.truncated_gzip, "truncated gzip"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_fails_whole_run_and_skip_bad_skips_it(tmp_path, case):
    builder, message = BAD[case]
    data = tmp_path / "data"
    write_vols(data, 3)
    bad = builder(data)
    pool = tmp_path / "pool.h5"
    # new pool: nothing created
    assert_one_error(run(data, "-o", pool), str(bad), message)
    assert not pool.exists() and no_temp(tmp_path)
    # existing pool: byte-for-byte unchanged
    good = tmp_path / "good"
    write_vols(good, 2, seed=70)
    for f in good.iterdir():
        f.rename(f.with_name("g" + f.name))
    assert run(good, "-o", pool).exit_code == 0
    before = digest(pool)
    assert_one_error(run(data, "-o", pool, "--append"), str(bad), message)
    assert digest(pool) == before and no_temp(tmp_path)
    # --skip-bad: the bad file is reported by name, the good ones go in
    res = run(data, "-o", pool, "--append", "--skip-bad")
    assert res.exit_code == 0, res.output
    assert f"skipped: {bad}" in res.stderr and message in res.stderr
    assert "skipped 1 bad input(s)" in res.stderr and "skipped 1 bad" in res.stdout
    with open_pool(pool) as p:
        assert len(p) == 5
        assert sorted(p.particle_ids)[-3:] == ["p000", "p001", "p002"]


def test_manifest_naming_missing_files(tmp_path):
    write_vols(tmp_path / "d", 2)
    man = tmp_path / "parts.star"
    man.write_text("data_particles\nloop_\n_rlnImageName\nd/p000.mrc\nd/gone.mrc\nd/p001.mrc\n")
    assert_one_error(run(man, "-o", tmp_path / "p.h5"), "parts.star, row 2", "file not found", "gone.mrc")
    assert not (tmp_path / "p.h5").exists()
    res = run(man, "-o", tmp_path / "p.h5", "--skip-bad")
    assert res.exit_code == 0, res.output
    assert "gone.mrc" in res.stderr
    with open_pool(tmp_path / "p.h5") as p:
        assert list(p.particle_ids) == ["p000", "p001"]


def test_manifest_naming_missing_files_leaves_existing_pool_unchanged(tmp_path):
    write_vols(tmp_path / "d", 2)
    pool = tmp_path / "pool.h5"
    assert run(tmp_path / "d" / "p000.mrc", "-o", pool).exit_code == 0
    before = digest(pool)
    man = tmp_path / "more.csv"
    man.write_text("path,particle_id\nd/p001.mrc,q1\nd/missing.mrc,q2\n")
    assert_one_error(run(man, "-o", pool, "--append"), "more.csv, row 2", "missing.mrc")
    assert digest(pool) == before and no_temp(tmp_path)


def test_append_to_a_bad_pool_changes_nothing(tmp_path):
    import h5py

    write_vols(tmp_path / "d", 2)
    pool = tmp_path / "pool.h5"
    assert run(tmp_path / "d" / "p000.mrc", "-o", pool).exit_code == 0
    with h5py.File(pool, "r+") as h5:  # a pool written by another cryoal format version
        h5.attrs["format_version"] = 2
    before = digest(pool)
    assert_one_error(run(tmp_path / "d" / "p001.mrc", "-o", pool, "--append"), str(pool),
                     "pool format version 2; this cryoal reads version 1")
    assert digest(pool) == before and no_temp(tmp_path)
    text = tmp_path / "notes.h5"
    text.write_text("not a pool\n")
    assert_one_error(run(tmp_path / "d", "-o", text, "--append"), str(text), "not an HDF5 pool file")
    assert text.read_text() == "not a pool\n"
    assert_one_error(run(tmp_path / "d", "-o", tmp_path / "none.h5", "--append"), "none.h5", "not found")
    assert not (tmp_path / "none.h5").exists()


def test_bad_manifests(tmp_path):
    write_vols(tmp_path / "d", 1)
    no_path = tmp_path / "nopath.csv"
    no_path.write_text("file,label\nd/p000.mrc,a\n")
    assert_one_error(run(no_path, "-o", tmp_path / "p.h5"), "nopath.csv", "no rlnImageName or path column")
    empty_id = tmp_path / "emptyid.csv"
    empty_id.write_text("path,particle_id\nd/p000.mrc,\n")
    assert_one_error(run(empty_id, "-o", tmp_path / "p.h5"), "emptyid.csv, row 1", "empty particle id")
    bad_xyz = tmp_path / "xyz.csv"
    bad_xyz.write_text("path,x,y,z\nd/p000.mrc,1,two,3\n")
    assert_one_error(run(bad_xyz, "-o", tmp_path / "p.h5"), "xyz.csv, row 1", "coordinates")
    syntax = tmp_path / "syntax.star"
    syntax.write_text("data_particles\nloop_\n_rlnImageName\n_rlnTomoName\nd/p000.mrc\n")
    assert_one_error(run(syntax, "-o", tmp_path / "p.h5"), "syntax.star:5")
    assert_one_error(run(tmp_path / "missing_dir", "-o", tmp_path / "p.h5"), "missing_dir: file not found")
    (tmp_path / "emptydir").mkdir()
    assert_one_error(run(tmp_path / "emptydir", "-o", tmp_path / "p.h5"), "emptydir: no MRC files")
    assert not (tmp_path / "p.h5").exists()


def test_output_in_missing_directory(tmp_path):
    write_vols(tmp_path / "d", 1)
    assert_one_error(run(tmp_path / "d", "-o", tmp_path / "no" / "pool.h5"), "no/pool.h5", "does not exist")
    assert not (tmp_path / "no").exists()


def test_all_bad_with_skip_bad_writes_nothing(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    ff.truncated(d)
    ff.not_mrc_text(d)
    res = run(d, "-o", tmp_path / "p.h5", "--skip-bad")
    assert res.exit_code == 1
    assert "no particles to write (2 bad inputs skipped)" in res.stderr
    assert not (tmp_path / "p.h5").exists()


# ------------------------------------------------------------------------------------------
# Interruption and memory
# ------------------------------------------------------------------------------------------


def _interrupt_after(monkeypatch, n: int, exc: BaseException) -> None:
    real = ingest_mod.fit_box
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "fit_box", flaky)


def test_ctrl_c_mid_stream_leaves_old_pool_unchanged(tmp_path, monkeypatch):
    write_vols(tmp_path / "a", 3)
    pool = tmp_path / "pool.h5"
    assert run(tmp_path / "a", "-o", pool).exit_code == 0
    before = digest(pool)
    more = tmp_path / "b"
    write_vols(more, 40, seed=100)
    for f in more.iterdir():
        f.rename(f.with_name("m" + f.name))
    # with a tiny batch, several batches are already in the temporary copy when Ctrl-C comes
    _interrupt_after(monkeypatch, 25, KeyboardInterrupt())
    res = run(more, "-o", pool, "--append", "--batch-size", "4")
    assert res.exit_code == 130
    assert "interrupted" in res.stderr and "Traceback" not in res.output
    assert digest(pool) == before and no_temp(tmp_path)
    with open_pool(pool) as p:
        assert len(p) == 3
    # and for a new pool, nothing appears
    _interrupt_after(monkeypatch, 10, KeyboardInterrupt())
    assert run(more, "-o", tmp_path / "new.h5", "--batch-size", "4").exit_code == 130
    assert not (tmp_path / "new.h5").exists() and no_temp(tmp_path)


def test_exception_mid_stream_via_api(tmp_path, monkeypatch):
    write_vols(tmp_path / "a", 12)
    _interrupt_after(monkeypatch, 7, RuntimeError("disk full"))
    with pytest.raises(RuntimeError):
        ingest([str(tmp_path / "a")], tmp_path / "p.h5", IngestOptions(batch_size=3))
    assert not (tmp_path / "p.h5").exists() and no_temp(tmp_path)


def _peak_bytes(directory: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        ingest([str(directory)], out, IngestOptions(batch_size=16))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_number_of_files(tmp_path):
    box = 16
    write_vols(tmp_path / "small", 50, box=box)
    write_vols(tmp_path / "large", 500, box=box)
    small = _peak_bytes(tmp_path / "small", tmp_path / "s.h5")
    large = _peak_bytes(tmp_path / "large", tmp_path / "l.h5")
    data_growth = 450 * box**3 * 4  # 7.4 MB more voxel data in the large run
    # bookkeeping (ids, paths) grows a little; voxel data must not: well under a tenth of it
    assert large - small < data_growth / 10, (small, large)
    with open_pool(tmp_path / "l.h5") as p:
        assert len(p) == 500


def test_api_reports(tmp_path):
    write_vols(tmp_path / "a", 2)
    ff.truncated(tmp_path / "a")
    seen = []
    opts = IngestOptions(skip_bad=True)
    result = ingest([str(tmp_path / "a")], tmp_path / "p.h5", opts, on_bad=seen.append)
    assert result.n_added == 2 and result.n_total == 2 and result.shape == (8, 8, 8)
    assert len(result.bad) == 1 and seen == result.bad and "truncated.mrc" in seen[0]
    with pytest.raises(CryoalError, match="--box 0"):
        ingest([str(tmp_path / "a")], tmp_path / "q.h5", IngestOptions(box=0))
    with pytest.raises(InputError, match="no input files"):
        ingest([], tmp_path / "q.h5")


def test_help_shows_an_example():
    res = CliRunner().invoke(app, ["ingest", "--help"])
    assert res.exit_code == 0 and "Example: cryoal ingest" in res.stdout


# ------------------------------------------------------------------------------------------
# cryoal.io.preprocess against slow references
# ------------------------------------------------------------------------------------------


def test_zscore_matches_float64_reference():
    from cryoal.io.preprocess import zscore

    rng = np.random.default_rng(3)
    for vol in (
        rng.standard_normal((12, 10, 8)).astype(np.float32) * 0.01 + 1000.0,  # big offset, small spread
        rng.integers(0, 65535, size=(8, 8, 8)).astype(np.uint16),  # integer input
        (rng.standard_normal((6, 6, 6)) * 1e25).astype(np.float32),  # float32 sums overflow
    ):
        got = zscore(vol)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref_zscore(vol), atol=2e-4 if vol.dtype == np.float32 else 2e-5)
    out = np.empty((4, 4, 4), np.float32)
    vol = rng.standard_normal((4, 4, 4))
    assert zscore(vol, out=out) is out


def test_zscore_matches_naive_formula_on_random_volumes():
    """Many shapes, offsets and scales, contiguous or cropped views: the naive float64 formula
    (x - mean) / std within float32 rounding."""
    from cryoal.io.preprocess import zscore

    rng = np.random.default_rng(11)
    for k in range(40):
        shape = tuple(int(n) for n in rng.integers(2, 20, size=3))
        vol = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3) + rng.uniform(-1e3, 1e3))
        vol = vol.astype(np.float32)
        if k % 3 == 0:
            vol = vol[:, 1:, ::2] if min(shape[1:]) > 3 else vol  # a strided view, as a crop gives
        got = zscore(vol, f"v{k}")
        v = vol.astype(np.float64)
        naive = np.empty(v.shape)
        n = v.size
        mean = sum(float(x) for x in v.ravel()) / n  # per-voxel loop, no numpy reductions
        std = math.sqrt(sum((float(x) - mean) ** 2 for x in v.ravel()) / n)
        naive[...] = (v - mean) / std
        np.testing.assert_allclose(got, naive, rtol=0, atol=5e-6)
        assert abs(float(got.astype(np.float64).mean())) < 1e-5
        assert float(got.astype(np.float64).std()) == pytest.approx(1.0, abs=1e-5)


def test_zscore_refuses_constant_and_non_finite():
    from cryoal.io.preprocess import zscore

    for value in (0.0, 3.0, 0.1, -7.25, 1e30):
        with pytest.raises(InputError, match="v.mrc: constant volume"):
            zscore(np.full((9, 9, 9), value, np.float32), "v.mrc")
    for bad in (math.nan, math.inf, -math.inf):
        vol = np.ones((5, 5, 5), np.float32)
        vol[0, 0, 0] = 2.0
        vol[4, 1, 2] = bad
        with pytest.raises(InputError, match="v.mrc: 1 of 125 voxels are NaN or infinite"):
            zscore(vol, "v.mrc")
    almost = np.full((4, 4, 4), 5.0, np.float32)
    almost[1, 1, 1] = np.nextafter(np.float32(5.0), np.float32(6.0))  # not constant: one ulp apart
    assert np.isfinite(zscore(almost)).all()


def _pad_region(shape, target):
    return tuple(slice(b // 2 - n // 2, b // 2 - n // 2 + n) for n, b in zip(shape, target, strict=True))


def test_crop_pad_against_index_loops():
    from cryoal.io.preprocess import crop_or_pad, fit_box

    rng = np.random.default_rng(5)
    vol = rng.standard_normal((7, 12, 9)).astype(np.float32)  # z padded, y cropped, x padded or cropped
    for target in ((10, 8, 9), (7, 12, 9), (4, 13, 6)):
        got = crop_or_pad(vol, target, fill=-1.0)
        want = np.full(target, -1.0, np.float32)
        for i in range(target[0]):
            for j in range(target[1]):
                for k in range(target[2]):
                    # box index b//2 holds source index n//2 on every axis
                    src = [
                        idx - b // 2 + n // 2 for idx, b, n in zip((i, j, k), target, vol.shape, strict=True)
                    ]
                    if all(0 <= s < n for s, n in zip(src, vol.shape, strict=True)):
                        want[i, j, k] = vol[tuple(src)]
        np.testing.assert_array_equal(got, want)
        fitted = fit_box(vol, target)
        kept = crop_or_pad(vol, tuple(min(a, b) for a, b in zip(vol.shape, target, strict=True)))
        ref = ref_zscore(kept)
        np.testing.assert_allclose(fitted[_pad_region(kept.shape, target)], ref, atol=3e-5)
        assert np.count_nonzero(fitted) == kept.size  # the padding is exactly 0
    nan_outside = vol.copy()
    nan_outside[0, 0, 0] = math.nan  # cropped away, but the file is still damaged
    with pytest.raises(InputError, match="NaN or infinite"):
        fit_box(nan_outside, (7, 4, 9), "x")


def test_an_image_given_to_subtomogram_mode_suggests_mode_image(tmp_path):
    from PIL import Image

    png = tmp_path / "x.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(png)
    res = run(png, "-o", tmp_path / "pool.h5")
    assert_one_error(res, "x.png: not an MRC file", "--mode image")
    assert not (tmp_path / "pool.h5").exists()
    mrc_like = tmp_path / "y.mrc"  # a bad MRC file is not sent to image mode
    mrc_like.write_bytes(b"\0" * 100)
    res = run(mrc_like, "-o", tmp_path / "pool.h5")
    assert_one_error(res, "y.mrc: not an MRC file")
    assert "--mode" not in res.stderr


@pytest.mark.parametrize("option", ["--output", "--out", "-o"])
def test_output_takes_every_spelling(tmp_path, option):
    d = tmp_path / "in"
    d.mkdir()
    write_vols(d, 2)
    res = run(d, option, tmp_path / "pool.h5")
    assert res.exit_code == 0, res.output
    with open_pool(tmp_path / "pool.h5") as p:
        assert len(p) == 2
