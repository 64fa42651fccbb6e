"""`cryoal ingest INPUT... -o POOL`: MRC volumes into one HDF5 pool."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import choice_option, output_option

_COMPRESSIONS = ("none", "lzf", "gzip")


def _ingest_modes() -> tuple[str, ...]:
    from cryoal.ingest import INGEST_MODES

    return INGEST_MODES


@command(
    epilog="Example: cryoal ingest demo/particles.star -o pool.h5   |   "
    "cryoal ingest 'subtomos/**/*.mrc' more/ -o pool.h5 --box 32 --skip-bad   |   "
    "cryoal ingest digits/ -o img.h5 --mode image   |   "
    "cryoal ingest mem/images.csv -o seg.h5 --mode segmentation"
)
def ingest(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT",
        help="MRC files (image modes: also PNG, TIFF, NPY), directories (searched recursively), "
        "quoted globs, or STAR/CSV manifests."
    ),
    output: Path = output_option("Pool file (HDF5) to write."),
    box: int | None = typer.Option(
        None, "--box", min=1,
        help="Crop/pad every volume (centred) to this size. Default: the first volume's size.",
    ),
    append: bool = typer.Option(False, "--append", help="Add to an existing pool."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing pool."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Skip bad files (reported on stderr) instead of stopping, writing nothing."
    ),
    mode: str = choice_option(
        "subtomogram", "--mode", choices=_ingest_modes,
        help="subtomogram (3D volumes), image (2D images) or segmentation (2D images or 3D patches + masks)."
    ),
    masks: Path | None = typer.Option(
        None, "--masks", help="Segmentation: directory of masks named like their images (a.mrc -> a.png, "
        "a_mask.png...). A manifest's mask_path column works too."
    ),
    ignore_index: int | None = typer.Option(
        None, "--ignore-index", help="Segmentation: mask value meaning unlabelled (besides -1)."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Segmentation: comma list of class names for mask ids 0, 1, ... "
        "(a mask id beyond them is an error). Default: numbered from the masks."
    ),
    stack: bool = typer.Option(
        False, "--stack", help="Read NX-cubes stacked along z as a stack of volumes (ISPG 401 needs no flag)."
    ),
    id_column: str | None = typer.Option(None, "--id-column", help="Manifest column holding particle ids."),
    label_column: str | None = typer.Option(None, "--label-column", help="Manifest column holding labels."),
    voxel_size: float | None = typer.Option(
        None, "--voxel-size", help="Voxel size in Å to record (default: from the MRC headers)."
    ),
    compression: str = choice_option(
        "none", "--compression", choices=_COMPRESSIONS,
        help="Pool volume compression: none, lzf or gzip (noisy data hardly shrinks)."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, help="Volumes written at a time (default: ~32 MB).", hidden=True
    ),
) -> None:
    """Read MRC volumes (or 2D images, or images with masks), crop/pad to the box, z-score each one,
    and write (or grow) the pool."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cryoal.ingest import IngestOptions
    from cryoal.ingest import ingest as run_ingest

    opts = IngestOptions(
        box=box, mode=mode, append=append, overwrite=overwrite, skip_bad=skip_bad, stack=stack,
        id_column=id_column, label_column=label_column, voxel_size=voxel_size, batch_size=batch_size,
        compression=None if compression == "none" else compression,
        masks_dir=masks, ignore_index=ignore_index,
        classes=[c.strip() for c in classes.split(",")] if classes else None,
    )
    console = stderr_console()
    # the bar only on a terminal: in logs and pipes stderr keeps just the warnings and errors
    progress = Progress(
        TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    task = None

    def on_start(n: int) -> None:
        nonlocal task
        task = progress.add_task("ingest", total=n)
        progress.start()  # only now: nothing is drawn before the inputs are known to be readable

    def on_source() -> None:
        if task is not None:
            progress.advance(task)

    def say(text: str) -> None:  # one unwrapped line on stderr, above the bar when there is one
        progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def on_bad(message: str) -> None:
        say(f"skipped: {message}")

    try:
        result = run_ingest(inputs, output, opts, on_start=on_start, on_source=on_source, on_bad=on_bad)
    finally:
        progress.stop()
    for w in result.warnings:
        say(f"warning: {w}")
    if result.bad:
        say(f"skipped {len(result.bad)} bad input(s)")
    shape = "x".join(str(n) for n in reversed(result.shape))
    voxel = f"{result.voxel_size:g} Å" if result.voxel_size == result.voxel_size else "unknown"
    classes = ", ".join(result.class_names) if result.class_names else "none"
    typer.echo(
        f"{result.pool}: added {result.n_added} particles ({shape}, voxel size {voxel}); "
        f"pool holds {result.n_total}, {result.n_labelled} labelled; classes: {classes}"
        + (f"; skipped {len(result.bad)} bad" if result.bad else "")
    )
