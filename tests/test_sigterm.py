"""SIGTERM (what SLURM, `timeout` and `kill` send) is handled like Ctrl-C.

Each case runs a real `cryoal` command in a child process that stops at a chosen moment of its
write (a function of the write path is wrapped so that, on its n-th call, it says so in a marker
file and sleeps). The test then sends that process a real SIGTERM and checks: exit 143, exactly
one `error:` line and no traceback, no temporary file left, and the previous output unchanged.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryoal.io.pool import PoolWriter, open_pool

REPO = Path(__file__).resolve().parents[1]

# argv: TARGET (module:attr.path) WHEN (before|after) NTH MARKER, then the cryoal arguments
PAUSER = r"""
import functools, importlib, os, sys, time
from pathlib import Path

target, when, nth, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
module_name, attr_path = target.split(":")
owner = importlib.import_module(module_name)
*parents, name = attr_path.split(".")
for part in parents:
    owner = getattr(owner, part)
original = getattr(owner, name)
calls = 0


def pause():
    marker.write_text("paused")
    time.sleep(300)  # the test's SIGTERM ends this sleep


@functools.wraps(original)
def patched(*args, **kwargs):
    global calls
    calls += 1
    if calls == nth and when == "before":
        pause()
    out = original(*args, **kwargs)
    if calls == nth and when == "after":
        pause()
    return out


setattr(owner, name, patched)
sys.argv = ["cryoal", *sys.argv[5:]]
from cryoal.cli import main

main()
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob(".*tmp-*"))


def _terminate_at(tmp_path: Path, target: str, when: str, nth: int, *args: str,
                  expect_temp: bool) -> subprocess.CompletedProcess:
    """Run `cryoal ARGS`, SIGTERM it once it pauses at `target`; return the finished process."""
    script = tmp_path / "pauser.py"
    script.write_text(PAUSER)
    marker = tmp_path / "paused"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), target, when, str(nth), str(marker), *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before pausing at {target}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"never paused at {target}"
        time.sleep(0.02)
    # the moment is mid-write: the temporary copy exists (or, before any write, does not)
    assert bool(_temps(tmp_path)) == expect_temp, _temps(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_terminated(res: subprocess.CompletedProcess, tmp_path: Path) -> None:
    assert res.returncode == 143, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert errors == ["error: terminated (SIGTERM); files being written were left unchanged"], res.stderr
    assert res.stderr.strip().splitlines()[-1] == errors[0]
    assert _temps(tmp_path) == []


def _pool(path: Path, n: int = 40, box: int = 12, labels: list[int] | None = None) -> None:
    rng = np.random.default_rng(0)
    with PoolWriter(path, shape=(box,) * 3, class_names=["a", "b"]) as w:
        w.add(rng.standard_normal((n, box, box, box), dtype=np.float32), [f"p{i}" for i in range(n)],
              [f"s{i}" for i in range(n)], labels=labels)


# a moment: (wrapped function, before/after its n-th call, n, whether a temporary file exists then)
POOL_EDIT_MOMENTS = [
    ("cryoal.io.pool:copy_for_update", "after", 1, True),  # the copy is made, nothing changed yet
    ("cryoal.io.pool:_validate_layout", "after", 2, True),  # the copy is open for writing (1: a read)
    ("os:replace", "before", 1, True),  # everything written, about to rename it into place
]


@pytest.mark.parametrize(("target", "when", "nth", "temp"), POOL_EDIT_MOMENTS)
def test_label(tmp_path, target, when, nth, temp):
    pool = tmp_path / "pool.h5"
    _pool(pool)
    (tmp_path / "labels.csv").write_text("particle_id,label\np1,a\np2,b\n")
    before = _digest(pool)
    res = _terminate_at(tmp_path, target, when, nth, "label", str(pool), "labels.csv", expect_temp=temp)
    _assert_terminated(res, tmp_path)
    assert _digest(pool) == before


@pytest.mark.parametrize(("target", "when", "nth", "temp"), [
    *POOL_EDIT_MOMENTS,
    ("cryoal.io.pool:PoolWriter.add", "after", 1, True),  # some new particles written
])
def test_ingest_append(tmp_path, target, when, nth, temp):
    pool = tmp_path / "pool.h5"
    _pool(pool)
    mrcs = tmp_path / "mrcs"
    mrcs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        with mrcfile.new(mrcs / f"new{i}.mrc") as m:
            m.set_data(rng.standard_normal((12, 12, 12)).astype(np.float32))
    before = _digest(pool)
    res = _terminate_at(tmp_path, target, when, nth, "ingest", str(mrcs), "-o", str(pool), "--append",
                        expect_temp=temp)
    _assert_terminated(res, tmp_path)
    assert _digest(pool) == before
    with open_pool(pool) as p:
        assert len(p) == 40


@pytest.mark.parametrize(("target", "when", "nth", "temp"), [
    ("cryoal.io.pool:PoolWriter.add", "after", 1, True),
    ("os:replace", "before", 1, True),
])
def test_extract(tmp_path, target, when, nth, temp):
    tomos = tmp_path / "tomos"
    tomos.mkdir()
    with mrcfile.new(tomos / "TS_01.mrc") as m:
        m.set_data(np.random.default_rng(2).standard_normal((40, 48, 48)).astype(np.float32))
        m.voxel_size = 10.0
    (tmp_path / "picks.csv").write_text("tomo,x,y,z\n" + "".join(f"TS_01,{x},24,20\n" for x in (10, 20, 30)))
    res = _terminate_at(tmp_path, target, when, nth, "extract", "picks.csv", "-t", str(tomos),
                        "-o", "pool.h5", "--box", "8", expect_temp=temp)
    _assert_terminated(res, tmp_path)
    assert not (tmp_path / "pool.h5").exists() and not (tmp_path / "pool.h5.lock").exists()


@pytest.mark.parametrize(("target", "when", "nth", "temp"), [
    ("cryoal.learn.train:_evaluate", "before", 1, False),  # mid-training, before any write
    ("torch:save", "after", 1, True),  # the new checkpoint written beside the old one, not renamed
])
def test_train(tmp_path, target, when, nth, temp):
    pool = tmp_path / "pool.h5"
    _pool(pool, n=16, labels=[0, 1] * 8)
    model = tmp_path / "model.pt"
    model.write_bytes(b"the previous checkpoint")
    res = _terminate_at(tmp_path, target, when, nth, "train", str(pool), "-o", str(model), "--epochs", "2",
                        "--batch-size", "8", "--device", "cpu", expect_temp=temp)
    _assert_terminated(res, tmp_path)
    assert model.read_bytes() == b"the previous checkpoint"


SECOND_SIGNAL = r"""
import os, signal
from cryoal.io.signals import Terminated, install_sigterm_handler, terminated
assert install_sigterm_handler() and not terminated()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    raise SystemExit("no exception")
except Terminated as exc:
    assert isinstance(exc, KeyboardInterrupt) and exc.signum == signal.SIGTERM and terminated()
    os.kill(os.getpid(), signal.SIGTERM)  # a scheduler repeating itself during the cleanup
    print("cleanup finished")
"""


def test_a_second_sigterm_does_not_cut_the_cleanup_short():
    """The first SIGTERM raises `Terminated`; one during its cleanup is ignored (SIGKILL remains)."""
    res = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0 and res.stdout == "cleanup finished\n", (res.returncode, res.stderr)
