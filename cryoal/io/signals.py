"""SIGTERM handled like Ctrl-C: every cleanup runs, then one line and exit 143.

Schedulers (SLURM at a time limit, `timeout`, `kill`, torchrun stopping its workers) send SIGTERM.
Python's default action ends the process at once, so no `finally` block runs and a temporary
copy of a pool being written (`.<pool>.tmp-<pid>`, as large as the pool) stays on disk. With
`install_sigterm_handler`, SIGTERM raises `Terminated` in the main thread instead. It is a
`KeyboardInterrupt`, so every cleanup written for Ctrl-C (temporary files, partial outputs,
lock files) runs for it too; the CLI's error handler then prints one line and exits with
128 + 15 = 143, the code a shell reports for a process ended by SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: what `timeout` and shells report for SIGTERM

_received: int | None = None


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _received
    if _received is not None:
        return  # the first one's cleanup is running: let it finish (SIGKILL remains for the impatient)
    _received = signum
    raise Terminated(signum)


def install_sigterm_handler() -> bool:
    """Make SIGTERM raise `Terminated`; returns False (and changes nothing) off the main thread.

    Only the main thread may set signal handlers, and only there can the exception unwind the
    code that is writing. A handler someone else installed (not the default) is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, _on_sigterm):
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def terminated() -> bool:
    """Whether this process has received SIGTERM since the handler was installed.

    An exception other than `Terminated` can surface first (e.g. a collective operation failing
    because a peer rank already stopped): the error handler asks this to report it as what it is.
    """
    return _received is not None


__all__ = ["EXIT_TERMINATED", "Terminated", "install_sigterm_handler", "terminated"]
