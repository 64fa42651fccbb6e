"""`--log-json FILE`: one JSON object per line, parseable by a strict JSON reader.

The EventLog itself here; the commands that write it (train, select, benchmark) further down.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryoal.errors import CryoalError
from cryoal.io.logjson import EventLog, read_events


def _strict_lines(path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        # parse_constant rejects NaN/Infinity, which are not JSON
        out.append(json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")))
    return out


def test_events_are_strict_json_lines(tmp_path):
    path = tmp_path / "log.jsonl"
    with EventLog(path, command="select") as log:
        log.emit("start", n=np.int64(3), x=np.float32(0.5), bad=float("nan"), arr=[1.0, float("inf")])
        log.emit("done", seconds=1.25, nested={"k": np.float64(2.0)})
    events = _strict_lines(path)
    assert [e["event"] for e in events] == ["start", "done"]
    assert all(e["command"] == "select" and isinstance(e["time"], float) for e in events)
    assert events[0]["n"] == 3 and events[0]["x"] == 0.5
    assert events[0]["bad"] is None and events[0]["arr"] == [1.0, None]
    assert events[1]["nested"] == {"k": 2.0}
    assert read_events(path) == events


def test_lines_are_flushed_as_they_are_written(tmp_path):
    path = tmp_path / "log.jsonl"
    log = EventLog(path, command="train")
    log.emit("epoch", epoch=1)
    assert read_events(path)[0]["epoch"] == 1  # a watcher tailing the file sees it before close
    log.close()
    log.close()  # idempotent


def test_an_exception_is_logged_as_an_error_event(tmp_path):
    path = tmp_path / "log.jsonl"
    with pytest.raises(ValueError):
        with EventLog(path, command="train") as log:
            log.emit("start")
            raise ValueError("boom")
    events = read_events(path)
    assert events[-1]["event"] == "error" and "ValueError: boom" in events[-1]["error"]


def test_disabled_log_writes_nothing(tmp_path):
    path = tmp_path / "log.jsonl"
    with EventLog(path, command="select", enabled=False) as log:  # e.g. on a non-zero rank
        log.emit("start")
    assert not path.exists()
    with EventLog(None, command="select") as log:
        log.emit("start")


def test_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(CryoalError, match="does not exist"):
        EventLog(tmp_path / "nope" / "log.jsonl")


# ------------------------------------------------------------------------------------------
# The commands: train, select and benchmark with --log-json
# ------------------------------------------------------------------------------------------

BOX, PER_CLASS = 8, 12



@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """36 particles of 3 blob sizes (12 labelled) and a truth.csv of all of them."""
    from cryoal.io.pool import PoolWriter

    d = tmp_path_factory.mktemp("logjson")
    rng = np.random.default_rng(0)
    n = 3 * PER_CLASS
    truth = np.arange(n) % 3
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, BOX),) * 3, indexing="ij")
    shapes = np.stack([np.exp(-(x**2 + y**2 + z**2) / w) for w in (0.1, 0.3, 0.6)]).astype(np.float32)
    vols = shapes[truth] + 0.3 * rng.standard_normal((n, BOX, BOX, BOX)).astype(np.float32)
    ids = [f"p{i:02d}" for i in range(n)]
    with PoolWriter(d / "pool.h5", shape=(BOX,) * 3, class_names=["a", "b", "c"], voxel_size=10.0) as w:
        w.add(vols, ids, [f"{i}.mrc" for i in ids], labels=np.where(np.arange(n) < 12, truth, -1))
    (d / "truth.csv").write_text("particle_id,label\n" + "".join(
        f"{i},{'abc'[c]}\n" for i, c in zip(ids, truth, strict=True)))
    return d


def _invoke(*args):
    from typer.testing import CliRunner

    from cryoal.cli.app import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def test_train_and_select_log_epochs_progress_and_timings(blobs, tmp_path, one_train_thread):
    log = tmp_path / "train.jsonl"
    _invoke("train", blobs / "pool.h5", "-o", tmp_path / "m.pt", "--epochs", "2", "--batch-size", "4",
            "--val-fraction", "0", "--device", "cpu", "--arch", "resnet3d", "--log-json", log)
    events = _strict_lines(log)
    assert [e["event"] for e in events] == ["epoch", "epoch", "done"]
    assert [e["epoch"] for e in events[:2]] == [1, 2]
    assert all(isinstance(e["train_loss"], float) and e["seconds"] > 0 for e in events[:2])
    assert events[-1]["n_train"] == 12 and events[-1]["output"] == str(tmp_path / "m.pt")

    log = tmp_path / "select.jsonl"
    _invoke("select", blobs / "pool.h5", "-m", tmp_path / "m.pt", "--scheme", "entropy", "-n", "5",
            "--batch-size", "4", "--device", "cpu", "-o", tmp_path / "s.csv", "--log-json", log)
    events = _strict_lines(log)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"progress"}
    assert events[0]["scheme"] == "entropy" and events[0]["world_size"] == 1
    done = [e["done"] for e in events[1:-1]]
    assert done == sorted(done) and done[-1] == events[-1]["n_scored"] == 24
    assert events[-1]["n_written"] == 5 and events[-1]["seconds"] > 0
    assert events[-1]["outputs"] == {"csv": str(tmp_path / "s.csv")}


def test_benchmark_logs_progress_cycles_and_summary(blobs, tmp_path, one_train_thread):
    log = tmp_path / "bench.jsonl"
    _invoke("benchmark", blobs / "pool.h5", "--truth", blobs / "truth.csv", "-o", tmp_path / "b",
            "--schemes", "random", "--seeds", "1", "--cycles", "2", "--initial", "6", "--budget", "3",
            "--test-fraction", "0.25", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--arch", "resnet3d", "--width", "4", "--log-json", log)
    events = _strict_lines(log)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2]
    cycles = [e for e in events if e["event"] == "cycle"]
    assert [(c["scheme"], c["cycle"], c["n_labeled"]) for c in cycles] == [("random", 0, 6), ("random", 1, 9)]
    assert all(0 <= c["accuracy"] <= 1 for c in cycles)
    assert events[-1]["summary"][0]["scheme"] == "random" and "train" in events[-1]["seconds"]
