"""Machine-readable event logs (`--log-json FILE`): one JSON object per line, for pipeline managers.

Each event has `time` (Unix seconds), `event` (a name such as `epoch`, `progress`, `done`) and its
own fields. Lines are flushed as they are written so a watcher can tail the file.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from cryoal.io.atomic import check_output_dir


def _clean(value: Any) -> Any:
    # JSON has no NaN/Inf: write null so every line parses with a strict reader
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _clean(value.item())
    return value


class EventLog:
    """Append JSON-lines events to a file; a no-op when `path` is None (or on non-zero ranks)."""

    def __init__(self, path: str | os.PathLike | None, *, command: str = "", enabled: bool = True):
        self.command = command
        self._fh = None
        if path is not None and enabled:
            self._fh = open(check_output_dir(path), "a", encoding="utf-8")

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line."""
        if self._fh is None:
            return
        record = {"time": round(time.time(), 3), "command": self.command, "event": event}
        record.update(_clean(fields))
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.emit("error", error=f"{exc_type.__name__}: {exc}")
        self.close()


def read_events(path: str | os.PathLike) -> list[dict]:
    """Read back a JSON-lines log (used by tests and by scripts)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
