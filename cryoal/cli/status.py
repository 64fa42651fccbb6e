"""`cryoal status POOL`: counts, box, voxel size, label rounds and sources of a pool."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cryoal.cli.app import command


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


@command(
    epilog="Example: cryoal status pool.h5   |   cryoal status pool.h5 --json | jq .per_class   |   "
    "cryoal status pool.h5 --check"
)
def status(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    check: bool = typer.Option(
        False, "--check", help="Also read every particle's volume back: exit 1, naming the first bad "
        "particle, if any is unreadable (a damaged file) or not finite. Without it the volumes are not read.",
    ),
) -> None:
    """Show counts (total, labelled per class, unlabelled), box, voxel size, label rounds and sources.

    Only the pool's index is read, so a damaged volume goes unnoticed unless --check is given.
    """
    from cryoal.errors import PoolError
    from cryoal.io.summary import check_volumes, pool_summary

    info = pool_summary(pool)
    if check:
        result = check_volumes(pool)
        if result["n_bad"]:
            first = result["bad"][0]
            raise PoolError(
                f"{pool}: volume data of {result['n_bad']} of {result['checked']} particles is bad; "
                f"first: particle '{first['particle_id']}' (index {first['index']}) {first['problem']}; "
                "make the pool again (cryoal ingest or extract)"
            )
        info["check"] = result
    if as_json:
        typer.echo(json.dumps(info))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cryoal pool {info['pool']}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("particles", str(info["total"]))
    table.add_row("labelled", str(info["labelled"]))
    for name, n in info["per_class"].items():
        table.add_row(f"  {name}", str(n))
    table.add_row("unlabelled", str(info["unlabelled"]))
    rounds = info["label_rounds"]
    table.add_row("label rounds", ", ".join(f"{r}: {n}" for r, n in rounds.items()) if rounds else "none")
    table.add_row("mode", info["mode"])
    axes = "(x, y, z)" if len(info["shape"]) == 3 else "(x, y)"
    table.add_row(f"shape {axes}", " x ".join(str(n) for n in reversed(info["shape"])))
    table.add_row("box", str(info["box"]))
    vs = info["voxel_size"]
    table.add_row("voxel size", f"{vs:g} Å" if vs is not None else "unknown")
    table.add_row("source files", f"{info['n_source_files']} in {info['n_source_dirs']} director"
                  + ("y" if info["n_source_dirs"] == 1 else "ies"))
    table.add_row("tomograms", str(info["n_tomograms"]))
    if info["edge"] is not None:
        table.add_row("boxes at a tomogram edge", str(info["edge"]))
    table.add_row("file size", _size(info["file_bytes"]))
    if check:
        table.add_row("volume data", f"all {info['check']['checked']} read back, finite")
    Console(highlight=False, soft_wrap=True).print(table)
