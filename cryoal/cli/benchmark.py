"""`cryoal benchmark`: the simulated active-learning experiment with an oracle."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.benchmark.variants import BALANCED_SUFFIX, UNCALIBRATED
from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import choice_option, device_option, norm_names, output_option, scheme_names
from cryoal.errors import CryoalError, OptionError


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
        parse_variant(name, known)
    if not names:
        raise OptionError("--schemes: no scheme given")
    return names


def _check_options(out: Path, resume: bool, test_fraction: float, val_fraction: float) -> None:
    """What the parser cannot check: open intervals, and the output directory."""
    if not 0 < test_fraction < 1:
        raise OptionError(f"--test-fraction must be between 0 and 1, both excluded (got {test_fraction:g})")
    if not val_fraction < 1:
        raise OptionError(f"--val-fraction must be less than 1 (got {val_fraction:g})")
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
    out: Path = output_option("Output directory (created if missing)."),
    schemes: str = typer.Option(
        None, "--schemes", help="Comma list of schemes [default: every select --scheme; typiclust only "
        "with --pretrain]. Each is "
        f"SCHEME[:PICK][:{UNCALIBRATED}]: a select --scheme, optionally with a select --pick "
        f"(score-based schemes) and :{UNCALIBRATED} for --no-calibration, e.g. expected:power or "
        f"margin:balanced:{UNCALIBRATED}; SCHEME{BALANCED_SUFFIX} is SCHEME:balanced."
    ),
    seeds: int = typer.Option(
        3, "--seeds", min=1, help="Number of seeds (0..N-1): splits, initial set, training."
    ),
    initial: int = typer.Option(
        50, "--initial", min=1, help="Initial labelled set (class-balanced, random)."
    ),
    budget: int = typer.Option(50, "--budget", min=1, help="Labels added per cycle."),
    cycles: int = typer.Option(5, "--cycles", min=1, help="Training rounds (cycle 0 uses the initial set)."),
    test_fraction: float = typer.Option(
        0.2, "--test-fraction", min=0.0, max=1.0, help="Stratified test split."
    ),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", min=0.0, max=1.0,
        help="Validation split of the LABELLED set for early stopping (0: none).",
    ),
    epochs: int = typer.Option(20, "--epochs", min=1, help="Training epochs per cycle."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Training batch size."),
    arch: str = typer.Option(None, "--arch", help="Model architecture [default: the train default]."),
    width: int = typer.Option(
        None, "--width", min=1, help="Channel width of the arch [default: the arch's]."
    ),
    lr: float = typer.Option(
        None, "--lr", min=0.0, help="AdamW learning rate [default: 1e-3, 3e-2 with --freeze-trunk]."
    ),
    patience: int = typer.Option(0, "--patience", min=0, help="Early-stopping patience in epochs (0: off)."),
    warm_start: bool = typer.Option(False, "--warm-start", help="Fine-tune the previous cycle's model."),
    warm_epochs: int = typer.Option(
        None, "--warm-epochs", min=1, help="Epochs of a fine-tuning cycle [default: --epochs]."
    ),
    mc_passes: int = typer.Option(20, "--mc-passes", min=1, help="MC-dropout passes for bald."),
    beta: float = typer.Option(1.0, "--beta", help="Exponent of the sampled picks (e.g. expected:power)."),
    norm: str = choice_option(
        "l2", "--norm", choices=norm_names, help="Gradient norm for expected/entropy: l2 or tensor-sum."
    ),
    device: str = device_option(),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT (same options)."),
    augment: bool = typer.Option(
        True, "--augment/--no-augment",
        help="Training augmentation of the pool's mode (off for data without its symmetries, e.g. digits).",
    ),
    pretrain: bool = typer.Option(
        False, "--pretrain", help="Per seed, pretrain the trunk self-supervised (as `cryoal pretrain`) on "
        "the non-test particles only; every model of the seed starts from it (as `train --init`), "
        "and the embedding feeds typiclust and the cluster picks.",
    ),
    pretrain_epochs: int = typer.Option(
        None, "--pretrain-epochs", min=1, help="Pretraining epochs [default: cryoal pretrain's]."
    ),
    initial_scheme: str = choice_option(
        "random", "--initial-scheme", choices=("random", "typiclust"),
        help="How each seed's initial set is drawn: random (class-balanced) or typiclust on the "
        "embedding from zero labels (needs --pretrain).",
    ),
    freeze_trunk: bool = typer.Option(
        False, "--freeze-trunk", help="With --pretrain: every model trains the head alone on the seed's "
        "frozen encoder trunk (as `train --init --freeze-trunk`), warm-start cycles included.",
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

    names = parse_schemes(schemes, scheme_names())
    if not schemes and not pretrain:  # the default: every scheme that can run without an embedding
        from cryoal.scoring import SCHEMES

        names = [n for n in names if not getattr(SCHEMES[n], "embedding", False)]
    _check_options(out, resume, test_fraction, val_fraction)
    from cryoal.scoring.picks import check_pick

    check_pick("power", beta)  # --beta must be > 0 whatever the picks
    with EventLog(log_json, command="benchmark") as event_log:
        run_cli(
            pool, truth, out, stderr_console(),
            schemes=names, seeds=seeds, initial=initial, budget=budget, cycles=cycles,
            test_fraction=test_fraction, val_fraction=val_fraction, epochs=epochs, batch_size=batch_size,
            arch=arch, width=width, lr=lr, patience=patience, warm_start=warm_start, warm_epochs=warm_epochs,
            mc_passes=mc_passes, norm=norm, device=device, resume=resume, augment=augment, beta=beta,
            pretrain=pretrain, pretrain_epochs=pretrain_epochs, initial_scheme=initial_scheme,
            freeze_trunk=freeze_trunk, event_log=event_log,
        )
