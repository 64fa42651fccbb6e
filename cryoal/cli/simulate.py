"""`cryoal simulate OUT_DIR`: synthetic subtomograms (or whole tomograms with picks) and their truth."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from cryoal.cli.app import command, stderr_console
from cryoal.errors import CryoalError, OptionError


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise OptionError(f"--tomo-shape must be three positive integers X,Y,Z (got {text!r})")
    return parts  # type: ignore[return-value]


@command(
    epilog="Example: cryoal simulate demo/ --classes 5 --per-class 200 --snr 0.1 --defocus 5 --seed 1\n\n"
    "Tomograms: cryoal simulate tomo_demo/ --tomograms 4 --classes 5 --per-class 40 --false-picks 0.2"
)
def simulate(
    out_dir: Path = typer.Argument(..., help="Output directory (created; must be empty unless --force)."),
    classes: int = typer.Option(5, "--classes", "-k", min=1, help="Number of classes (distinct shapes)."),
    per_class: int = typer.Option(
        100, "--per-class", "-n", min=1,
        help="Particles per class (with --tomograms: in all, spread over them).",
    ),
    snr: float = typer.Option(0.1, "--snr", help="Signal variance / noise variance; inf = no noise."),
    box: int = typer.Option(32, "--box", min=4, help="Box size in voxels (with --tomograms: the SNR's box)."),
    voxel_size: float = typer.Option(10.0, "--voxel-size", help="Voxel size in Å."),
    tilt_range: float = typer.Option(60.0, "--tilt-range", help="Tilts ±degrees about y; 90 = no wedge."),
    defocus: float | None = typer.Option(
        None, "--defocus", help="Defocus in µm underfocus (300 kV, Cs 2 mm); no CTF when omitted."
    ),
    shift: float = typer.Option(1.0, "--shift", min=0.0, help="Std of the random particle shift, in voxels."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (poses, noise, order; not the shapes)."),
    seed_labels: int = typer.Option(
        0, "--seed-labels", min=0, help="Also write seed_labels.csv with this many truth labels per class."
    ),
    tomograms: int = typer.Option(
        0, "--tomograms", min=0, help="Write this many tomograms and picks instead."
    ),
    tomo_shape: str = typer.Option("256,256,100", "--tomo-shape", help="Tomogram size X,Y,Z in voxels."),
    pick_jitter: float = typer.Option(
        0.0, "--pick-jitter", min=0.0, help="Std of the pick error per axis, in Å."
    ),
    false_picks: float = typer.Option(
        0.0, "--false-picks", min=0.0,
        help="Background picks (label 'background') as a fraction of true picks.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace a previous simulation in OUT_DIR."),
    membranes: int = typer.Option(
        0, "--membranes", min=0,
        help="Write this many membrane images with masks (segmentation mode) instead; uses --box, "
        "--snr, --seed and --seed-labels (masks given in images.csv)."
    ),
    membrane_ndim: int = typer.Option(
        2, "--membrane-ndim", min=2, max=3, help="2 (images) or 3 (patches) for --membranes."
    ),
) -> None:
    """Write simulated subtomograms: one MRC per particle, particles.star and truth.csv.

    Classes are pseudo-atomic shapes with point-group symmetry, in uniform random orientations.
    Half the noise goes in before the missing wedge and CTF, half after.
    With --tomograms N: N whole tomograms, RELION 5 picks (tomograms.star) and truth tables.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from cryoal._version import __version__
    from cryoal.simulate.output import prepare_out_dir, write_particle_set, write_tomogram_set
    from cryoal.simulate.particles import Imaging, check_fit, iter_particles, plan_particles
    from cryoal.simulate.shapes import class_names
    from cryoal.simulate.tomograms import iter_tomograms, plan_tomograms

    if membranes:
        _simulate_membranes(out_dir, membranes, box, membrane_ndim, snr, seed_labels, seed)
        return
    imaging = Imaging(box, voxel_size, tilt_range, defocus, snr)
    try:
        imaging.check()
        shape_xyz = _parse_shape(tomo_shape)
        plans = None
        if tomograms:
            plans = plan_tomograms(
                tomograms, classes, per_class, shape_xyz, voxel_size, box, pick_jitter, false_picks, seed
            )
    except ValueError as exc:  # the simulators name the option whose value they refuse
        raise OptionError(str(exc)) from None
    console = stderr_console()
    cut = check_fit(classes, box, voxel_size)
    if cut and not tomograms:
        console.print(
            f"warning: {', '.join(cut)} reach past a {box}^3 box at {voxel_size:g} Å/voxel and are cut "
            "at its edge (use a larger --box or --voxel-size)"
        )
    names = class_names(classes)
    prepare_out_dir(out_dir, force)
    command_line = (
        f"cryoal simulate {out_dir} --classes {classes} --per-class {per_class} --snr {snr:g} --box {box} "
        f"--voxel-size {voxel_size:g} --tilt-range {tilt_range:g}"
        + (f" --defocus {defocus:g}" if defocus is not None else "")
        + f" --shift {shift:g} --seed {seed}"
        + (f" --seed-labels {seed_labels}" if seed_labels else "")
        + (
            f" --tomograms {tomograms} --tomo-shape {','.join(map(str, shape_xyz))}"
            f" --pick-jitter {pick_jitter:g} --false-picks {false_picks:g}"
            if tomograms
            else ""
        )
    )
    info = {
        "cryoal_version": __version__, "command": command_line,
        "mode": "tomograms" if tomograms else "particles", "classes": names, "per_class": per_class,
        "snr": None if math.isinf(snr) else snr, "box": box, "voxel_size": voxel_size,
        "tilt_range": tilt_range, "defocus_um": defocus, "voltage_kv": 300, "cs_mm": 2.0,
        "amplitude_contrast": 0.07, "seed": seed,
    }
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        if plans is None:
            plan = plan_particles(per_class, classes, shift, seed)
            info["shift_std_voxels"] = shift
            task = progress.add_task("simulating particles", total=len(plan))
            batches = iter_particles(plan, imaging, seed, progress=lambda n: progress.advance(task, n))
            counts = write_particle_set(out_dir, plan, names, imaging, batches, seed, seed_labels, info)
        else:
            info.update(tomograms=tomograms, tomo_shape_xyz=list(shape_xyz), pick_jitter_angstrom=pick_jitter,
                        false_picks=false_picks)
            task = progress.add_task("simulating tomograms", total=len(plans))
            tomos = iter_tomograms(plans, classes, imaging, seed, lambda n: progress.advance(task, n))
            counts = write_tomogram_set(out_dir, plans, names, imaging, tomos, seed, seed_labels, info)
    if plans is None:
        typer.echo(f"wrote {counts['particles']} particles of {classes} classes to {out_dir}/ "
                   "(particles/*.mrc, particles.star, truth.csv)")
    else:
        typer.echo(
            f"wrote {counts['tomograms']} tomograms with {counts['particles']} particles and "
            f"{counts['false_picks']} false picks to {out_dir}/ (tomograms/*.mrc, tomograms.star, truth.csv, "
            "truth_positions.csv)"
        )


def _simulate_membranes(
    out_dir: Path, n: int, box: int, ndim: int, snr: float, labelled: int, seed: int
) -> None:
    """`--membranes N`: membrane images and masks for the segmentation mode (cryoal.simulate.membranes)."""
    from cryoal.simulate.membranes import write_membrane_set

    if box < 8:
        raise OptionError(f"--box must be at least 8 with --membranes (got {box})")
    if not out_dir.parent.is_dir():
        raise CryoalError(f"{out_dir}: directory {out_dir.parent} does not exist")
    info = write_membrane_set(out_dir, n, box, ndim, snr, min(labelled, n), seed)
    typer.echo(
        f"wrote {info['n']} membrane {'images' if ndim == 2 else 'patches'} {tuple(info['shape'])} to "
        f"{out_dir}/ (images/, masks/, images.csv with {info['labelled']} masks, truth_masks.csv; "
        f"{info['membrane_fraction']:.1%} membrane pixels)"
    )
