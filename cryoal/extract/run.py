"""Plan and run an extraction: picks -> tomogram pixels -> boxes -> pool.

Planning reads only the picks file and the tomogram headers, so every bad input (unknown
tomogram, corrupt or 2D file, wrong units) is reported before a single box is cut and before
the pool is touched. Running then visits one tomogram at a time and reads its boxes in
(z, y, x) order, which walks the file front to back.

Pool order: the picks file's order (of the picks extracted), so that pool row k is the k-th
extracted pick, whatever order the boxes are read in. The per-particle columns are written first,
in that order, and each box's volume goes to the row of its pick as it is cut. Particle ids do not
depend on either order (see `picks.py`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import CryoalError, InputError, OptionError
from cryoal.extract.boxes import centre_voxel, crosses_edge, fourier_bin, zscore
from cryoal.extract.picks import Picks, read_picks, to_tomogram_pixels
from cryoal.extract.tomograms import (
    MAPPING_SUFFIXES,
    TomogramInfo,
    Warn,
    inspect_tomogram,
    open_tomogram,
    resolve_tomograms,
)
from cryoal.io.omezarr import is_zarr

# Most tomogram bytes kept mapped while cutting (peak memory; see tomograms.TomogramReader).
MAPPED_BUDGET = 128 * 1024 * 1024
# Boxes are handed to the pool writer in batches of about this many bytes.
BATCH_BYTES = 16 * 1024 * 1024
# Pixel sizes closer than this (relative) count as equal.
PIXEL_TOLERANCE = 1e-3


@dataclass
class ExtractOptions:
    """Settings of one extraction (the CLI options)."""

    box: int = 32
    bin: int = 1
    coord_pixel_size: float | None = None  # Å per pixel of the pick coordinates (pixel conventions)
    tomo_pixel_size: float | None = None  # overrides the tomogram headers
    skip_edge: bool = False


@dataclass
class TomoPlan:
    """The picks of one tomogram that will be extracted, in reading order."""

    info: TomogramInfo
    pixel_size: float
    rows: np.ndarray  # indices into the picks file, reading order
    positions: np.ndarray  # (n, 3) float64 tomogram pixels (x, y, z)
    centres: np.ndarray  # (n, 3) int64 centre voxels (x, y, z)
    edge: np.ndarray  # (n,) bool: the box crosses the tomogram edge and will be filled
    n_picks: int
    n_outside: int
    n_edge_skipped: int


@dataclass
class Plan:
    """Everything known before a box is cut."""

    picks: Picks
    options: ExtractOptions
    tomos: list[TomoPlan]
    pixel_size: float  # Å of the tomograms (NaN if unknown)

    @property
    def voxel_size(self) -> float:
        """The pool's voxel size: the tomogram pixel size times the binning."""
        return self.pixel_size * self.options.bin

    @property
    def n_boxes(self) -> int:
        return sum(len(t.rows) for t in self.tomos)


@dataclass
class TomoSummary:
    """Counts for one tomogram."""

    name: str
    path: str
    picks: int
    extracted: int
    edge_filled: int
    edge_skipped: int
    outside: int


@dataclass
class Summary:
    """What an extraction did."""

    pool: str
    box: int
    bin: int
    voxel_size: float
    tomograms: list[TomoSummary] = field(default_factory=list)

    def total(self, key: str) -> int:
        return sum(getattr(t, key) for t in self.tomograms)


def _no_warn(message: str) -> None:
    pass


def _pixel_size(info: TomogramInfo, options: ExtractOptions, needs: str | None) -> float:
    pixel = options.tomo_pixel_size if options.tomo_pixel_size is not None else info.pixel_size
    if needs is not None and math.isnan(pixel):
        raise InputError(
            f"{info.path}: the header's pixel size is 0 (unknown) and {needs}; give --tomo-pixel-size"
        )
    return pixel


def common_pixel_size(infos: list[TomogramInfo], sizes: list[float]) -> float:
    """The tomograms' one pixel size (Å); an error naming the first that differs beyond tolerance."""
    first = sizes[0]
    for info, size in zip(infos, sizes, strict=True):
        same = (math.isnan(first) and math.isnan(size)) or (
            abs(size - first) <= PIXEL_TOLERANCE * abs(first)
        )
        if not same:
            raise InputError(
                f"{info.path}: pixel size {size:g} Å differs from {infos[0].path} ({first:g} Å); one pool "
                "holds one voxel size, so extract them into separate pools (or set --tomo-pixel-size)"
            )
    return first


