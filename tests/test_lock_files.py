"""No `<pool>.lock` is left behind by a write, failed or not, and removing it opens no race."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.errors import CryoalError
from cryoal.io import atomic
from cryoal.io.atomic import exclusive_lock
from cryoal.io.pool import PoolWriter, edit_pool


def _cli(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def _pool(path: Path, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    with PoolWriter(path, shape=(8, 8, 8), class_names=["a", "b"]) as w:
        w.add(rng.standard_normal((n, 8, 8, 8), dtype=np.float32), [f"p{i}" for i in range(n)], ["s"] * n)


def _locks(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".lock"))


def test_failed_ingest_that_created_no_pool_leaves_no_lock(tmp_path):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"not an MRC file at all" * 100)
    res = _cli("ingest", bad, "-o", tmp_path / "new.h5")
    assert res.exit_code == 1 and "bad.mrc" in res.stderr
    assert not (tmp_path / "new.h5").exists()
    assert _locks(tmp_path) == []


def test_successful_writes_leave_no_lock(tmp_path):
    pool = tmp_path / "pool.h5"
    _pool(pool)
    assert _locks(tmp_path) == []
    (tmp_path / "labels.csv").write_text("particle_id,label\np1,b\n")
    res = _cli("label", pool, tmp_path / "labels.csv")
    assert res.exit_code == 0, res.stderr
    assert _locks(tmp_path) == []
    with pytest.raises(RuntimeError), edit_pool(pool):  # an edit that fails
        raise RuntimeError("boom")
    assert _locks(tmp_path) == []


def test_a_live_writer_still_refuses_a_second_one(tmp_path):
    target = tmp_path / "pool.h5"
    with exclusive_lock(target):
        assert _locks(tmp_path) == ["pool.h5.lock"]
        with pytest.raises(CryoalError, match="being written by another process"), exclusive_lock(target):
            pass
        assert _locks(tmp_path) == ["pool.h5.lock"]  # the refused writer removed nothing
    assert _locks(tmp_path) == []


def test_a_lock_left_by_a_killed_writer_is_taken_over_and_removed(tmp_path):
    target = tmp_path / "pool.h5"
    (tmp_path / "pool.h5.lock").write_text("")  # its holder died: the kernel released the flock
    with exclusive_lock(target):
        pass
    assert _locks(tmp_path) == []


def test_locking_a_lock_file_that_was_just_removed_starts_again(tmp_path, monkeypatch):
    """The race that removing lock files opens, closed by checking the name after locking.

    Writer B opens `pool.h5.lock` just before the holder A removes it and locks it just after A
    has let go (simulated: the file is removed between B's open and B's flock). B must not go on
    holding a lock on a file no longer at that name: a writer C would create a new lock file and
    both would write. With the check, B takes the new file, and C is refused.
    """
    target = tmp_path / "pool.h5"
    lock = tmp_path / "pool.h5.lock"
    real_flock = fcntl.flock
    calls = []

    def flock_after_holder_left(fd, op):
        calls.append(op)
        if len(calls) == 1:
            lock.unlink()  # A removes its lock file and releases it, between B's open and flock
        return real_flock(fd, op)

    monkeypatch.setattr(atomic.fcntl, "flock", flock_after_holder_left)
    with exclusive_lock(target):  # B
        monkeypatch.setattr(atomic.fcntl, "flock", real_flock)
        assert len(calls) == 2  # B noticed and locked the file now at that name
        fd = os.open(lock, os.O_RDWR)  # C, on the file the name leads to now
        try:
            with pytest.raises(BlockingIOError):
                real_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_a_new_pool_that_cannot_be_opened_leaves_no_lock(tmp_path, monkeypatch):
    import cryoal.io.pool as pool_module

    def disk_full(path, mode):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(pool_module, "_open_h5", disk_full)
    writer = PoolWriter(tmp_path / "new.h5", shape=(8, 8, 8))
    with pytest.raises(OSError, match="No space"):
        writer.__enter__()
    # released at once, not only when the half-entered writer is garbage-collected
    assert _locks(tmp_path) == []
    with exclusive_lock(tmp_path / "new.h5"):
        pass
    del writer
