"""`cryoal extract PICKS --tomograms T -o POOL` (or `--copick CONFIG.json`): boxes cut out of tomograms
at picked coordinates."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.cli.options import output_option
from cryoal.errors import OptionError


def _names(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


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
        "tomo,x,y,z CSV in 0-based pixels).  From a copick project: cryoal extract --copick copick.json "
        "-o pool.h5 --object ribosome,apoferritin --user alice --labels-from-object"
    )
)
def extract(
    picks: Path = typer.Argument(
        None, help="Picks: RELION 5/4 particle STAR, or a CSV with tomo,x,y,z (0-based pixels). "
        "Not with --copick.",
    ),
    tomograms: Path = typer.Option(
        None, "--tomograms", "-t",
        help="Directory searched for <tomo>.mrc/.rec/.mrcs/.map (.gz/.bz2, rec_ prefix) or <tomo>.zarr "
        "(OME-Zarr), a STAR/CSV listing rlnTomoName,rlnTomoReconstructedTomogram or tomo,path, or one "
        "MRC file or .zarr directory.",
    ),
    out: Path = output_option("Pool file to write (HDF5)."),
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
    copick_config: Path = typer.Option(
        None, "--copick", help="Read picks and OME-Zarr tomograms from this copick project config "
        "(needs the copick extra) instead of PICKS and --tomograms.", rich_help_panel="copick",
    ),
    objects: str = typer.Option(
        None, "--object", help="Objects to extract, comma-separated (default: every particle object "
        "with picks).", rich_help_panel="copick",
    ),
    users: str = typer.Option(None, "--user", help="Only picks by these users (comma-separated).",
                              rich_help_panel="copick"),
    sessions: str = typer.Option(None, "--session", help="Only picks of these sessions (comma-separated).",
                                 rich_help_panel="copick"),
    voxel_spacing: float = typer.Option(
        None, "--voxel-spacing", help="Voxel spacing in Å to read (default: the only one present); a "
        "spacing a run does not store is read from a pyramid level of a finer one.", rich_help_panel="copick",
    ),
    tomo_type: str = typer.Option(
        None, "--tomo-type", help="Tomogram type (default: wbp, or the only one present).",
        rich_help_panel="copick",
    ),
    labels_from_object: bool = typer.Option(
        False, "--labels-from-object", help="Label each particle with its pick's object name (existing "
        "annotations become seed labels).", rich_help_panel="copick",
    ),
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
    copick_flags = {"--object": objects, "--user": users, "--session": sessions,
                    "--voxel-spacing": voxel_spacing, "--tomo-type": tomo_type,
                    "--labels-from-object": labels_from_object or None}
    if copick_config is not None:
        for flag, value in (("PICKS", picks), ("--tomograms", tomograms),
                            ("--coord-pixel-size", coord_pixel_size), ("--tomo-pixel-size", tomo_pixel_size)):
            if value is not None:
                raise OptionError(f"{flag}: not used with --copick (the project gives picks and tomograms)")
        from cryoal.copick.source import CopickOptions, plan_copick

        plan = plan_copick(CopickOptions(
            config=copick_config, objects=_names(objects), users=_names(users), sessions=_names(sessions),
            voxel_spacing=voxel_spacing, tomo_type=tomo_type, labels_from_object=labels_from_object,
        ), options, warn)
    else:
        used = next((flag for flag, value in copick_flags.items() if value is not None), None)
        if used is not None:
            raise OptionError(f"{used}: only with --copick CONFIG.json")
        if picks is None or tomograms is None:
            raise OptionError("give PICKS and --tomograms, or --copick CONFIG.json")
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
