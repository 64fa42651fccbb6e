"""`cryoal benchmark`: the simulated active-learning experiment with an oracle."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.errors import CryoalError
from cryoal.scoring.names import BATCH_SCHEMES, SCHEME_NAMES


def parse_schemes(text: str | None, known: tuple[str, ...]) -> list[str]:
    """`a,b,c` -> a list, in the given order, without repeats; unknown names are an error.

    Each name is `<scheme>[:<pick>][:uncalibrated]` (`cryoal.benchmark.variants`), e.g.
    `expected:power`; `<scheme>-balanced` is an alias of `<scheme>:balanced`.
    """
    from cryoal.benchmark.variants import parse_variant

    if not text:
        return list(known)
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    for name in names:
        parse_variant(name, known, BATCH_SCHEMES)
    if not names:
        raise CryoalError("--schemes: no scheme given")
    return names


def _check_options(out: Path, resume: bool, **values) -> None:
    for name in ("seeds", "cycles", "epochs", "batch_size"):
        if values[name] < 1:
            raise CryoalError(f"--{name.replace('_', '-')}: must be at least 1, got {values[name]}")
    for name in ("initial", "budget"):
        if values[name] < 1:
            raise CryoalError(f"--{name}: must be at least 1, got {values[name]}")
    if not 0 < values["test_fraction"] < 1:
        raise CryoalError(f"--test-fraction: must be between 0 and 1, got {values['test_fraction']}")
    if not 0 <= values["val_fraction"] < 1:
        raise CryoalError(f"--val-fraction: must be in [0, 1), got {values['val_fraction']}")
    if values["warm_epochs"] is not None and values["warm_epochs"] < 1:
        raise CryoalError(f"--warm-epochs: must be at least 1, got {values['warm_epochs']}")
    if not out.parent.is_dir():
        raise CryoalError(f"{out}: directory {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise CryoalError(f"{out}: exists and is not a directory")
    if not resume and (out / "curves.csv").exists():
        raise CryoalError(f"{out}: already holds a benchmark (curves.csv); use --resume or another directory")


@command(epilog="Example: cryoal benchmark pool.h5 --truth truth.csv -o bench/ --schemes expected,random")
def benchmark(
    pool: Path = typer.Argument(..., help="The pool (HDF5), only read: labels are revealed in memory."),
    truth: Path = typer.Option(..., "--truth", help="CSV/STAR: particle_id,label of EVERY pool particle."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory (created if missing)."),
    schemes: str = typer.Option(
        None, "--schemes", help="Comma list of schemes [default: all]; a score-based scheme with "
        "-balanced (e.g. expected-balanced) picks class-balanced."
    ),
    seeds: int = typer.Option(3, "--seeds", help="Number of seeds (0..N-1): splits, initial set, training."),
    initial: int = typer.Option(50, "--initial", help="Initial labelled set (class-balanced, random)."),
    budget: int = typer.Option(50, "--budget", help="Labels added per cycle."),
    cycles: int = typer.Option(5, "--cycles", help="Training rounds (cycle 0 uses the initial set)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Stratified test split."),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", help="Validation split of the LABELLED set for early stopping (0: none)."
    ),
    epochs: int = typer.Option(20, "--epochs", help="Training epochs per cycle."),
    batch_size: int = typer.Option(16, "--batch-size", help="Training batch size."),
    arch: str = typer.Option(None, "--arch", help="Model architecture [default: the train default]."),
    width: int = typer.Option(None, "--width", help="Channel width of the arch [default: the arch's]."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    patience: int = typer.Option(0, "--patience", help="Early-stopping patience in epochs (0: off)."),
    warm_start: bool = typer.Option(False, "--warm-start", help="Fine-tune the previous cycle's model."),
    warm_epochs: int = typer.Option(
        None, "--warm-epochs", help="Epochs of a fine-tuning cycle [default: --epochs]."
    ),
    mc_passes: int = typer.Option(20, "--mc-passes", help="MC-dropout passes for bald."),
    beta: float = typer.Option(1.0, "--beta", help="Exponent of the sampled picks (e.g. expected:power)."),
    norm: str = typer.Option("l2", "--norm", help="Gradient norm for expected/entropy: l2 or tensor-sum."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT (same options)."),
    augment: bool = typer.Option(
        True, "--augment/--no-augment",
        help="Training augmentation of the pool's mode (off for data without its symmetries, e.g. digits).",
    ),
    log_json: Path = typer.Option(
        None, "--log-json", help="Append JSON-lines events (start, progress, cycle, done) to this file."
    ),
) -> None:
    """Run active learning with an oracle: several schemes, seeds and cycles; write learning curves.

    Outputs in OUT: curves.csv, selections.csv, summary.csv (AUBC), curves.png and run.json.
    """
    from cryoal.benchmark.runner import run_cli
    from cryoal.io.logjson import EventLog

    known = SCHEME_NAMES
    names = parse_schemes(schemes, known)
    _check_options(out, resume, seeds=seeds, cycles=cycles, epochs=epochs, batch_size=batch_size,
                   initial=initial, budget=budget, test_fraction=test_fraction, val_fraction=val_fraction,
                   warm_epochs=warm_epochs)
    from cryoal.scoring.picks import check_pick

    check_pick("power", beta)  # --beta must be > 0 whatever the picks
    with EventLog(log_json, command="benchmark") as event_log:
        run_cli(
            pool, truth, out, stderr_console(),
            schemes=names, seeds=seeds, initial=initial, budget=budget, cycles=cycles,
            test_fraction=test_fraction, val_fraction=val_fraction, epochs=epochs, batch_size=batch_size,
            arch=arch, width=width, lr=lr, patience=patience, warm_start=warm_start, warm_epochs=warm_epochs,
            mc_passes=mc_passes, norm=norm, device=device, resume=resume, augment=augment, beta=beta,
            event_log=event_log,
        )
