"""Option definitions that several commands share, so that each is written once.

- `output_option`: `-o/--output`, with `--out` accepted as an alias, for every command that writes.
- `device_option`: `--device auto|cpu|cuda|cuda:N`, checked by the parser.
- `choice_option`: an option taking one of a few names, listed in help as `[a|b|c]` and checked by
  the parser; the names may come from a registry that is only imported when they are needed.

A value the parser rejects is a usage error: one `error: --opt must be ...` line and exit code 2
(`cryoal.cli.app.CryoalGroup`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import typer

from cryoal.cli.app import Choices

# `--out` is what extract, gallery and benchmark called it; `--output` is the documented name
OUTPUT_NAMES = ("-o", "--output", "--out")
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def output_option(help: str) -> Any:
    """The required `-o/--output PATH` option (`--out` works too)."""
    return typer.Option(..., *OUTPUT_NAMES, help=help)


def _one_of(names: Callable[[], Iterable[str]], accept: Callable[[str], bool] | None = None) -> Callable:
    """A parser callback that lets through None and the allowed names, and refuses anything else."""

    def check(value):
        if value is None:
            return value
        allowed = tuple(names())
        if value in allowed or (accept is not None and accept(value)):
            return value
        raise typer.BadParameter(f"must be one of {', '.join(allowed)} (got {value!r})")

    return check


def choice_option(
    default: Any, *decls: str, choices: Iterable[str] | Callable[[], Iterable[str]], help: str, **kwargs
) -> Any:
    """An option whose value is one of `choices` (a sequence, or a function returning one).

    Pass a function when the names live in a module that is costly to import (the scheme
    registry imports torch): it is called only to check a value or to show help.
    """
    names = choices if callable(choices) else (lambda fixed=tuple(choices): fixed)
    placeholder = decls[-1].lstrip("-").upper() if decls else "VALUE"
    return typer.Option(
        default, *decls, metavar=Choices(placeholder, names), callback=_one_of(names), help=help, **kwargs
    )


def device_option(help: str = "auto (CUDA if present), cpu, cuda or cuda:N.") -> Any:
    """`--device`: auto (the default), cpu, cuda or cuda:N."""
    return typer.Option(
        "auto", "--device", metavar=Choices("DEVICE", lambda: DEVICE_NAMES),
        callback=_one_of(lambda: DEVICE_NAMES, accept=lambda v: bool(_DEVICE.match(v))), help=help,
    )


def scheme_names() -> tuple[str, ...]:
    """The scoring schemes, from the registry (imported on demand: it imports torch)."""
    from cryoal.scoring.registry import SCHEMES

    return tuple(SCHEMES)


def norm_names() -> tuple[str, ...]:
    """The gradient norms of expected/entropy, from the engine (imported on demand: torch)."""
    from cryoal.scoring.gradnorm import NORMS

    return tuple(NORMS)
