"""`cryoal extract PICKS --tomograms T -o POOL`: boxes cut out of tomograms at picked coordinates."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _print_summary(summary) -> None:
    """Machine-readable summary on stdout: one total line, then one line per tomogram."""
    vs = "unknown" if math.isnan(summary.voxel_size) else f"{summary.voxel_size:g} Å"
    typer.echo(
        f"extracted {_plural(summary.total('extracted'), 'particle')} from "
        f"{_plural(len(summary.tomograms), 'tomogram')} into {summary.pool} (box {summary.box}, "
        f"bin {summary.bin}, voxel size {vs}); edge-filled {summary.total('edge_filled')}, "
        f"edge-skipped {summary.total('edge_skipped')}, outside {summary.total('outside')}"
    )
    for t in summary.tomograms:
        typer.echo(
            f"  {t.name}: picks {t.picks}, extracted {t.extracted}, edge-filled {t.edge_filled}, "
            f"edge-skipped {t.edge_skipped}, outside {t.outside}  ({t.path})"
        )


@command(
    epilog=(
        "Example: cryoal extract tomograms.star --tomograms tomograms/ -o pool.h5 --box 32 --bin 2  "
        "(picks: RELION 5 rlnCenteredCoordinate{X,Y,Z}Angst, rlnCoordinate{X,Y,Z} pixels, or a "
        "tomo,x,y,z CSV in 0-based pixels)"
    )
)
def extract(
    picks: Path = typer.Argument(
        ..., help="Picks: RELION 5/4 particle STAR, or a CSV with tomo,x,y,z (0-based pixels)."
    ),
    tomograms: Path = typer.Option(
        ..., "--tomograms", "-t",
        help="Directory searched for <tomo>.mrc/.rec/.mrcs/.map (.gz/.bz2, rec_ prefix), a STAR/CSV "
        "listing rlnTomoName,rlnTomoReconstructedTomogram or tomo,path, or one MRC file.",
    ),
    out: Path = typer.Option(..., "-o", "--out", help="Pool file to write (HDF5)."),
    box: int = typer.Option(32, "--box", min=2, help="Box size in voxels, after binning."),
    bin_factor: int = typer.Option(
        1, "--bin", min=1, help="Cut bin·box voxels and bin to box by Fourier cropping."
    ),
    coord_pixel_size: float = typer.Option(
        None, "--coord-pixel-size",
        help="Å per pixel of pixel coordinates when they are of another binning than the tomogram.",
    ),
    tomo_pixel_size: float = typer.Option(
        None, "--tomo-pixel-size",
        help="Tomogram pixel size in Å (default: the MRC header; needed when the header says 0).",
    ),
    skip_edge: bool = typer.Option(
        False, "--skip-edge",
        help="Leave out boxes that cross the tomogram edge (default: fill with the tomogram mean).",
    ),
    append: bool = typer.Option(False, "--append", help="Add to an existing pool."),
) -> None:
    """Cut boxes out of memory-mapped tomograms at picked coordinates into a pool (as `ingest` writes)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cryoal.extract import ExtractOptions, plan_extraction, run_extraction

    console = stderr_console()

    def warn(message: str) -> None:
        console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)

    options = ExtractOptions(
        box=box, bin=bin_factor, coord_pixel_size=coord_pixel_size, tomo_pixel_size=tomo_pixel_size,
        skip_edge=skip_edge,
    )
    plan = plan_extraction(picks, tomograms, options, warn)
    with Progress(
        TextColumn("extracting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True,
    ) as bar:
        task = bar.add_task("extract", total=plan.n_boxes)
        summary = run_extraction(
            plan, out, append=append, warn=warn, progress=lambda n: bar.advance(task, n)
        )
    _print_summary(summary)
