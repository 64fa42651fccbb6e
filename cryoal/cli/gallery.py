"""`cryoal gallery POOL -o DIR`: montage PNGs of particles and, with --html, a labelling page."""

from __future__ import annotations

from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import output_option
from cryoal.errors import OptionError


@command(
    epilog=(
        "Example: cryoal gallery pool.h5 --from to_label.csv -o gallery/ --html  "
        "(open gallery/index.html, label, Export labels, then: cryoal label pool.h5 labels.csv)"
    )
)
def gallery(
    pool: Path = typer.Argument(..., help="Pool file (HDF5)."),
    out: Path = output_option("Output directory (created; a previous gallery is replaced)."),
    from_csv: Path = typer.Option(
        None, "--from", help="Ranked selection CSV from `cryoal select` (shown in rank order)."
    ),
    ids: str = typer.Option(None, "--ids", help="Particle ids 'a,b,c', or '@file' with one id per line."),
    labelled: bool = typer.Option(False, "--labelled", help="Show a few labelled examples of each class."),
    per_class: int = typer.Option(8, "--per-class", min=1, help="Examples per class with --labelled."),
    limit: int = typer.Option(None, "--limit", min=1, help="Show only the first N particles."),
    predictions: Path = typer.Option(
        None, "--predictions", help="`cryoal predict` CSV: captions show its predicted class and confidence."
    ),
    masks: Path = typer.Option(
        None, "--masks", help="Segmentation: predicted masks (.npy, one per pool particle) to overlay."
    ),
    slab: int = typer.Option(
        None, "--slab", min=1, help="Slab thickness in voxels averaged for each view (default: box/4)."
    ),
    lowpass: float = typer.Option(
        None, "--lowpass", min=0.0,
        help="Low-pass filter in Å; 0 = off (default: 3.5 voxels: 35 Å at 10 Å/voxel).",
    ),
    clip: float = typer.Option(
        1.0, "--clip", min=0.0, max=49.0, help="Contrast: clip this percentage at each end."
    ),
    invert: bool = typer.Option(False, "--invert", help="Invert contrast (dense regions dark)."),
    per_page: int = typer.Option(24, "--per-page", min=1, help="Particles per montage page."),
    html: bool = typer.Option(False, "--html", help="Also write index.html, a static labelling page."),
    force: bool = typer.Option(
        False, "--force", help="Replace the output directory even if it is not a gallery."
    ),
) -> None:
    """Render particles as montage PNGs (XY, XZ, YZ slab averages, projection) and a labelling page."""
    from cryoal.gallery import (
        GalleryOptions,
        apply_predictions,
        build_gallery,
        from_ids,
        from_selection,
        labelled_examples,
    )
    from cryoal.gallery.selection import parse_ids
    from cryoal.io.pool import open_pool

    chosen = [name for name, on in (("--from", from_csv is not None), ("--ids", ids is not None),
                                    ("--labelled", labelled)) if on]
    if len(chosen) != 1:
        what = "give one of" if not chosen else f"{' and '.join(chosen)} conflict; give only one of"
        raise OptionError(f"{what} --from CSV, --ids LIST or --labelled")

    console = stderr_console()
    with open_pool(pool) as p:
        if from_csv is not None:
            items = from_selection(p, from_csv, limit=limit)
        elif ids is not None:
            items = from_ids(p, parse_ids(ids))[:limit]
        else:
            items = labelled_examples(p, per_class)[:limit]
        if predictions is not None:
            apply_predictions(items, predictions)
        opts = GalleryOptions(
            slab=slab, lowpass_A=lowpass, clip_percent=clip, invert=invert, per_page=per_page,
            html=html, force=force, masks_path=masks,
        )
        with console.status(f"rendering {len(items)} particles") as status:
            result = build_gallery(
                p, items, out, opts, progress=lambda n: status.update(f"rendered {n}/{len(items)} particles")
            )
    console.print(
        f"{result.n_particles} particles on {len(result.pages)} page(s) in {result.out_dir}"
        + (f"; labelling page {result.html}" if result.html else ""),
        soft_wrap=True,
    )
    # stdout: the written files, one per line, for scripts.
    for path in result.pages:
        typer.echo(str(path))
    if result.html is not None:
        typer.echo(str(result.html))


__all__ = ["gallery"]
