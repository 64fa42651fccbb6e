"""`cryoal pretrain POOL -o ENCODER`: self-supervised pretraining of the trunk on every particle."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import choice_option, device_option, output_option

_METHODS = ("simclr", "vicreg")  # cryoal.learn.pretrain.METHODS, without importing torch for --help


@command(epilog="Example: cryoal pretrain pool.h5 -o encoder.pt --epochs 15 --seed 0")
def pretrain(
    pool: Path = typer.Argument(..., help="Pool file (HDF5); every particle is used, labelled or not."),
    output: Path = output_option("Encoder file to write (.pt)."),
    arch: str = typer.Option("rb3d", "--arch", help="Trunk: dsrf3d, rb3d or resnet3d (as `train --arch`)."),
    width: int = typer.Option(16, "--width", min=4, help="Channel width of the trunk (the arch's `width`)."),
    method: str = choice_option("simclr", "--method", choices=_METHODS,
                                help="Self-supervised loss: simclr (NT-Xent) or vicreg."),
    epochs: int = typer.Option(15, "--epochs", min=1, help="Passes over the pool."),
    batch_size: int = typer.Option(64, "--batch-size", min=2, help="Particles per batch (two views each)."),
    lr: float = typer.Option(1e-3, "--lr", min=0.0, help="AdamW peak learning rate (one-cycle schedule)."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, shuffling and the random views."),
    device: str = device_option("auto (CUDA with mixed precision if present), cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
) -> None:
    """Pretrain the network's trunk on two random views of every particle (contrastive), write the
    encoder, and store every particle's embedding in the pool (`embedding`, tagged with the encoder).

    The views respect the missing wedge: rotations about the beam axis (z), 180° flips about x,
    small shifts, noise without the missing cone, intensity scaling. The encoder is written
    atomically: an interrupted run leaves none. `cryoal train --init ENCODER` fine-tunes from it.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cryoal.io.atomic import check_output_dir
    from cryoal.learn.pretrain import PretrainSettings, pretrain_to_file

    check_output_dir(output)
    settings = PretrainSettings(arch=arch, width=width, method=method, epochs=epochs, batch_size=batch_size,
                                lr=lr, seed=seed, device=device)
    console = stderr_console()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("pretraining", total=None)

        def progress(info: dict) -> None:
            if info["event"] == "batch":
                bar.update(task, description=f"epoch {info['epoch']}  loss {info['loss']:.3f}",
                           total=info["n_batches"], completed=info["batch"])
            elif info["event"] == "epoch":
                bar.console.print(f"epoch {info['epoch']:>3}/{info['epochs']}  loss {info['loss']:.4f}  "
                                  f"{info['seconds']:.1f}s", highlight=False, soft_wrap=True)
            else:
                bar.update(task, description="embedding", total=info["total"], completed=info["done"])

        summary = pretrain_to_file(pool, output, settings, progress)
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"saved {output} (encoder {summary['encoder_digest']}, {summary['method']}, "
                   f"{len(summary['losses'])} epochs, final loss {summary['losses'][-1]:.4f}, "
                   f"{summary['wall_s']:.0f} s on {summary['device']}); embedded {summary['n_particles']} "
                   f"particles ({summary['embedding_dim']}-d) into {pool}")
