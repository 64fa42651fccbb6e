"""A write killed by SIGKILL leaves its temporary file behind; the next write of the same target
removes it, says so in one line on stderr, and leaves no temporary file.

The killed writer is a real child process running the real command (or writer function) with
`os.replace` swapped for a SIGKILL to itself: it dies at the last moment of the write, when the
temporary file is complete (for a pool: a full copy) and about to be renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.io.atomic import atomic_open, remove_stale_temps
from cryoal.io.pool import PoolWriter, open_pool
from cryoal.io.tables import write_csv

REPO = Path(__file__).resolve().parents[1]

# Runs `cryoal ARGS...` (or, with -c CODE, a snippet) and is killed by SIGKILL when it renames.
KILLED_AT_RENAME = r"""
import os, signal, sys
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "-c":
    exec(sys.argv[2])
else:
    from cryoal.cli import main
    sys.argv = ["cryoal", *sys.argv[1:]]
    main()
"""


def _kill_mid_write(tmp_path: Path, *args: str) -> int:
    """Run the writer in a child until its SIGKILL; returns the child's pid (in its temp names)."""
    script = tmp_path / "killed.py"
    script.write_text(KILLED_AT_RENAME)
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, args)], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    return _pid_of_last_child(tmp_path)


def _pid_of_last_child(directory: Path) -> int:
    pids = {int(p.name.rsplit("-", 1)[1]) for p in _temps(directory)}
    assert len(pids) == 1, _temps(directory)
    return pids.pop()


def _temps(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _make_pool(path: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    with PoolWriter(path, shape=(8, 8, 8), class_names=["a", "b"]) as w:
        w.add(rng.standard_normal((n, 8, 8, 8), dtype=np.float32), [f"p{i}" for i in range(n)], ["s"] * n)


def _write_mrcs(directory: Path, n: int, start: int = 0) -> Path:
    directory.mkdir()
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        with mrcfile.new(directory / f"q{i}.mrc") as mrc:
            mrc.set_data(rng.standard_normal((8, 8, 8)).astype(np.float32))
    return directory


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _removal_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning: removed")]


@pytest.mark.parametrize("command", ["label", "ingest --append", "ingest"])
def test_killed_pool_write_leaves_a_copy_that_the_next_writer_removes(tmp_path, command):
    pool = tmp_path / "pool.h5"
    _make_pool(pool)
    (tmp_path / "labels.csv").write_text("particle_id,label\np0,a\np3,b\n")
    if command == "label":
        args = ["label", pool, tmp_path / "labels.csv"]
    elif command == "ingest --append":
        args = ["ingest", _write_mrcs(tmp_path / "more", 3), "-o", pool, "--append"]
    else:  # a new pool over the old one
        args = ["ingest", _write_mrcs(tmp_path / "fresh", 4, start=10), "-o", pool, "--overwrite"]
    before = _digest(pool)

    pid = _kill_mid_write(tmp_path, *args)
    stale = tmp_path / f".pool.h5.tmp-{pid}"
    assert stale.is_file() and _digest(pool) == before  # the kill left a copy and the pool as it was
    if command != "ingest":
        with open_pool(stale) as copy:  # a complete copy of the pool, edited, never renamed
            assert len(copy) >= 6

    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exit_code == 0, result.output
    lines = _removal_lines(result.stderr)
    assert len(lines) == 1 and str(stale) in lines[0] and f"process {pid}" in lines[0], result.stderr
    assert _temps(tmp_path) == []
    with open_pool(pool) as p:  # and the normal write did its work
        if command == "label":
            assert list(p.labels[[0, 3]]) == [0, 1]
        elif command == "ingest --append":
            assert len(p) == 9
        else:
            assert list(p.particle_ids) == [f"q{i}" for i in range(10, 14)]


def test_killed_gallery_leaves_a_staging_directory_that_the_next_gallery_removes(tmp_path):
    pool = tmp_path / "pool.h5"
    _make_pool(pool)
    out = tmp_path / "gallery"
    first = CliRunner().invoke(app, ["gallery", str(pool), "-o", str(out), "--ids", "p0,p1"])
    assert first.exit_code == 0, first.output

    pid = _kill_mid_write(tmp_path, "gallery", pool, "-o", out, "--ids", "p0,p1", "--html")
    assert (tmp_path / f".gallery.tmp-{pid}" / "index.html").is_file()
    assert not (out / "index.html").exists()  # the previous gallery is still the one in place

    result = CliRunner().invoke(app, ["gallery", str(pool), "-o", str(out), "--ids", "p0,p1", "--html"])
    assert result.exit_code == 0, result.output
    assert len(_removal_lines(result.stderr)) == 1, result.stderr
    assert _temps(tmp_path) == [] and (out / "index.html").is_file()


CHECKPOINT_WRITE = (
    "from cryoal.learn.checkpoint import save_checkpoint; from cryoal.models import build_model; "
    "save_checkpoint(DEST, build_model('rb3d', (8, 8, 8), 2), "
    "{'mode': 'subtomogram', 'class_names': ['a', 'b'], 'input_shape': [8, 8, 8]})"
)
CSV_WRITE = "from cryoal.io.tables import write_csv; write_csv(DEST, {'a': [1, 2]})"


@pytest.mark.parametrize("name, code", [("out.csv", CSV_WRITE), ("model.pt", CHECKPOINT_WRITE)])
def test_killed_file_write_is_removed_by_the_next_write(tmp_path, name, code, capfd):
    dest = tmp_path / name
    code = code.replace("DEST", repr(str(dest)))
    pid = _kill_mid_write(tmp_path, "-c", code)
    stale = tmp_path / f".{name}.tmp-{pid}"
    assert stale.stat().st_size > 0 and not dest.exists()

    capfd.readouterr()
    exec(code)  # the same write in this process, where os.replace is the real one
    lines = _removal_lines(capfd.readouterr().err)
    assert len(lines) == 1 and str(stale) in lines[0]
    assert _temps(tmp_path) == [] and dest.is_file()


def test_a_live_writers_temporary_file_is_left_alone(tmp_path, capfd):
    """Without a lock, only a dead process's file is stale; a running writer's is not touched."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()  # reaped: its pid names no process now (pid reuse within the test is not a worry)
        dest = tmp_path / "out.csv"
        (tmp_path / f".out.csv.tmp-{live.pid}").write_text("half a CSV")
        (tmp_path / f".out.csv.tmp-{dead.pid}").write_text("half a CSV")
        (tmp_path / ".out.csv.tmp-notapid").write_text("someone else's")
        (tmp_path / ".other.csv.tmp-1").write_text("another target's")
        write_csv(dest, {"a": [1]})
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [".other.csv.tmp-1", ".out.csv.tmp-notapid", f".out.csv.tmp-{live.pid}", "out.csv"]
        )
        assert len(_removal_lines(capfd.readouterr().err)) == 1
        # under the target's lock every such file is stale, the live process's too
        removed = remove_stale_temps(dest, locked=True)
        assert removed == [tmp_path / f".out.csv.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()


def test_own_temporary_file_is_not_removed(tmp_path):
    dest = tmp_path / "x.csv"
    with atomic_open(dest) as fh:
        fh.write("a\n")
        assert remove_stale_temps(dest, locked=True) == []  # the writer's own file, mid-write
    assert dest.read_text() == "a\n"
