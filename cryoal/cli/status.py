"""`cryoal status POOL`: counts, box, voxel size and sources of a pool."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryoal.cli.app import command


@command(epilog="Example: cryoal status pool.h5 --json")
def status(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of a table."),
) -> None:
    """Show counts (total, labelled per class, unlabelled), box, voxel size and sources."""
    from cryoal.io.pool import open_pool

    with open_pool(pool) as p:
        labels = p.labels
        names = p.class_names
        info = {
            "pool": str(pool), "mode": p.mode, "total": len(p),
            "labelled": int((labels >= 0).sum()), "unlabelled": int((labels < 0).sum()),
            "per_class": {n: int((labels == i).sum()) for i, n in enumerate(names)},
            "box": p.box, "shape": list(p.shape), "voxel_size": p.voxel_size,
        }
    typer.echo(json.dumps(info) if as_json else str(info))
