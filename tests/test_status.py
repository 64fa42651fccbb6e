"""`cryoal status`, and the simulate -> ingest -> label -> status round trip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import foreign_files as ff
import h5py
import mrcfile
import numpy as np
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.io.pool import PoolWriter, open_pool


def cli(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def make_pool(path: Path) -> Path:
    vols = np.random.default_rng(0).standard_normal((6, 4, 4, 4)).astype(np.float32)
    ids = [f"p{i}" for i in range(6)]
    sources = ["/a/x.mrcs#1", "/a/x.mrcs#2", "/a/y.mrc", "/b/z.mrc", "/b/w.mrc", "/c/v.mrc"]
    with PoolWriter(path, shape=(4, 4, 4), voxel_size=float("nan"), class_names=["ribo", "prot"]) as w:
        w.add(vols, ids, sources, labels=[0, 1, 0, -1, -1, -1], tomos=["T1", "T1", "T2", "", "", "T3"])
    with h5py.File(path, "r+") as h5:  # a later label import: round 1 for one particle
        h5["label"][3] = 1
        h5["label_round"][3] = 1
    return path


def test_status_json(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    res = cli("status", pool, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)  # one strict JSON object (NaN voxel size is null)
    assert info["total"] == 6 and info["labelled"] == 4 and info["unlabelled"] == 2
    assert info["per_class"] == {"ribo": 2, "prot": 2}
    assert info["box"] == 4 and info["shape"] == [4, 4, 4] and info["mode"] == "subtomogram"
    assert info["voxel_size"] is None
    assert info["label_rounds"] == {"0": 3, "1": 1}
    assert info["n_source_files"] == 5  # the two items of x.mrcs count as one file
    assert info["n_source_dirs"] == 3 and info["n_tomograms"] == 3
    assert info["format_version"] == 1 and info["file_bytes"] == pool.stat().st_size


def test_status_table(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    res = cli("status", pool)
    assert res.exit_code == 0, res.output
    out = res.stdout
    for text in ("particles", "6", "ribo", "prot", "unlabelled", "label rounds", "0: 3, 1: 1",
                 "4 x 4 x 4", "unknown", "5 in 3 directories", "tomograms"):
        assert text in out, text
    assert res.stderr == ""


def test_status_bad_pools(tmp_path):
    for path, message in (
        (tmp_path / "missing.h5", "pool file not found"),
        (ff.not_mrc_text(tmp_path), "not an HDF5 pool file"),
    ):
        res = cli("status", path)
        assert res.exit_code == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and message in lines[0]
    pool = make_pool(tmp_path / "pool.h5")
    with h5py.File(pool, "r+") as h5:
        h5.attrs["format_version"] = 99
    res = cli("status", pool, "--json")
    assert res.exit_code == 1 and res.stdout == ""
    assert res.stderr.strip() == f"error: {pool}: pool format version 99; this cryoal reads version 1"


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_round_trip_simulate_ingest_label_status(tmp_path):
    sim = tmp_path / "sim"
    res = cli("simulate", sim, "--classes", "3", "--per-class", "5", "--box", "16", "--snr", "1",
              "--seed", "4")
    assert res.exit_code == 0, res.output
    pool = tmp_path / "pool.h5"
    res = cli("ingest", sim / "particles.star", "-o", pool)
    assert res.exit_code == 0, res.output

    star_rows = (sim / "particles.star").read_text()
    truth = _csv(sim / "truth.csv")
    with open_pool(pool) as p:
        assert len(p) == 15 and p.shape == (16, 16, 16) and p.voxel_size == 10.0
        ids = list(p.particle_ids)
        assert sorted(ids) == sorted(r["particle_id"] for r in truth)
        # voxel data survives ingest: each stored volume is its MRC file, z-scored
        for i in (0, 7, 14):
            mrc_path = Path(p.sources[i])
            assert mrc_path.name in star_rows
            raw = mrcfile.read(mrc_path).astype(np.float64)
            np.testing.assert_allclose(p.read([i])[0], (raw - raw.mean()) / raw.std(), atol=2e-5)
        assert p.meta("rlnTomoName")[0] != "" and list(p.tomos) == list(p.meta("rlnTomoName"))

    # label two particles per class from the truth table, through a select-style CSV
    by_class: dict[str, list[str]] = {}
    for r in truth:
        by_class.setdefault(r["label"], []).append(r["particle_id"])
    chosen = {pid: lab for lab, pids in by_class.items() for pid in pids[:2]}
    rows = "".join(f"{k + 1},{pid},0.5,,,,,,,,{lab}\n" for k, (pid, lab) in enumerate(chosen.items()))
    labels_csv = tmp_path / "labels.csv"
    header = "rank,particle_id,score,predicted_label,confidence,source,tomo,x,y,z,label\n"
    labels_csv.write_text(header + rows)
    res = cli("label", pool, labels_csv)
    assert res.exit_code == 0, res.output

    with open_pool(pool) as p:  # labels land on the right ids
        names = p.class_names
        assert sorted(names) == sorted(by_class)
        for pid, k, rnd in zip(p.particle_ids, p.labels, p.label_rounds, strict=True):
            if pid in chosen:
                assert names[k] == chosen[pid] and rnd == 0
            else:
                assert k == -1 and rnd == -1

    res = cli("status", pool, "--json")
    info = json.loads(res.stdout)
    assert info["total"] == 15 and info["labelled"] == 6 and info["unlabelled"] == 9
    assert info["per_class"] == {name: 2 for name in by_class}
    assert info["n_source_files"] == 15 and info["n_tomograms"] >= 1 and info["voxel_size"] == 10.0


def test_bundled_sample_data_ingest_label_status(tmp_path):
    """The README demo's first three commands on sample_data/, checking values."""
    root = Path(__file__).resolve().parents[1] / "sample_data"
    pool = tmp_path / "pool.h5"
    res = cli("ingest", root / "particles.star", "-o", pool)
    assert res.exit_code == 0, res.output
    res = cli("label", pool, root / "seed_labels.csv")
    assert res.exit_code == 0, res.output
    res = cli("status", pool, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    truth = {r["particle_id"]: r["label"] for r in _csv(root / "truth.csv")}
    seed = {r["particle_id"]: r["label"] for r in _csv(root / "seed_labels.csv")}
    assert info["total"] == len(truth) and info["labelled"] == len(seed)
    assert info["unlabelled"] == len(truth) - len(seed)
    want = {}
    for lab in seed.values():
        want[lab] = want.get(lab, 0) + 1
    assert info["per_class"] == want and info["voxel_size"] == 10.0
    assert info["label_rounds"] == {"0": len(seed)}
    with open_pool(pool) as p:
        assert sorted(p.particle_ids) == sorted(truth)
        for pid, k in zip(p.particle_ids, p.labels, strict=True):
            assert (p.class_names[k] if k >= 0 else None) == seed.get(pid)
            if pid in seed:
                assert seed[pid] == truth[pid]
        for i in (0, len(p) - 1):
            raw = mrcfile.read(p.sources[i]).astype(np.float64)
            np.testing.assert_allclose(p.read([i])[0], (raw - raw.mean()) / raw.std(), atol=2e-5)


def _corrupt_chunk(pool: Path, index: int) -> None:
    """Overwrite the middle of particle `index`'s compressed chunk on disk (a damaged file)."""
    with h5py.File(pool, "r") as h5:
        info = h5["volumes"].id.get_chunk_info_by_coord((index, 0, 0, 0))
    with open(pool, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 4)
        fh.write(b"\xff" * (info.size // 2))


def _plain_pool(path: Path, compression: str | None) -> Path:
    vols = np.random.default_rng(1).standard_normal((6, 8, 8, 8)).astype(np.float32)
    with PoolWriter(path, shape=(8, 8, 8), compression=compression) as w:
        w.add(vols, [f"p{i}" for i in range(6)], [f"/d/{i}.mrc" for i in range(6)])
    return path


def test_status_check_finds_corrupted_volume_data(tmp_path):
    pool = _plain_pool(tmp_path / "pool.h5", "gzip")
    ok = cli("status", pool, "--check", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["check"] == {"checked": 6, "n_bad": 0, "bad": []}
    assert "all 6 read back, finite" in cli("status", pool, "--check").stdout

    _corrupt_chunk(pool, 4)
    assert cli("status", pool).exit_code == 0  # the index is intact: plain status does not read volumes
    res = cli("status", pool, "--check")
    assert res.exit_code == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {pool}: volume data of 1 of 6 particles is bad")
    assert "particle 'p4' (index 4) cannot be read" in lines[0] and "Traceback" not in res.output


def test_status_check_finds_non_finite_values(tmp_path):
    pool = _plain_pool(tmp_path / "pool.h5", None)
    with h5py.File(pool, "r+") as h5:
        h5["volumes"][2, 1, 1, 1] = np.nan
        h5["volumes"][5, 0, 0, 0] = np.inf
    res = cli("status", pool, "--check")
    assert res.exit_code == 1
    assert "volume data of 2 of 6 particles is bad; first: particle 'p2' (index 2) holds NaN" in res.stderr


def test_check_volumes_reads_in_batches_and_names_each_bad_particle(tmp_path, monkeypatch):
    import cryoal.io.summary as summary

    pool = _plain_pool(tmp_path / "pool.h5", "gzip")
    for i in (1, 3):
        _corrupt_chunk(pool, i)
    for batch_bytes in (8**3 * 4, 8**3 * 4 * 4, 2**30):  # one particle, four, everything per read
        monkeypatch.setattr(summary, "_CHECK_BYTES", batch_bytes)
        got = summary.check_volumes(pool)
        assert got["checked"] == 6 and got["n_bad"] == 2
        assert [b["particle_id"] for b in got["bad"]] == ["p1", "p3"]
