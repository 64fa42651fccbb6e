"""`cryoal train POOL -o MODEL`: train the 3D CNN on the labelled particles and save a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import device_option, output_option

_DEFAULT_EPOCHS = 30


def _json_safe(value):
    """Plain Python types, with NaN/inf as null so any strict JSON reader parses the line."""
    import math

    from cryoal.learn.checkpoint import plain

    value = plain(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_metrics_table(metrics: dict, console) -> None:
    """Per-class accuracy, the confusion matrix and the summary line, as rich tables."""
    from rich.table import Table

    names = metrics["class_names"]
    where = metrics["evaluated_on"]
    console.print(f"per-class accuracy ({where} set)", highlight=False)
    per_class = Table()
    for col in ("class", "train", "val", "accuracy"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for i, name in enumerate(names):
        per_class.add_row(
            name, str(metrics["n_train_per_class"][i]), str(metrics["n_val_per_class"][i]),
            _fmt(metrics["per_class_accuracy"][name]),
        )
    console.print(per_class)
    console.print(f"confusion matrix ({where} set; rows: true class, columns: predicted)", highlight=False)
    cm = Table()
    cm.add_column("true \\ pred")
    for name in names:
        cm.add_column(name, justify="right")
    for name, row in zip(names, metrics["confusion_matrix"], strict=True):
        cm.add_row(name, *(str(v) for v in row))
    console.print(cm)
    if metrics["val_accuracy"] is None:
        console.print(
            f"trained on all {metrics['n_train']} labels for {metrics['epochs_run']} epochs, kept the last "
            f"epoch (no validation split); training-set accuracy {metrics['accuracy']:.3f}",
            highlight=False,
        )
    else:
        stop = ", stopped early" if metrics["stopped_early"] else ""
        console.print(
            f"val accuracy {metrics['val_accuracy']:.3f} at best epoch {metrics['best_epoch']} of "
            f"{metrics['epochs_run']}{stop} (train {metrics['n_train']}, val {metrics['n_val']}); "
            f"{metrics['seconds_per_epoch']:.1f} s/epoch on {metrics['device']}",
            highlight=False,
        )
    if metrics.get("mean_iou") is not None:  # segmentation: pixel accuracy above, mean IoU here
        console.print(f"mean IoU {metrics['mean_iou']:.3f} ({where} set, over pixels)", highlight=False)
    cal = metrics.get("calibration") or {}
    if cal.get("applied"):
        console.print(
            f"calibration: softmax temperature {cal['temperature']:.3g} fitted on the {cal['n_val']} "
            f"validation particles (NLL {cal['nll_before']:.3f} -> {cal['nll_after']:.3f}, "
            f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}); select and predict use it "
            "(--no-calibration to switch off)",
            highlight=False,
        )
    elif cal:
        console.print(f"calibration: none, T = 1 ({cal.get('reason')}); probabilities are the raw softmax",
                      highlight=False)


@command(epilog="Example: cryoal train pool.h5 -o model.pt --epochs 30 --seed 0")
def train(
    pool: Path = typer.Argument(..., help="Pool file (HDF5) with labelled particles."),
    output: Path = output_option("Model checkpoint to write (.pt)."),
    arch: str = typer.Option(
        None, "--arch", help="Network: dsrf3d, rb3d or resnet3d (default: the mode's default, rb3d)."
    ),
    epochs: int = typer.Option(_DEFAULT_EPOCHS, "--epochs", min=1, help="Maximum number of epochs."),
    batch_size: int = typer.Option(16, "--batch-size", min=2, help="Training batch size (at least 2)."),
    lr: float = typer.Option(
        None, "--lr", min=0.0,
        help="AdamW learning rate (cosine decay); default 1e-3, 3e-2 with --freeze-trunk.",
    ),
    weight_decay: float = typer.Option(1e-2, "--weight-decay", min=0.0, help="AdamW weight decay."),
    seed: int = typer.Option(
        0, "--seed", help="Seed for the split, initialisation, shuffling and augmentation."
    ),
    val_fraction: float = typer.Option(
        0.2, "--val-fraction", min=0.0, max=0.95,
        help="Share of each class held out for validation (at least 1 per class with 2+ labels). "
        "0 trains on everything and keeps the last epoch.",
    ),
    patience: int = typer.Option(
        10, "--patience", min=1, help="Stop after this many epochs without a better val accuracy."
    ),
    device: str = device_option("auto (CUDA with mixed precision if present), cpu, cuda or cuda:N."),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="Wedge-safe augmentation (rotations about z, flips, shifts)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object on stdout."),
    log_json: Path = typer.Option(None, "--log-json", help="Append JSON-lines progress events to this file."),
    init: Path = typer.Option(
        None, "--init", help="Encoder from `cryoal pretrain`: fine-tune from its pretrained trunk (its arch "
        "and width) instead of random weights."
    ),
    freeze_trunk: bool = typer.Option(
        False, "--freeze-trunk", help="With --init: train the head alone on the pretrained features (a "
        "linear probe)."
    ),
) -> None:
    """Train the classifier on the labelled particles; keep the weights with the best val accuracy.

    Best epoch: highest validation accuracy; ties go to the lower validation loss (both shown on
    each epoch's line).

    Calibration: a softmax temperature is fitted on the validation split and kept only with at
    least 20 validation particles and when it lowers their NLL by more than chance (likelihood-ratio
    test at the 5% level); otherwise T = 1. `--json` says which, under "calibration".

    Under `torchrun --nproc-per-node N -m cryoal train ...` the ranks train data-parallel (DDP) and
    rank 0 alone prints, logs and writes the checkpoint.
    """
    from rich.console import Console

    from cryoal.io.atomic import check_output_dir
    from cryoal.learn.device import resolve_device
    from cryoal.learn.distributed import DistContext, init_distributed, launched_by_torchrun, shutdown

    check_output_dir(output)  # fail before training, not after
    dist = init_distributed(resolve_device(device).type) if launched_by_torchrun() else DistContext()
    try:
        metrics = _train(
            pool, output, dist, log_json, val_fraction=val_fraction, arch=arch, epochs=epochs,
            batch_size=batch_size, weight_decay=weight_decay, patience=patience, seed=seed,
            device=device, augment=augment, init_encoder=init, freeze_trunk=freeze_trunk,
            **({} if lr is None else {"lr": lr}),
        )
    finally:
        shutdown(dist)
    if not dist.is_main:  # a torchrun rank other than 0: rank 0 reports
        return
    console = stderr_console()
    for name in metrics["classes_without_labels"]:
        console.print(
            f"warning: class '{name}' has no labels yet; the model will rarely predict it", highlight=False
        )
    if as_json:
        typer.echo(json.dumps(_json_safe({"output": str(output), **metrics})))
    else:
        print_metrics_table(metrics, Console(highlight=False))
        typer.echo(f"saved {output}")


def augmentation_line(pool: Path, augment: bool) -> str:
    """The one line `train` prints on stderr: which augmentation trains the model, and how to turn
    it off (the default suits cryo-EM data, not every 2D data set: a mirrored digit is no digit)."""
    from cryoal.io.pool import open_pool
    from cryoal.modes import get_mode

    if not augment:
        return "augmentation: none (--no-augment)"
    with open_pool(pool) as p:
        mode = p.mode
    return (f"augmentation: {get_mode(mode).augmentation} ({mode} mode default); --no-augment turns "
            "it off for data without these symmetries")


def _train(pool: Path, output: Path, dist, log_json: Path | None, **train_kwargs) -> dict:
    """Train (on this rank's share under torchrun) and save on rank 0; returns the metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cryoal.io.logjson import EventLog
    from cryoal.learn.checkpoint import save_checkpoint
    from cryoal.learn.distributed import run_on_all_ranks
    from cryoal.learn.train import train_from_pool

    console = stderr_console()
    started = False
    with EventLog(log_json, command="train", enabled=dist.is_main) as log, Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=True, disable=not dist.is_main,
    ) as bar:
        task = bar.add_task("training", total=None)

        def progress(info: dict) -> None:
            nonlocal started
            if not started and dist.is_main:  # said once training runs: a bad input fails without it
                started = True
                bar.console.print(augmentation_line(pool, train_kwargs["augment"]), soft_wrap=True,
                                  markup=False, highlight=False)
            if info["event"] == "batch":
                bar.update(task, description=f"epoch {info['epoch']}", total=info["n_batches"],
                           completed=info["batch"])
                return
            if not dist.is_main:
                return
            val = info.get("val_accuracy")
            val_loss = "" if info.get("val_loss") is None else f"val loss {info['val_loss']:.4f}  "
            bar.console.print(
                f"epoch {info['epoch']:>3}/{info['epochs']}  loss {info['train_loss']:.4f}  "
                f"train acc {info['train_accuracy']:.3f}  {val_loss}val acc {_fmt(val)}  "
                f"best epoch {info['best_epoch']}  {info['seconds']:.1f}s",
                highlight=False, soft_wrap=True,  # one line per epoch, also in an 80-column log
            )
            log.emit("epoch", **{k: v for k, v in info.items() if k != "event"})

        model, metrics, meta = train_from_pool(pool, progress=progress, dist=dist, **train_kwargs)
        # rank 0 writes; if that fails, every rank reports it
        run_on_all_ranks(lambda: save_checkpoint(output, model, meta) if dist.is_main else None, dist)
        summary = {k: v for k, v in metrics.items() if k != "history"}
        log.emit("done", output=str(output), **summary)
    return metrics
