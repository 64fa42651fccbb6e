"""Command-line interface: a thin Typer layer over the Python API.

Each command lives in its own module and registers itself on `app`. Commands import heavy
libraries (torch) inside their function body, so that `cryoal ingest --help` starts fast.
"""

from __future__ import annotations

import importlib
import importlib.util

from cryoal.cli.app import app

_COMMAND_MODULES = (
    "simulate", "ingest", "label", "status", "train", "select", "predict",
    "benchmark", "extract", "gallery",
)

for _name in _COMMAND_MODULES:
    if importlib.util.find_spec(f"cryoal.cli.{_name}") is not None:
        importlib.import_module(f"cryoal.cli.{_name}")


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
