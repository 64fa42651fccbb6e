"""`cryoal select POOL -m MODEL --scheme S -n N -o CSV`: which unlabelled particles to label next
(`cryoal select POOL --scheme typiclust -n N -o CSV` needs no model: the pool's embeddings choose)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import choice_option, device_option, norm_names, output_option, scheme_names
from cryoal.scoring.picks import (
    DEFAULT_PICK,
    PICK_HELP,
    PICKS,
    SCHEME_DEFAULT_PICKS,
)
from cryoal.select import DEFAULT_N, FORMATS


@command(epilog="Example: cryoal select pool.h5 -m model.pt --scheme expected -n 100 -o to_label.csv   |   "
         "cryoal select pool.h5 --scheme typiclust -n 50 -o first.csv   (no labels yet: after pretraining)")
def select(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    model: Path | None = typer.Option(
        None, "-m", "--model", show_default=False,
        help="Model checkpoint from `cryoal train` (needed by every scheme but typiclust).",
    ),
    output: Path = output_option("Ranked CSV to write (fill its `label` column)."),
    scheme: str = choice_option(
        "expected", "-s", "--scheme", choices=scheme_names,
        help="Scoring scheme: a score per particle, a diverse batch (coreset, badge), or typiclust "
        "(the pool's embeddings alone, from `cryoal pretrain`; no -m, zero labels allowed).",
    ),
    n: int | None = typer.Option(
        None, "-n", min=0, show_default=False,
        help=f"How many to write (default: {DEFAULT_N}, a first page for the expert, or all if fewer are "
        "unlabelled); 0 writes every unlabelled particle, ranked.",
    ),
    batch_size: int = typer.Option(
        32, "--batch-size", min=1, help="Particles per scoring batch (memory grows)."
    ),
    device: str = device_option(),
    seed: int = typer.Option(
        0, "--seed", help="Seed for --pool-subset, random, bald, badge and the sampled picks.",
    ),
    pool_subset: int | None = typer.Option(
        None, "--pool-subset", min=1,
        help="Score a random K of the unlabelled particles (reproducible: --seed).",
    ),
    norm: str = choice_option(
        "l2", "--norm", choices=norm_names,
        help="Gradient norm for expected/entropy: l2 (global) or tensor-sum (per-tensor sum).",
    ),
    mc_passes: int = typer.Option(20, "--mc-passes", min=1, help="MC-dropout passes for bald."),
    samples: int = typer.Option(
        8, "--samples", min=1, help="Segmentation: label maps sampled per image to estimate `expected` "
        "(an estimate; classifiers use the exact sum over classes)."
    ),
    pick: str = choice_option(
        None, "-p", "--pick", choices=PICKS,
        help="How the N rows are drawn from the scores (score-based schemes): "
        + "; ".join(f"{k}: {v}" for k, v in PICK_HELP.items()) + f". Default: {DEFAULT_PICK} ("
        + ", ".join(f"{k}: {v}" for k, v in SCHEME_DEFAULT_PICKS.items()) + "); the summary says which."
    ),
    beta: float = typer.Option(
        1.0, "--beta", help="Exponent of the sampled picks (power, softrank, power-balanced, classnorm)."
    ),
    balance: bool = typer.Option(
        False, "--balance", help="Alias of --pick balanced: the best of each predicted class in turn."
    ),
    no_calibration: bool = typer.Option(
        False, "--no-calibration", help="Raw softmax and gradients: ignore the temperature that train fitted."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    fmt: str = choice_option(
        "csv", "--format", choices=FORMATS,
        help="csv (the ranked table; its columns are in docs/commands.md), star (a RELION 5 particle STAR "
        "file at -o) or both (CSV at -o, STAR beside it with the suffix .star).",
    ),
    log_json: Path = typer.Option(
        None, "--log-json", help="Append JSON-lines events (start, progress, done) to this file."
    ),
) -> None:
    """Score the unlabelled particles and write N of them, ranked (higher score = label first).

    Which N: --pick power-balanced (the default) draws the N inside each predicted class, in turn;
    --pick top (the paper's rule) writes the N highest scores; --pick cluster-power (on a pool
    with embeddings, `cryoal pretrain`) spreads them over k-means clusters of the embeddings. A
    batch scheme (coreset, badge) chooses a diverse N, and typiclust the most typical particle of
    each uncovered cluster, with no model.

    Under `torchrun --nproc-per-node N -m cryoal select ...` the ranks share the scoring and rank 0
    writes the same file a single process would.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
    from rich.table import Table

    from cryoal.io.logjson import EventLog
    from cryoal.learn.device import resolve_device
    from cryoal.learn.distributed import init_distributed, launched_by_torchrun, shutdown
    from cryoal.select import output_paths, select_pool

    output_paths(output, fmt)  # a bad --format fails before torch.distributed starts
    dist = init_distributed(resolve_device(device).type) if launched_by_torchrun() else None
    main = dist is None or dist.is_main
    console = stderr_console()
    try:
        with EventLog(log_json, command="select", enabled=main) as log, Progress(
            f"scoring ({scheme})", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console, transient=True, disable=not main,
        ) as bar:
            task = bar.add_task("select", total=None)
            step = {"next": 0.0}

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)
                if total and done / total >= step["next"]:  # one event per 5% of the work
                    log.emit("progress", done=done, total=total)
                    step["next"] = done / total + 0.05

            summary = select_pool(
                pool, model, output, scheme=scheme, n=n, batch_size=batch_size, device=device, seed=seed,
                pool_subset=pool_subset, norm=norm, mc_passes=mc_passes, progress=progress, fmt=fmt,
                dist=dist, log=log, samples=samples, balance=balance, pick=pick, beta=beta,
                calibrated=not no_calibration,
            )
    finally:
        if dist is not None:
            shutdown(dist)
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return
    for warning in summary["warnings"]:
        console.print(f"warning: {warning}", highlight=False)
    table = Table(title=f"top of {output} ({scheme}{_pick_words(summary)})", title_justify="left")
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
        where = " and ".join(summary["outputs"].values())
        typer.echo(
            f"wrote {summary['n_written']} of {summary['n_scored']} scored particles to {where} "
            f"(scheme {scheme}{_pick_words(summary)}; "
            f"{summary['n_unlabelled']} unlabelled in the pool)"
        )


def _pick_words(summary: dict) -> str:
    """', pick NAME' for the summary line, marked '(default)' when no --pick chose it."""
    if not summary["pick"]:
        return ""
    if not summary.get("pick_default"):
        return f", pick {summary['pick']}"
    return f", pick {summary['pick']} (default)"
