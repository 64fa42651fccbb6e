"""`cryoal simulate` (particle mode): files, columns, headers, determinism and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mrcfile
import numpy as np
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.io.star import read_star
from cryoal.simulate import class_names, simulate_particles

ARGS = ["--classes", "3", "--per-class", "4", "--box", "16", "--voxel-size", "20", "--defocus", "5",
        "--snr", "0.3", "--seed", "3"]


def _run(*args: str):
    return CliRunner().invoke(app, ["simulate", *args])


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_writes_mrcs_star_and_truth(tmp_path):
    out = tmp_path / "sim"
    res = _run(str(out), *ARGS, "--seed-labels", "2")
    assert res.exit_code == 0, res.output
    assert "wrote 12 particles of 3 classes" in res.stdout
    blocks = read_star(out / "particles.star")
    parts = blocks["particles"]
    assert list(parts) == ["rlnImageName", "rlnTomoName", "rlnCoordinateX", "rlnCoordinateY",
                           "rlnCoordinateZ", "rlnOpticsGroup"]
    assert not any("Class" in c for c in parts)  # the truth is only in truth.csv
    assert blocks["optics"]["rlnImagePixelSize"] == ["20"]
    truth = _csv(out / "truth.csv")
    assert list(truth[0]) == ["particle_id", "label"]
    assert [Path(p).stem for p in parts["rlnImageName"]] == [r["particle_id"] for r in truth]
    names = class_names(3)
    assert sorted(r["label"] for r in truth) == sorted(names * 4)
    # the CLI writes exactly what the Python API returns for the same settings
    vols, labels, _ = simulate_particles(4, classes=3, snr=0.3, box=16, voxel_size=20, defocus=5, seed=3)
    assert [names[i] for i in labels] == [r["label"] for r in truth]
    for k, rel in enumerate(parts["rlnImageName"]):
        with mrcfile.open(out / rel) as m:  # paths are relative to the STAR file
            assert m.data.dtype == np.float32 and m.data.shape == (16, 16, 16)
            assert m.header.mode == 2
            assert float(m.voxel_size.x) == 20.0 and float(m.voxel_size.z) == 20.0
            assert np.array_equal(m.data, vols[k])
    seeds = _csv(out / "seed_labels.csv")
    by_id = {r["particle_id"]: r["label"] for r in truth}
    assert len(seeds) == 6 and all(by_id[r["particle_id"]] == r["label"] for r in seeds)
    assert sorted(r["label"] for r in seeds) == sorted(names * 2)
    info = json.loads((out / "simulation.json").read_text())
    assert info["classes"] == names and info["defocus_um"] == 5.0 and "--seed 3" in info["command"]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert _run(str(tmp_path / name), *ARGS[:-1], seed).exit_code == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files = [f for f in files if f.name != "simulation.json"]  # it records OUT_DIR
    assert len(files) == 12 + 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    with mrcfile.open(tmp_path / "a" / "particles" / "p00001.mrc") as m:
        assert m.header.label[0] == b"cryoal simulate"  # not mrcfile's timestamp: same bytes a second later
    a = mrcfile.read(tmp_path / "a" / "particles" / "p00001.mrc")
    c = mrcfile.read(tmp_path / "c" / "particles" / "p00001.mrc")
    assert not np.allclose(a, c)


def test_refuses_non_empty_dir_and_force_replaces_only_our_files(tmp_path):
    out = tmp_path / "sim"
    assert _run(str(out), *ARGS).exit_code == 0
    (out / "notes.txt").write_text("mine")
    res = _run(str(out), *ARGS)
    assert res.exit_code == 1 and "not empty" in res.stderr and "--force" in res.stderr
    res = _run(str(out), "--classes", "2", "--per-class", "2", "--box", "16", "--voxel-size", "20", "--force")
    assert res.exit_code == 0, res.output
    assert len(list((out / "particles").glob("*.mrc"))) == 4  # no stale particles from the bigger run
    assert len(_csv(out / "truth.csv")) == 4
    assert (out / "notes.txt").read_text() == "mine"


def test_bad_options_exit_2_with_one_line(tmp_path):
    """A bad option value is a usage error (exit 2), whether the parser or the simulator finds it."""
    cases = [
        (["--snr", "0"], "--snr"),
        (["--tilt-range", "0"], "--tilt-range"),
        (["--classes", "0"], "--classes"),
        (["--defocus", "-1"], "--defocus"),
        (["--tomograms", "1", "--tomo-shape", "10,10"], "--tomo-shape"),
        (["--tomograms", "1", "--tomo-shape", "12,12,12", "--per-class", "50"], "--tomo-shape"),
    ]
    for i, (args, culprit) in enumerate(cases):
        res = _run(str(tmp_path / f"o{i}"), *args)
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.count("\n") == 1 and culprit in res.stderr and "Traceback" not in res.stderr
        assert not (tmp_path / f"o{i}").exists()  # nothing written
    res = _run(str(tmp_path / "missing" / "out"))
    assert res.exit_code == 1 and "does not exist" in res.stderr


def test_inf_snr_and_warning_when_class_is_cut(tmp_path):
    res = _run(str(tmp_path / "s"), "--classes", "6", "--per-class", "1", "--box", "16", "--snr", "inf")
    assert res.exit_code == 0, res.output
    assert "warning" in res.stderr and "ribosome_c1" in res.stderr  # 230 Å wide, box is 160 Å


def test_sample_data_is_what_its_recorded_command_makes():
    root = Path(__file__).resolve().parents[1] / "sample_data"
    info = json.loads((root / "simulation.json").read_text())
    assert info["command"] in (root / "README.md").read_text()
    vols, labels, names = simulate_particles(
        info["per_class"], classes=len(info["classes"]), snr=info["snr"], box=info["box"],
        voxel_size=info["voxel_size"], tilt_range=info["tilt_range"], defocus=info["defocus_um"],
        shift=info["shift_std_voxels"], seed=info["seed"],
    )
    truth = _csv(root / "truth.csv")
    assert [r["label"] for r in truth] == [names[i] for i in labels]
    for k in (0, len(truth) // 2, len(truth) - 1):
        assert np.array_equal(mrcfile.read(root / "particles" / f"{truth[k]['particle_id']}.mrc"), vols[k])
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 25_000_000
