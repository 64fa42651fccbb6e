"""`cryoal label POOL CSV`: import expert labels (all or nothing)."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.cli.app import command


@command(
    epilog="Example: cryoal label pool.h5 to_label.csv   (the select output with its label column filled)"
)
def label(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    table: Path = typer.Argument(..., help="CSV/TSV/STAR with particle_id and label columns."),
    add_classes: bool = typer.Option(
        False, "--add-classes", help="Allow class names the pool does not have yet (added to its class list)."
    ),
) -> None:
    """Import labels: a class name, or a class number 1..C; empty labels are skipped.

    An unknown particle id or class rejects the whole file and the pool stays unchanged.
    """
    from cryoal.labels import import_label_file

    s = import_label_file(pool, table, add_classes=add_classes)
    if s.n_set == 0:
        typer.echo(f"{pool}: no labels in {table} ({s.n_skipped} empty); pool unchanged")
        return
    per_class = ", ".join(f"{name}: {n}" for name, n in s.per_class.items())
    extra = []
    if s.n_changed:
        extra.append(f"{s.n_changed} relabelled")
    if s.n_skipped:
        extra.append(f"{s.n_skipped} empty skipped")
    if s.new_classes:
        extra.append(f"new classes: {', '.join(s.new_classes)}")
    typer.echo(
        f"{pool}: round {s.round}: labelled {s.n_set} particles ({per_class})"
        + (f"; {'; '.join(extra)}" if extra else "")
        + f"; {s.total_labelled} of {s.total} labelled in all"
    )
