"""Run a cryoal command in a fresh Python process and measure its peak resident memory.

Used by the memory benchmarks (`big_pool.py`, `select_memory.py` beside it) and the
flat-memory tests. The peak comes from /proc/self/status (VmHWM) read at exit inside the child:
`ru_maxrss` of a child is not reliable here, since Linux carries it over across fork+exec.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The child: register the VmHWM dump, then run the CLI with the given arguments.
_WRAPPER = r"""
import atexit, os, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(os.environ["CRYOAL_RSS_FILE"], "w").write(line.split()[1])
atexit.register(_peak)
exec(os.environ.get("CRYOAL_RSS_PRELUDE", ""))  # a benchmark's patch, run before the CLI
from cryoal.cli import main
sys.argv = ["cryoal", *sys.argv[1:]]
main()
"""


@dataclass
class MeasuredRun:
    """Exit code, output, wall seconds and peak RSS (MiB; None if the child never reached exit)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mib: float | None


def run_cryoal(args: list[str], env_extra: dict[str, str] | None = None, prelude: str = "") -> MeasuredRun:
    """Run `cryoal ARGS` in a fresh interpreter (this checkout first on the path) and measure it;
    `prelude` is Python code the child runs first (a benchmark's patch, e.g. fewer steps)."""
    with tempfile.TemporaryDirectory(prefix="cryoal_rss_") as scratch:
        rss_file = Path(scratch) / "rss.txt"
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "CRYOAL_RSS_FILE": str(rss_file),
               "CRYOAL_RSS_PRELUDE": prelude, **(env_extra or {})}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        peak = int(rss_file.read_text()) / 1024 if rss_file.exists() else None
    return MeasuredRun(res.returncode, res.stdout, res.stderr, seconds, peak)
