"""User-facing errors: the CLI prints their message as one line and exits 1 (2 for `OptionError`)."""

from __future__ import annotations


class CryoalError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    The message must name the file, id or option at fault.
    """


class PoolError(CryoalError):
    """A pool file is missing, corrupt, locked, or of another format version."""


class InputError(CryoalError):
    """An input file (MRC, STAR, CSV, image) is missing, corrupt or of the wrong shape."""


class OptionError(CryoalError):
    """A bad option value (out of range, not one of the choices) or a bad combination of options.

    A usage error: the CLI prints the message as one line and exits 2, as it does for the values
    its parser rejects. The message must name the option.
    """
