"""Usage errors: one plain `error:` line naming the option, exit code 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.io.pool import PoolWriter

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A tiny labelled pool (the commands must get past their arguments to reach the values)."""
    path = tmp_path_factory.mktemp("errors") / "pool.h5"
    vols = np.random.default_rng(0).standard_normal((6, 4, 4, 4)).astype(np.float32)
    with PoolWriter(path, shape=(4, 4, 4), class_names=["a", "b"]) as w:
        w.add(vols, [f"p{i}" for i in range(6)], [f"/d/{i}.mrc" for i in range(6)], labels=[0, 1] * 3)
    return path


def run(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_usage_line(res, *words: str) -> str:
    """Exit 2 and exactly one plain `error:` line on stderr holding every word; no box, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    for noise in ("╭", "│", "Usage:", "Traceback", "Try '"):
        assert noise not in res.output, res.output
    return lines[0]


@pytest.mark.parametrize(("args", "line"), [
    (("--epochs", "0"), "error: --epochs must be at least 1 (got 0)"),
    (("--batch-size", "1"), "error: --batch-size must be at least 2 (got 1)"),
    (("--lr", "-1"), "error: --lr must be at least 0 (got -1)"),
    (("--val-fraction", "1.0"), "error: --val-fraction must be between 0 and 0.95 (got 1.0)"),
    (("--epochs", "x"), "error: --epochs must be a whole number (got 'x')"),
    (("--device", "gpu"), "error: --device must be one of auto, cpu, cuda, cuda:N (got 'gpu')"),
])
def test_train_bad_values(pool, tmp_path, args, line):
    res = run("train", pool, "-o", tmp_path / "m.pt", *args)
    assert assert_usage_line(res) == line
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(("args", "words"), [
    (("select", "POOL", "-m", "m.pt", "-o", "OUT", "-n", "-5"), ["-n must be at least 0 (got -5)"]),
    (("select", "POOL", "-m", "m.pt", "-o", "OUT", "--scheme", "best"),
     ["--scheme must be one of expected,", "(got 'best')"]),
    (("select", "POOL", "-m", "m.pt", "-o", "OUT", "--pick", "nope"), ["--pick must be one of top, power"]),
    (("select", "POOL", "-m", "m.pt", "-o", "OUT", "--batch-size", "0"), ["--batch-size must be at least 1"]),
    (("predict", "POOL", "-m", "m.pt", "-o", "OUT", "--format", "xml"), ["--format must be one of csv"]),
    (("simulate", "OUT", "--classes", "0"), ["--classes must be at least 1 (got 0)"]),
    (("simulate", "OUT", "--membrane-ndim", "4"), ["--membrane-ndim must be between 2 and 3 (got 4)"]),
    (("ingest", "POOL", "-o", "OUT", "--compression", "zip"),
     ["--compression must be one of none, lzf, gzip (got 'zip')"]),
    (("ingest", "POOL", "-o", "OUT", "--box", "0"), ["--box must be at least 1 (got 0)"]),
    (("benchmark", "POOL", "--truth", "t.csv", "-o", "OUT", "--seeds", "0"), ["--seeds must be at least 1"]),
    (("benchmark", "POOL", "--truth", "t.csv", "-o", "OUT", "--test-fraction", "0"),
     ["--test-fraction must be between 0 and 1, both excluded (got 0)"]),
    (("benchmark", "POOL", "--truth", "t.csv", "-o", "OUT", "--schemes", "expected:nope"),
     ["--schemes", "unknown pick 'nope'"]),
    (("gallery", "POOL", "-o", "OUT", "--per-page", "0"), ["--per-page must be at least 1"]),
    (("gallery", "POOL", "-o", "OUT"), ["give one of --from CSV, --ids LIST or --labelled"]),
    (("extract", "picks.csv", "-o", "OUT", "--user", "alice"), ["--user: only with --copick"]),
])
def test_bad_values_in_every_command_are_usage_errors(pool, tmp_path, args, words):
    out = tmp_path / "out"
    args = [pool if a == "POOL" else out if a == "OUT" else a for a in args]
    assert_usage_line(run(*args), *words)
    assert not out.exists()


@pytest.mark.parametrize(("args", "words"), [
    (("train", "POOL", "-o", "m.pt", "--bogus"), ["No such option: --bogus", "--help"]),
    (("simulate", "OUT", "--force", "true"), ["unexpected extra argument(s) (true)", "simulate --help"]),
    (("status",), ["Missing argument 'POOL'", "status --help"]),
    (("train", "POOL"), ["Missing option", "--output"]),
    (("nope",), ["No such command 'nope'"]),
])
def test_parser_errors_are_one_plain_line(pool, tmp_path, args, words):
    args = [pool if a == "POOL" else tmp_path / "out" if a == "OUT" else a for a in args]
    assert_usage_line(run(*args), *words)


def test_no_arguments_prints_the_help():
    res = run()
    assert res.exit_code == 2 and "Usage:" in res.stdout and "error:" not in res.stderr


def test_a_user_facing_error_stays_exit_1(tmp_path):
    res = run("status", tmp_path / "missing.h5")
    assert res.exit_code == 1 and res.stderr.strip().startswith("error: ") and "not found" in res.stderr


def test_console_script_prints_the_same_plain_line(tmp_path):
    """The real entry point (not the test runner) prints one line and exits 2."""
    code = "import sys; from cryoal.cli import main; sys.argv = ['cryoal', *sys.argv[1:]]; main()"
    proc = subprocess.run([sys.executable, "-c", code, "simulate", str(tmp_path / "o"), "--classes", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --classes must be at least 1 (got 0)"
    assert not (tmp_path / "o").exists()


def test_pyproject_license_is_an_spdx_string():
    """`project.license` as a table is deprecated by setuptools (a warning at every build)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT" and meta["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").is_file()
    # license-files needs setuptools 77; pip builds with the newest one unless told otherwise
    assert meta["build-system"]["requires"] == ["setuptools>=77"]


def test_no_tracked_file_is_ignored():
    """.gitignore must not list files the repository tracks (e.g. sample_data/)."""
    try:
        proc = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("git is not installed")
    if proc.returncode != 0:
        pytest.skip("not a git checkout")
    assert proc.stdout.split() == []
