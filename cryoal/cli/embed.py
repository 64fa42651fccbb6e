"""`cryoal embed POOL -m ENCODER`: (re)compute every particle's embedding, e.g. after `ingest --append`."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import device_option


@command(epilog="Example: cryoal embed pool.h5 -m encoder.pt")
def embed(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    encoder: Path = typer.Option(..., "-m", "--encoder", help="Encoder file from `cryoal pretrain -o`."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Particles per inference batch."),
    device: str = device_option(),
) -> None:
    """Embed every particle of the pool with the encoder's trunk and store it in the pool
    (atomically; the previous embedding is replaced)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from cryoal.learn.embed import embed_pool

    with Progress("embedding", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=stderr_console(), transient=True) as bar:
        task = bar.add_task("embed", total=None)
        n, digest = embed_pool(pool, encoder, device=device, batch_size=batch_size,
                               progress=lambda info: bar.update(task, completed=info["done"],
                                                                total=info["total"]))
    typer.echo(f"embedded {n} particles of {pool} with encoder {digest}")
