"""User-facing errors: the CLI prints their message as one line and exits 1."""

from __future__ import annotations


class CryoalError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    The message must name the file, id or option at fault.
    """


class PoolError(CryoalError):
    """A pool file is missing, corrupt, locked, or of another format version."""


class InputError(CryoalError):
    """An input file (MRC, STAR, CSV, image) is missing, corrupt or of the wrong shape."""
