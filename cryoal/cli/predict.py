"""`cryoal predict POOL -m MODEL -o CSV`: the predicted class and class probabilities of every particle."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import choice_option, device_option, output_option
from cryoal.select import FORMATS


@command(epilog="Example: cryoal predict pool.h5 -m model.pt -o predictions.csv")
def predict(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    model: Path = typer.Option(..., "-m", "--model", help="Model checkpoint from `cryoal train`."),
    output: Path = output_option("CSV to write."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Particles per inference batch."),
    device: str = device_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    masks: Path | None = typer.Option(
        None, "--masks", help="Segmentation: where the predicted masks go (.npy or .mrc; default: "
        "<output stem>_masks.npy). The CSV then holds each image's mean confidence."
    ),
    fmt: str = choice_option(
        "csv", "--format", choices=FORMATS,
        help="csv, star (RELION particle STAR with rlnClassNumber, at -o) or both (STAR beside the CSV).",
    ),
    no_calibration: bool = typer.Option(
        False, "--no-calibration", help="Raw softmax: ignore the temperature that train fitted."
    ),
) -> None:
    """Write particle_id,predicted_label,confidence,p_<class>... for every particle."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from cryoal.predict import predict_pool

    with Progress(
        "predicting", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=stderr_console(), transient=True,
    ) as bar:
        task = bar.add_task("predict", total=None)
        summary = predict_pool(
            pool, model, output, batch_size=batch_size, device=device,
            progress=lambda done, total: bar.update(task, completed=done, total=total), fmt=fmt,
            masks_path=masks, calibrated=not no_calibration,
        )
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
        if "masks" in summary:
            counts = f"pixels: {counts}"
        where = " and ".join(summary["outputs"].values())
        typer.echo(f"wrote {summary['n']} predictions to {where} ({counts})")
