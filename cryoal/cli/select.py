"""`cryoal select POOL -m MODEL --scheme S -n N -o CSV`: which unlabelled particles to label next."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console

SCHEME_NAMES = ("expected", "entropy", "random", "max-entropy", "margin", "least-confidence", "bald",
                "coreset", "badge")


@command(epilog="Example: cryoal select pool.h5 -m model.pt --scheme expected -n 100 -o to_label.csv")
def select(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    model: Path = typer.Option(..., "-m", "--model", help="Model checkpoint from `cryoal train`."),
    output: Path = typer.Option(..., "-o", "--output", help="Ranked CSV to write (fill its `label` column)."),
    scheme: str = typer.Option(
        "expected", "--scheme", "-s", help=f"Scoring scheme: {', '.join(SCHEME_NAMES)}."
    ),
    n: int = typer.Option(..., "-n", help="How many to write; 0 writes every unlabelled particle, ranked."),
    batch_size: int = typer.Option(32, "--batch-size", help="Particles per scoring batch (memory grows)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed for --pool-subset, random, bald and badge."),
    pool_subset: int | None = typer.Option(
        None, "--pool-subset", help="Score a random K of the unlabelled particles (reproducible: --seed)."
    ),
    norm: str = typer.Option(
        "l2", "--norm", help="Gradient norm for expected/entropy: l2 (global) or tensor-sum (per-tensor sum)."
    ),
    mc_passes: int = typer.Option(20, "--mc-passes", help="MC-dropout passes for bald."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
) -> None:
    """Score the unlabelled particles and write the top N, ranked (higher score = label first)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from cryoal.select import select_pool

    console = stderr_console()
    with Progress(
        f"scoring ({scheme})", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task("select", total=None)
        summary = select_pool(
            pool, model, output, scheme=scheme, n=n, batch_size=batch_size, device=device, seed=seed,
            pool_subset=pool_subset, norm=norm, mc_passes=mc_passes,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    table = Table(title=f"top of {output} ({scheme})", title_justify="left")
    for col in ("rank", "particle_id", "score", "predicted_label", "confidence"):
        table.add_column(col, justify="right" if col in ("rank", "score", "confidence") else "left")
    for row in summary["top"]:
        score = row["score"]
        table.add_row(row["rank"], row["particle_id"], f"{float(score):.5g}" if score else "",
                      row["predicted_label"], row["confidence"])
    console.print(table)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "top"}))
    else:
        typer.echo(
            f"wrote {summary['n_written']} of {summary['n_scored']} scored particles to {output} "
            f"(scheme {scheme}; {summary['n_unlabelled']} unlabelled in the pool)"
        )
