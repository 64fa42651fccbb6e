"""`cryoal label POOL CSV`: import expert labels (all or nothing)."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.cli.app import command


@command(
    epilog="Example: cryoal label pool.h5 to_label.csv   (the select output with its label column filled)"
    "   |   cryoal label seg.h5 masks.csv   (segmentation: particle_id,mask_path)"
)
def label(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    table: Path = typer.Argument(
        ..., metavar="CSV",
        help="CSV/TSV/STAR with particle_id and label columns (segmentation: particle_id,mask_path)."
    ),
    add_classes: bool = typer.Option(
        False, "--add-classes", help="Allow class names the pool does not have yet (added to its class list)."
    ),
    ignore_index: int | None = typer.Option(
        None, "--ignore-index", help="Segmentation: mask value meaning unlabelled (besides -1)."
    ),
) -> None:
    """Import labels: a class name, or a class number 1..C; empty labels are skipped.

    An unknown particle id or class rejects the whole file and the pool stays unchanged.
    A table with a mask_path column imports masks into a segmentation pool (paths relative to the
    table; same formats as ingest): a mask whose shape differs from its image, or a class id beyond
    the pool's classes (without --add-classes), rejects the whole file.
    """
    from cryoal.io.masks import MASK_COLUMNS
    from cryoal.io.tables import read_table
    from cryoal.labels import import_label_file

    if any(c in read_table(table) for c in MASK_COLUMNS):
        _import_masks(pool, table, add_classes, ignore_index)
        return

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


def _import_masks(pool: Path, table: Path, add_classes: bool, ignore_index: int | None) -> None:
    from cryoal.io.masks import import_mask_file

    s = import_mask_file(pool, table, add_classes=add_classes, ignore_index=ignore_index)
    if s.n_set == 0:
        typer.echo(f"{pool}: no masks in {table} ({s.n_skipped} empty); pool unchanged")
        return
    pixels = ", ".join(f"{name}: {n}" for name, n in s.pixels_per_class.items())
    extra = [f"{s.n_changed} replaced"] if s.n_changed else []
    if s.new_classes:
        extra.append(f"new classes: {', '.join(s.new_classes)}")
    typer.echo(
        f"{pool}: round {s.round}: masks for {s.n_set} images (labelled pixels {pixels})"
        + (f"; {'; '.join(extra)}" if extra else "")
        + f"; {s.total_labelled} of {s.total} annotated in all"
    )
