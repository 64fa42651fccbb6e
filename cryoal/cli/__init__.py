"""Command-line interface: a thin Typer layer over the Python API.

Each command lives in its own module and registers itself on `app` when imported; the import
order below is the order `cryoal --help` lists them in. Commands import heavy libraries (torch)
inside their function body, so that `cryoal ingest --help` starts fast.
"""

# ruff: noqa: I001  (the import order is the order of the commands in --help)
from __future__ import annotations

from cryoal.cli import (  # noqa: F401  (imported for their registration side effect)
    simulate,
    ingest,
    extract,
    label,
    status,
    pretrain,
    embed,
    train,
    select,
    predict,
    export_copick,
    gallery,
    benchmark,
)
from cryoal.cli.app import app
from cryoal.io.signals import install_sigterm_handler


def main() -> None:
    """Console-script entry point. SIGTERM is handled like Ctrl-C (`cryoal.io.signals`)."""
    install_sigterm_handler()
    app()


__all__ = ["app", "main"]
