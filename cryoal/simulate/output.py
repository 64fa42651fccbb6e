"""Write a simulated set to disk: MRC files, RELION STAR, truth tables and the parameters used.

MRC files go to a hidden temporary directory that is renamed into place when all are written,
and the STAR/CSV files are written (atomically) last, so an interrupted run never leaves a STAR
that names missing files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import mrcfile
import numpy as np

from cryoal.errors import CryoalError
from cryoal.io.atomic import atomic_open, remove_stale_temps
from cryoal.io.star import write_star
from cryoal.io.tables import write_csv
from cryoal.simulate.particles import Imaging, ParticlePlan, particle_rng
from cryoal.simulate.physics import AMPLITUDE_CONTRAST, CS_MM, VOLTAGE_KV
from cryoal.simulate.tomograms import BACKGROUND, SimulatedTomogram, TomogramPlan

PARTICLE_DIR = "particles"
TOMOGRAM_DIR = "tomograms"
# Everything a previous `cryoal simulate` may have written: `--force` removes these and only these.
OUTPUT_FILES = (
    "particles.star", "tomograms.star", "truth.csv", "truth_positions.csv", "seed_labels.csv",
    "simulation.json",
)
_STREAM_LABELS, _STREAM_COORDS = 20, 21
PSEUDO_TOMO_SIZE = (256, 256, 100)  # placeholder coordinates in particle mode (no tomogram exists)
PSEUDO_TOMO_PARTICLES = 100


def prepare_out_dir(out: Path, force: bool) -> None:
    """Create `out`, or check it is empty; with `force`, remove a previous simulation's outputs."""
    if out.exists() and not out.is_dir():
        raise CryoalError(f"{out}: exists and is not a directory")
    if not out.exists():
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir():
            raise CryoalError(f"{out}: directory {parent} does not exist")
        out.mkdir()
        return
    if not any(out.iterdir()):
        return
    if not force:
        raise CryoalError(
            f"{out}: directory is not empty (use --force to replace a previous simulation there)"
        )
    for name in OUTPUT_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    for sub in (PARTICLE_DIR, TOMOGRAM_DIR):
        if (out / sub).is_dir():
            for f in (out / sub).glob("*.mrc"):
                f.unlink()
            with contextlib.suppress(OSError):  # keep a directory that holds files we did not write
                (out / sub).rmdir()


