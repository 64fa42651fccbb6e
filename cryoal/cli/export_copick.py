"""`cryoal export-copick POOL CONFIG.json`: labels, a selection and predictions as copick picks."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.cli.app import command
from cryoal.copick.export import DEFAULT_USER, PREDICTED_USER, SELECTION_OBJECT


@command(
    name="export-copick",
    epilog=(
        "Example: cryoal export-copick pool.h5 copick.json --selection to_label.csv --predictions "
        "predictions.csv --session round2  (then open the project in napari-copick; needs the copick extra)"
    ),
)
def export_copick(
    pool: Path = typer.Argument(..., help="Pool file (HDF5), best made by extract --copick."),
    config: Path = typer.Argument(..., help="copick project config (JSON); picks go to its overlay root."),
    user: str = typer.Option(DEFAULT_USER, "--user", help="copick user id of the label picks."),
    session: str = typer.Option(None, "--session", help="copick session id (default: a timestamp)."),
    selection: Path = typer.Option(
        None, "--selection", help="select's CSV: the particles to label next, as one pick set per run, "
        "in rank order (score = selection score, instance_id = rank).",
    ),
    selection_object: str = typer.Option(
        SELECTION_OBJECT, "--selection-object", help="Object name of the selection picks (added to the "
        "config if missing).",
    ),
    predictions: Path = typer.Option(
        None, "--predictions", help=f"predict's CSV: predicted classes as picks per class, user "
        f"{PREDICTED_USER}, score = confidence.",
    ),
    add_objects: bool = typer.Option(
        False, "--add-objects", help="Add classes missing from the config as objects (next free label).",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing session of the same user (never other users').",
    ),
    pixel_size: float = typer.Option(
        None, "--pixel-size", help="Å per pixel of the pool's coords (pools not made by extract --copick).",
    ),
) -> None:
    """Write the pool's expert labels (and a selection, predictions) as picks into a copick project."""
    from cryoal.copick.export import ExportOptions
    from cryoal.copick.export import export_copick as run_export
    from cryoal.copick.source import require_copick

    require_copick()
    summary = run_export(pool, config, ExportOptions(
        user=user, session=session, selection=selection, selection_object=selection_object,
        predictions=predictions, add_objects=add_objects, overwrite=overwrite, pixel_size=pixel_size,
    ))
    for name, label in summary.added_objects:
        typer.echo(f"added object {name} (label {label}) to {summary.config}")
    typer.echo(
        f"wrote {len(summary.files)} pick files to {summary.config}, session {summary.session}: "
        f"{summary.points('labels')} labels, {summary.points('selection')} selected, "
        f"{summary.points('predictions')} predictions"
    )
    for f in summary.files:
        n = len(f.positions)
        typer.echo(f"  {f.run} {f.object} ({f.user}, {f.what}): {n} point{'' if n == 1 else 's'}  {f.path}")
    for path in summary.removed:
        typer.echo(f"  removed stale {path}")
