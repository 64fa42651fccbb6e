"""Mode registry: a mode (subtomogram, image, segmentation) supplies a model factory, a per-sample
loss and the data shape. Nothing else branches on mode.

`get_mode(name) -> Mode`; `MODES` lists the modes registered so far. A mode other than subtomogram
lives in `cryoal/modes/<name>.py` and is imported the first time it is asked for (so a pool or
checkpoint of that mode finds it without this file listing it).
"""

from __future__ import annotations

import importlib
import importlib.util

from cryoal.errors import CryoalError
from cryoal.modes.base import Mode
from cryoal.modes.subtomogram import SUBTOMOGRAM

MODES: dict[str, Mode] = {SUBTOMOGRAM.name: SUBTOMOGRAM}


def _discover(name: str) -> None:
    """Import `cryoal.modes.<name>` and register the Mode it defines with that name, if any."""
    if not name.isidentifier() or importlib.util.find_spec(f"cryoal.modes.{name}") is None:
        return
    module = importlib.import_module(f"cryoal.modes.{name}")
    for value in vars(module).values():
        if isinstance(value, Mode) and value.name == name:
            register_mode(value)


def get_mode(name: str) -> Mode:
    """The registered mode called `name`; CryoalError if cryoal has no such mode."""
    if name not in MODES:
        _discover(name)
    try:
        return MODES[name]
    except KeyError:
        raise CryoalError(
            f"mode '{name}' is not supported by this cryoal (supported: {', '.join(MODES)})"
        ) from None


def register_mode(mode: Mode) -> None:
    """Add a mode to the registry."""
    MODES[mode.name] = mode


__all__ = ["MODES", "Mode", "get_mode", "register_mode"]
