"""`--log-json FILE`: one JSON object per line, parseable by a strict JSON reader.

The EventLog itself here; the commands that write it (train, select, benchmark) further down.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cryoal.errors import CryoalError
from cryoal.logjson import EventLog, read_events


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