def plan_extraction(
    picks_path: str | os.PathLike,
    tomograms: str | os.PathLike,
    options: ExtractOptions,
    warn: Warn = _no_warn,
) -> Plan:
    """Read the picks and tomogram headers, convert every pick to tomogram pixels and decide which
    are extracted, edge-filled, skipped or outside. Raises InputError on any bad input."""
    if options.box < 2 or options.bin < 1:
        raise OptionError(f"--box must be at least 2 and --bin at least 1 (got {options.box}, {options.bin})")
    for flag, value in (("--coord-pixel-size", options.coord_pixel_size),
                        ("--tomo-pixel-size", options.tomo_pixel_size)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CryoalError(f"{flag} must be a positive number of Å (got {value:g})")
    tomo_spec = Path(tomograms)
    single_file = is_zarr(tomo_spec) or (
        tomo_spec.is_file() and tomo_spec.suffix.lower() not in MAPPING_SUFFIXES
    )
    default_tomo = _stem(tomo_spec) if single_file else None
    picks = read_picks(picks_path, default_tomo=default_tomo)
    conv = picks.convention
    if conv.in_angstrom and options.coord_pixel_size is not None:
        warn(f"--coord-pixel-size is ignored: {picks.path} gives {conv.columns[0]} in Å")
    coord_px = None if conv.in_angstrom else options.coord_pixel_size
    needs = None
    if conv.in_angstrom:
        needs = f"{picks.path} gives positions in Å ({conv.columns[0]})"
    elif coord_px is not None:
        needs = "--coord-pixel-size rescales the picks to it"
    elif picks.origin_angst is not None:
        needs = f"{picks.path} has rlnOrigin*Angst shifts"

    paths = resolve_tomograms(tomo_spec, picks.tomo_names, picks.path)
    infos = [inspect_tomogram(name, path, warn) for name, path in paths.items()]
    sizes = [_pixel_size(info, options, needs) for info in infos]
    pixel_size = common_pixel_size(infos, sizes)

    names = np.asarray(picks.tomo_names, dtype=object)
    tomos = []
    for info in infos:
        rows = np.flatnonzero(names == info.name)
        origin = None if picks.origin_angst is None else picks.origin_angst[rows]
        pos = to_tomogram_pixels(picks.raw_xyz[rows], conv, info.shape, pixel_size, coord_px, origin)
        tomos.append(plan_tomogram(info, rows, pos, options, pixel_size))
    plan = Plan(picks=picks, options=options, tomos=tomos, pixel_size=pixel_size)
    check_something_left(plan, conv.describe(plan.pixel_size, coord_px))
    return plan


def plan_tomogram(info: TomogramInfo, rows: np.ndarray, positions: np.ndarray, options: ExtractOptions,
                  pixel_size: float) -> TomoPlan:
    """Decide, for the picks `rows` of one tomogram at `positions` (tomogram pixels, (n, 3) x, y, z),
    which are extracted, edge-filled, skipped or outside, and put them in reading order."""
    cut = options.box * options.bin
    centres = centre_voxel(positions)
    dims_xyz = np.asarray(info.shape[::-1])
    inside = np.all((centres >= 0) & (centres < dims_xyz), axis=1)
    edge = crosses_edge(centres, cut, info.shape)
    keep = inside & ~edge if options.skip_edge else inside
    n_picks, n_outside, n_edge_skipped = rows.size, int((~inside).sum()), int((inside & ~keep).sum())
    rows, pos, centres, edge = rows[keep], positions[keep], centres[keep], edge[keep]
    # Reading order: z, then y, then x (lexsort's last key is the primary one); ties by row.
    order = np.lexsort((rows, centres[:, 0], centres[:, 1], centres[:, 2]))
    return TomoPlan(
        info=info, pixel_size=pixel_size, rows=rows[order], positions=pos[order],
        centres=centres[order], edge=edge[order], n_picks=n_picks, n_outside=n_outside,
        n_edge_skipped=n_edge_skipped,
    )


def check_something_left(plan: Plan, assumed: str) -> None:
    """Refuse a plan with nothing to extract: every pick outside (`assumed` spells out the
    coordinate convention, since that usually means the wrong units), or every box skipped."""
    n = len(plan.picks)
    outside = sum(t.n_outside for t in plan.tomos)
    if outside == n:
        raise InputError(
            f"{plan.picks.path}: all {n} picks fall outside their tomograms assuming {assumed}: wrong units?"
        )
    if plan.n_boxes == 0:
        raise InputError(
            f"{plan.picks.path}: every pick inside a tomogram crosses its edge and --skip-edge leaves "
            f"them all out (box {plan.options.box * plan.options.bin} voxels before binning)"
        )


def _stem(path: Path) -> str:
    name = path.name
    for comp in (".gz", ".bz2"):
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
    return Path(name).stem


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


def _check_append(pool_path: Path, plan: Plan) -> float:
    """Refuse an append that would mix voxel sizes or box sizes, or reuse ids (before any work).
    Returns the pool's voxel size."""
    from cryoal.io.pool import open_pool

    with open_pool(pool_path) as pool:
        box = plan.options.box
        if pool.mode != "subtomogram" or pool.shape != (box, box, box):
            raise CryoalError(
                f"{pool_path}: pool holds {pool.mode} particles of shape {pool.shape}; extract writes "
                f"subtomograms of {box}³ (set --box)"
            )
        old, new = pool.voxel_size, plan.voxel_size
        if not (math.isnan(old) or math.isnan(new)) and abs(old - new) > PIXEL_TOLERANCE * old:
            raise CryoalError(
                f"{pool_path}: pool voxel size is {old:g} Å but these boxes would be {new:g} Å "
                f"(tomogram {plan.pixel_size:g} Å × --bin {plan.options.bin})"
            )
        existing = set(pool.particle_ids)
    wanted = (plan.picks.particle_ids[r] for t in plan.tomos for r in t.rows)
    clash = next((pid for pid in wanted if pid in existing), None)
    if clash is not None:
        raise CryoalError(
            f"{pool_path}: particle id '{clash}' from {plan.picks.path} is already in the pool (ids are "
            "rlnTomoParticleName/particle_id, else <tomo>_<n>); give the picks unique ids"
        )
    return old


class _Batch:
    """Boxes waiting to be written, in one preallocated array, with the pool rows they go to."""

    def __init__(self, box: int) -> None:
        capacity = max(1, BATCH_BYTES // (box**3 * 4))
        self.volumes = np.empty((capacity, box, box, box), dtype=np.float32)
        self.rows: list[int] = []

    @property
    def full(self) -> bool:
        return len(self.rows) == len(self.volumes)

    def next_slot(self) -> np.ndarray:
        """Where the next box goes (then call `add`)."""
        return self.volumes[len(self.rows)]

    def add(self, pool_row: int) -> None:
        self.rows.append(pool_row)

    def flush(self, writer) -> None:
        if self.rows:
            writer.write_volumes(self.rows, self.volumes[: len(self.rows)])
            self.rows = []


def _add_columns(plan: Plan, writer, classes: dict[str, int] | None = None) -> np.ndarray:
    """Append every extracted pick's per-particle columns in picks-file order, without volumes;
    returns the pool row of each pick (-1 for picks not extracted). `classes` (name -> index)
    labels the particles from picks that carry labels (copick `--labels-from-object`)."""
    tomo_of = np.full(len(plan.picks), -1, dtype=np.int64)
    position = np.full((len(plan.picks), 3), np.nan)
    edge = np.zeros(len(plan.picks), dtype=bool)
    for t, tp in enumerate(plan.tomos):
        tomo_of[tp.rows], position[tp.rows], edge[tp.rows] = t, tp.positions, tp.edge
    rows = np.flatnonzero(tomo_of >= 0)  # ascending: the file's order
    picks = plan.picks
    sources = [str(tp.info.path.resolve()) for tp in plan.tomos]
    first = writer.add(
        None,
        [picks.particle_ids[r] for r in rows],
        [sources[tomo_of[r]] for r in rows],
        tomos=[plan.tomos[tomo_of[r]].info.name for r in rows],
        coords=position[rows].astype(np.float32),
        meta={col: [values[r] for r in rows] for col, values in picks.table.items()},
        edge=edge[rows],
        labels=None if classes is None or picks.labels is None else [classes[picks.labels[r]] for r in rows],
    )
    pool_row = np.full(len(picks), -1, dtype=np.int64)
    pool_row[rows] = first + np.arange(rows.size)
    return pool_row


def _extract_tomogram(tp: TomoPlan, options: ExtractOptions, writer, pool_row: np.ndarray,
                      picks: Picks, warn: Warn, progress: Callable[[int], None]) -> None:
    cut = options.box * options.bin
    with open_tomogram(tp.info, warn, budget=MAPPED_BUDGET) as reader:
        fill = reader.mean() if tp.edge.any() else 0.0
        batch = _Batch(options.box)
        ahead = len(batch.volumes)
        reader.read_ahead(tp.centres[:ahead], cut)
        for k in range(tp.rows.size):  # in reading order (z, y, x); each box goes to its pick's row
            if k % ahead == 0:  # one batch ahead: its disk reads overlap this batch's work
                reader.read_ahead(tp.centres[k + ahead : k + 2 * ahead], cut)
            raw, _ = reader.box(tp.centres[k], cut, fill)
            # Ingest's z-score rule: mean 0, std 1; NaN/Inf or a constant box is bad input, named here.
            name = f"{tp.info.path}: box of particle '{picks.particle_ids[tp.rows[k]]}'"
            zscore(fourier_bin(raw, options.bin), name, out=batch.next_slot())
            batch.add(int(pool_row[tp.rows[k]]))
            if batch.full:
                batch.flush(writer)
            progress(1)
        batch.flush(writer)


def _label_classes(writer, plan: Plan) -> dict[str, int] | None:
    """Picks that carry labels (copick `--labels-from-object`): add their names to the pool's
    classes (after any it already has) and return name -> class index."""
    if plan.picks.labels is None:
        return None
    names = list(writer.class_names)
    extracted = {plan.picks.labels[r] for t in plan.tomos for r in t.rows}
    names += sorted(extracted - set(names))
    writer.set_class_names(names)
    return {name: i for i, name in enumerate(names)}


def run_extraction(
    plan: Plan,
    pool_path: str | os.PathLike,
    *,
    append: bool = False,
    warn: Warn = _no_warn,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Cut, bin, z-score and write every planned box to the pool (atomically: on any error the
    pool is left as it was, or not created)."""
    from cryoal.io.pool import PoolWriter

    pool_path = Path(pool_path)
    options = plan.options
    old_voxel_size = _check_append(pool_path, plan) if append else math.nan
    step = progress or (lambda n: None)
    shape = (options.box,) * 3
    summary = Summary(pool=str(pool_path), box=options.box, bin=options.bin, voxel_size=plan.voxel_size)
    # Uncompressed volumes: z-scored float32 boxes of noisy tomograms do not compress (lzf stores
    # them at ratio 1.00) while lzf costs ~10x the write time. An appended-to pool keeps its own.
    with PoolWriter(pool_path, mode="subtomogram", shape=shape, voxel_size=plan.voxel_size,
                    append=append, compression=None) as writer:
        if append and math.isnan(old_voxel_size) and not math.isnan(plan.voxel_size):
            writer.set_voxel_size(plan.voxel_size)  # the pool did not know its voxel size yet
        pool_row = _add_columns(plan, writer, _label_classes(writer, plan))
        for tp in plan.tomos:
            if tp.rows.size:
                _extract_tomogram(tp, options, writer, pool_row, plan.picks, warn, step)
            n_edge = int(tp.edge.sum())
            summary.tomograms.append(TomoSummary(
                name=tp.info.name, path=str(tp.info.path), picks=tp.n_picks, extracted=int(tp.rows.size),
                edge_filled=n_edge, edge_skipped=tp.n_edge_skipped, outside=tp.n_outside,
            ))
    return summary


def extract(
    picks_path: str | os.PathLike,
    tomograms: str | os.PathLike,
    pool_path: str | os.PathLike,
    options: ExtractOptions | None = None,
    *,
    append: bool = False,
    warn: Warn = _no_warn,
) -> Summary:
    """Python API: `plan_extraction` then `run_extraction`."""
    plan = plan_extraction(picks_path, tomograms, options or ExtractOptions(), warn)
    return run_extraction(plan, pool_path, append=append, warn=warn)