def write_mrc(path: Path, volume: np.ndarray, voxel_size: float) -> None:
    """Write a float32 (mode 2) MRC with the voxel size in its header."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(volume, dtype=np.float32))
        mrc.voxel_size = voxel_size
        # mrcfile stamps the time into label 0; a fixed label keeps same-seed output byte-identical
        mrc.header.label[0] = b"cryoal simulate"
        mrc.header.nlabl = 1


class StagedDir:
    """A hidden directory beside `final` that becomes `final` on `commit()` (removed if abandoned)."""

    def __init__(self, final: Path):
        self.final = final
        remove_stale_temps(final)  # staging directories of killed runs
        self.path = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir()

    def commit(self) -> None:
        """Move the staged directory into place."""
        if self.final.exists():
            raise CryoalError(f"{self.final}: already exists; use --force or another OUT_DIR")
        os.replace(self.path, self.final)

    def __enter__(self) -> StagedDir:
        return self

    def __exit__(self, *exc) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)


def particle_ids(n: int) -> list[str]:
    """`p00001` ... : file stems and particle ids (at least five digits)."""
    width = max(5, len(str(n)))
    return [f"p{i + 1:0{width}d}" for i in range(n)]


def choose_seed_labels(labels: Sequence[str], per_label: int, seed: int) -> list[int]:
    """Indices of `per_label` random items of each label (fewer if a label has fewer), sorted."""
    rng = particle_rng(seed, _STREAM_LABELS, 0)
    arr = np.asarray(labels)
    chosen: list[int] = []
    for name in dict.fromkeys(labels):
        idx = np.flatnonzero(arr == name)
        chosen += rng.choice(idx, size=min(per_label, len(idx)), replace=False).tolist()
    return sorted(chosen)


def write_json(path: Path, info: dict) -> None:
    """Write the simulation parameters (for the record and for reproducing the set)."""
    with atomic_open(path, "w") as fh:
        json.dump(info, fh, indent=2)
        fh.write("\n")


def write_particle_set(
    out: Path,
    plan: ParticlePlan,
    names: list[str],
    imaging: Imaging,
    volumes_iter: Iterable[tuple[int, np.ndarray]],
    seed: int,
    seed_labels: int,
    info: dict,
) -> dict[str, int]:
    """Write MRCs from `volumes_iter` ((start, volumes) batches), then particles.star and truth.csv."""
    ids = particle_ids(len(plan))
    with StagedDir(out / PARTICLE_DIR) as stage:
        for start, vols in volumes_iter:
            for k, vol in enumerate(vols):
                write_mrc(stage.path / f"{ids[start + k]}.mrc", vol, imaging.voxel_size)
        stage.commit()
    rng = particle_rng(seed, _STREAM_COORDS, 0)
    coords = rng.uniform(0, 1, (len(plan), 3)) * np.asarray(PSEUDO_TOMO_SIZE)
    labels = [names[int(c)] for c in plan.labels]
    write_json(out / "simulation.json", info)
    write_star(
        out / "particles.star",
        {
            "optics": {
                "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                "rlnImagePixelSize": [f"{imaging.voxel_size:g}"], "rlnImageSize": [imaging.box],
                "rlnImageDimensionality": [3], "rlnVoltage": [f"{VOLTAGE_KV:g}"],
                "rlnSphericalAberration": [f"{CS_MM:g}"], "rlnAmplitudeContrast": [f"{AMPLITUDE_CONTRAST:g}"],
            },
            "particles": {
                "rlnImageName": [f"{PARTICLE_DIR}/{i}.mrc" for i in ids],
                "rlnTomoName": [f"sim_{i // PSEUDO_TOMO_PARTICLES + 1:03d}" for i in range(len(ids))],
                "rlnCoordinateX": [f"{c:.1f}" for c in coords[:, 0]],
                "rlnCoordinateY": [f"{c:.1f}" for c in coords[:, 1]],
                "rlnCoordinateZ": [f"{c:.1f}" for c in coords[:, 2]],
                "rlnOpticsGroup": [1] * len(ids),
            },
        },
    )
    write_csv(out / "truth.csv", {"particle_id": ids, "label": labels})
    if seed_labels:
        pick = choose_seed_labels(labels, seed_labels, seed)
        write_csv(
            out / "seed_labels.csv",
            {"particle_id": [ids[i] for i in pick], "label": [labels[i] for i in pick]},
        )
    return {"particles": len(ids)}


def write_tomogram_set(
    out: Path,
    plans: list[TomogramPlan],
    names: list[str],
    imaging: Imaging,
    tomograms_iter: Iterable[SimulatedTomogram],
    seed: int,
    seed_labels: int,
    info: dict,
) -> dict[str, int]:
    """Write tomogram MRCs, then tomograms.star (RELION 5 picks), truth.csv and truth_positions.csv."""
    with StagedDir(out / TOMOGRAM_DIR) as stage:
        for tomo in tomograms_iter:
            write_mrc(stage.path / f"{tomo.plan.name}.mrc", tomo.volume, imaging.voxel_size)
        stage.commit()
    star: dict[str, list] = {k: [] for k in (
        "rlnTomoName", "rlnTomoParticleName",
        "rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst",
    )}
    pos: dict[str, list] = {k: [] for k in (
        "particle_id", "tomo", "label", "x", "y", "z", "pick_x", "pick_y", "pick_z", "qw", "qx", "qy", "qz",
    )}
    for plan in plans:
        ids = plan.particle_ids
        ang = plan.picks_angstrom(imaging.voxel_size)
        labels = [BACKGROUND if c < 0 else names[int(c)] for c in plan.labels]
        star["rlnTomoName"] += [plan.name] * len(ids)
        star["rlnTomoParticleName"] += ids
        for a, axis in enumerate("XYZ"):
            star[f"rlnCenteredCoordinate{axis}Angst"] += [f"{v:.3f}" for v in ang[:, a]]
        pos["particle_id"] += ids
        pos["tomo"] += [plan.name] * len(ids)
        pos["label"] += labels
        for a, axis in enumerate("xyz"):
            pos[axis] += [int(v) for v in plan.centres[:, a]]
            pos[f"pick_{axis}"] += [f"{v:.4f}" for v in plan.picks[:, a]]
        for a, q in enumerate(("qw", "qx", "qy", "qz")):
            pos[q] += ["" if np.isnan(v) else f"{v:.8f}" for v in plan.quaternions[:, a]]
    write_json(out / "simulation.json", info)
    write_star(out / "tomograms.star", {"particles": star})
    write_csv(out / "truth_positions.csv", pos)
    write_csv(out / "truth.csv", {"particle_id": pos["particle_id"], "label": pos["label"]})
    if seed_labels:
        pick = choose_seed_labels(pos["label"], seed_labels, seed)
        write_csv(
            out / "seed_labels.csv",
            {"particle_id": [pos["particle_id"][i] for i in pick], "label": [pos["label"][i] for i in pick]},
        )
    n_false = sum(int(np.sum(p.labels < 0)) for p in plans)
    return {"tomograms": len(plans), "particles": len(pos["label"]) - n_false, "false_picks": n_false}

