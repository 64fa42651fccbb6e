"""A pool being written by one process is refused to a second writer in ANOTHER process.

The writer side holds `<pool>.lock` (flock). These tests run the first writer in a child process
that holds the lock until told to finish, and the second writer through the real CLI.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cryoal.io.pool import PoolWriter, open_pool

REPO = Path(__file__).resolve().parents[1]

HOLDER = r"""
import sys, time
from pathlib import Path
from cryoal.io.pool import edit_pool
pool, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
with edit_pool(pool) as h5:
    h5["label"][0] = 1          # a change that lands only when the holder finishes
    ready.write_text("holding")
    while not go.exists():
        time.sleep(0.02)
print("released")
"""


def _make_pool(path: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    with PoolWriter(path, shape=(8, 8, 8), class_names=["a", "b"], compression=None) as w:
        w.add(rng.standard_normal((n, 8, 8, 8), dtype=np.float32), [f"p{i}" for i in range(n)], ["s"] * n)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _start_holder(tmp_path: Path, pool: Path) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(pool), str(ready), str(go)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "lock holder did not start"
        time.sleep(0.02)
    return proc, go


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryoal", *args], capture_output=True, text=True, env=_env())


def test_second_writer_in_another_process_is_refused(tmp_path):
    pool = tmp_path / "pool.h5"
    _make_pool(pool)
    labels = tmp_path / "labels.csv"
    labels.write_text("particle_id,label\np2,b\n")
    before = _digest(pool)
    holder, go = _start_holder(tmp_path, pool)
    try:
        res = _cli("label", str(pool), str(labels))
        assert res.returncode == 1
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert str(pool) in lines[0] and "being written by another process" in lines[0]
        assert "Traceback" not in res.stderr
        assert _digest(pool) == before  # the refused writer changed nothing
        with open_pool(pool) as p:  # readers are never blocked, and see the old pool
            assert p.labels.tolist() == [-1] * 6
    finally:
        go.write_text("go")
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0 and "released" in out, err
    # the first writer's change landed; now the second writer goes through
    res = _cli("label", str(pool), str(labels))
    assert res.returncode == 0, res.stderr
    with open_pool(pool) as p:
        assert p.labels.tolist() == [1, -1, 1, -1, -1, -1]


def test_killed_writer_releases_the_lock_and_leaves_the_pool_intact(tmp_path):
    pool = tmp_path / "pool.h5"
    _make_pool(pool)
    before = _digest(pool)
    holder, _ = _start_holder(tmp_path, pool)
    holder.send_signal(signal.SIGKILL)  # no cleanup at all: the kernel drops the flock
    holder.communicate(timeout=60)
    assert _digest(pool) == before  # the half-done edit was on a temporary copy
    labels = tmp_path / "labels.csv"
    labels.write_text("particle_id,label\np0,a\n")
    res = _cli("label", str(pool), str(labels))
    assert res.returncode == 0, res.stderr
    with open_pool(pool) as p:
        assert p.labels[0] == 0


def _model(path: Path, box: int = 8) -> None:
    import torch

    from cryoal.learn.checkpoint import save_checkpoint
    from cryoal.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet3d", (box,) * 3, 2, width=4)
    save_checkpoint(path, model, {"mode": "subtomogram", "class_names": ["a", "b"], "input_shape": [box] * 3})


def test_select_killed_midway_leaves_no_partial_output(tmp_path):
    """SIGKILL while scoring (seen in the --log-json progress events): no CSV, no STAR, no temp file;
    Ctrl-C (SIGINT) likewise, with exit code 130."""
    pool = tmp_path / "pool.h5"
    _make_pool(pool, n=600)
    _model(tmp_path / "model.pt")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for sig, code in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)):
        log = tmp_path / f"log-{sig}.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "cryoal", "select", str(pool), "-m", str(tmp_path / "model.pt"),
             "--scheme", "expected", "-n", "0", "--batch-size", "2", "--device", "cpu", "--format", "both",
             "-o", str(out_dir / "sel.csv"), "--log-json", str(log)],
            env={**_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 120
        while not (log.exists() and '"event":"progress"' in log.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "select did not start scoring"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err[-2000:]
        assert list(out_dir.iterdir()) == []  # nothing written, not even a temporary file
        if sig == signal.SIGINT:
            assert "interrupted" in err and "Traceback" not in err
