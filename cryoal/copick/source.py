"""`cryoal extract --copick CONFIG.json`: picks and OME-Zarr tomograms of a copick project.

A copick project is a JSON config (pickable objects: name, label, radius) and a tree of runs, one
per tomogram. A run holds OME-Zarr tomograms per voxel spacing and tomogram type (`wbp`,
`denoised`, ...) and picks per object, user and session. Everything here goes through copick's
own API (`copick.from_file`, `run.get_picks`, `picks.full_positions`, `tomogram.zarr()`).

Geometry: a copick location is in Å from the tomogram's corner, voxel i at i·voxel_size (copick's
own RELION converter puts the tomogram centre at shape/2·voxel_size, which is the same). The pick's
centre is its location plus the translation of its transformation (`full_positions`). For the
pyramid level read, tomogram pixel = (Å − translation) / scale, from the level's OME metadata.

What the pool records: `tomo` = the run name; `coords` in tomogram pixels; `meta/` columns
`copick_object`, `copick_user`, `copick_session`, `copick_point` (the point's index in its pick
file), `score`, `instance_id`, and, for `export-copick`, `copick_x/y/z` (the centre in Å, verbatim)
and `copick_voxel_spacing` (Å per pixel of `coords`). Particle ids are
`<run>_<object>_<user>_<session>_<point>`: copick names cannot hold `_`, so ids are unique.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import CryoalError, InputError
from cryoal.extract.picks import Convention, Picks
from cryoal.extract.run import ExtractOptions, Plan, check_something_left, common_pixel_size, plan_tomogram
from cryoal.extract.tomograms import TomogramInfo, Warn
from cryoal.io.omezarr import INSTALL_HINT, Level, open_array, read_levels

DEFAULT_TOMO_TYPE = "wbp"
# Voxel spacings closer than this (relative) are the same.
SPACING_TOLERANCE = 1e-3
META_COLUMNS = ("copick_object", "copick_user", "copick_session", "copick_point", "score", "instance_id",
                "copick_x", "copick_y", "copick_z", "copick_voxel_spacing")


def require_copick():
    """Import copick, or raise the one-line error that says how to install it."""
    try:
        import copick
        import zarr  # noqa: F401  (copick's tomograms are zarr stores)
    except ImportError:
        raise CryoalError(f"copick projects need the copick extra: {INSTALL_HINT}") from None
    return copick


def open_project(config: str | os.PathLike):
    """Open a copick project from its config file; a config that does not parse is one InputError."""
    copick = require_copick()
    path = Path(config)
    if not path.is_file():
        raise InputError(f"{path}: copick config not found")
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a copick config (invalid JSON: {exc})") from None
    try:
        return copick.from_file(str(path))
    except Exception as exc:  # pydantic's ValidationError, or copick's own checks
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3]) if first else type(exc).__name__
        raise InputError(f"{path}: not a valid copick config ({detail})") from None


@dataclass
class CopickOptions:
    """What to read from the project (the `extract --copick` options)."""

    config: Path
    objects: list[str] | None = None  # None: every particle object that has picks
    users: list[str] | None = None  # None: all
    sessions: list[str] | None = None  # None: all
    voxel_spacing: float | None = None  # None: the only one present
    tomo_type: str | None = None  # None: wbp, or the only one present
    labels_from_object: bool = False


@dataclass
class _PickSet:
    run: object
    picks: object  # CopickPicks
    positions: np.ndarray  # (n, 3) Å, particle centres


@dataclass
class _Source:
    """The tomogram chosen for one run: the pyramid level, and how to open it."""

    run: object
    tomogram: object
    level: Level
    shape: tuple[int, int, int]
    path: Path
    sets: list[_PickSet] = field(default_factory=list)


def _listing(values) -> str:
    return ", ".join(sorted(str(v) for v in values)) or "none"


def _spacing(value: float) -> str:
    return f"{value:g} Å"


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= SPACING_TOLERANCE * max(abs(a), abs(b))


def _select_picks(root, opts: CopickOptions) -> list[_PickSet]:
    """Every pick set that passes the object, user and session filters (runs sorted by name;
    within a run, by object, user, session). Raises InputError for names that match nothing."""
    where = opts.config
    objects = {o.name: o for o in root.pickable_objects}
    for name in opts.objects or []:
        if name not in objects:
            raise InputError(f"{where}: unknown object '{name}' (objects: {_listing(objects)})")
    runs = sorted(root.runs, key=lambda r: r.name)
    every = [(run, p) for run in runs for p in run.picks]
    for flag, values, attr in (("user", opts.users, "user_id"), ("session", opts.sessions, "session_id")):
        known = {getattr(p, attr) for _, p in every}
        for value in values or []:
            if value not in known:
                raise InputError(
                    f"{where}: no picks by {flag} '{value}' ({flag}s with picks: {_listing(known)})"
                )
    chosen = []
    for run, p in every:
        if opts.objects is not None and p.pickable_object_name not in opts.objects:
            continue
        if opts.objects is None and not getattr(objects.get(p.pickable_object_name), "is_particle", False):
            continue  # default: particle objects only (segmentation-only objects have no points)
        if opts.users is not None and p.user_id not in opts.users:
            continue
        if opts.sessions is not None and p.session_id not in opts.sessions:
            continue
        try:
            positions = np.asarray(p.full_positions(), dtype=np.float64).reshape(-1, 3)
        except Exception as exc:  # a pick file that does not parse
            raise InputError(
                f"{where}: run '{run.name}': picks {p.user_id}/{p.session_id}/{p.pickable_object_name} "
                f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        if len(positions) == 0:
            continue
        if not np.all(np.isfinite(positions)):
            raise InputError(f"{where}: run '{run.name}': picks of {p.pickable_object_name} by {p.user_id} "
                             "hold non-finite locations")
        chosen.append(_PickSet(run=run, picks=p, positions=positions))
    for name in opts.objects or []:
        if not any(s.picks.pickable_object_name == name for s in chosen):
            raise InputError(f"{where}: object '{name}' has no picks{_filters(opts)}")
    if not chosen:
        raise InputError(f"{where}: no picks{_filters(opts)} in any run")
    chosen.sort(key=lambda s: (s.run.name, s.picks.pickable_object_name, s.picks.user_id, s.picks.session_id))
    return chosen


def _filters(opts: CopickOptions) -> str:
    parts = []
    if opts.users:
        parts.append(f"user {','.join(opts.users)}")
    if opts.sessions:
        parts.append(f"session {','.join(opts.sessions)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _tomograms_by_type(runs) -> dict[str, set[float]]:
    present: dict[str, set[float]] = {}
    for run in runs:
        for vs in run.voxel_spacings:
            for tomo in vs.tomograms:
                present.setdefault(tomo.tomo_type, set()).add(float(vs.voxel_size))
    return present


def _choose_type(present: dict[str, set[float]], wanted: str | None, where: Path) -> str:
    if wanted is not None:
        if wanted not in present:
            raise InputError(f"{where}: no tomogram of type '{wanted}' in the runs with picks "
                             f"(types: {_listing(present)})")
        return wanted
    if DEFAULT_TOMO_TYPE in present:
        return DEFAULT_TOMO_TYPE
    if len(present) == 1:
        return next(iter(present))
    if not present:
        raise InputError(f"{where}: the runs with picks hold no tomograms")
    raise InputError(f"{where}: no '{DEFAULT_TOMO_TYPE}' tomogram and several types ({_listing(present)}); "
                     "choose one with --tomo-type")


def _choose_spacing(sizes: set[float], wanted: float | None, tomo_type: str, where: Path) -> float:
    listed = ", ".join(_spacing(s) for s in sorted(sizes))
    if wanted is None:
        if len(sizes) == 1:
            return next(iter(sizes))
        raise InputError(f"{where}: '{tomo_type}' tomograms at several voxel spacings ({listed}); "
                         "choose one with --voxel-spacing")
    return wanted


def _zarr_group(tomogram, where: str):
    import zarr

    try:
        return zarr.open_group(tomogram.zarr(), mode="r")
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        raise InputError(f"{where}: tomogram is not a readable zarr group ({detail})") from None


def _store_path(tomogram, level: Level) -> Path:
    base = getattr(tomogram, "static_path", None) if getattr(tomogram, "read_only", False) else None
    base = base or getattr(tomogram, "overlay_path", None) or f"{tomogram.tomo_type}.zarr"
    return Path(str(base).removeprefix("local://")) / level.key


def _source_for_run(run, tomo_type: str, spacing: float, requested: bool, where: Path) -> _Source:
    """The tomogram of `run` at `spacing`: the voxel spacing itself (its finest level), or, when
    `--voxel-spacing` asks for a spacing the run does not store, a pyramid level of a finer one."""
    spacings = sorted(run.voxel_spacings, key=lambda v: v.voxel_size)
    with_type = [(vs, found[0]) for vs in spacings if (found := vs.get_tomograms(tomo_type))]
    if not with_type:
        others = {t.tomo_type for vs in run.voxel_spacings for t in vs.tomograms}
        held = f"it holds {_listing(others)}" if others else "it holds no tomogram"
        raise InputError(f"{where}: run '{run.name}' has picks but no '{tomo_type}' tomogram ({held})")
    # First a voxel spacing stored as such (its finest level), then a pyramid level of another.
    opened = []
    for vs, tomo in with_type:
        tag = f"{where}: run '{run.name}' {tomo_type} at {_spacing(vs.voxel_size)}"
        group = _zarr_group(tomo, tag)
        opened.append((vs, tomo, group, read_levels(group, tag), tag))
    exact = [(t, g, levels[:1], tag) for vs, t, g, levels, tag in opened
             if _same(float(vs.voxel_size), spacing)]
    pyramid = [(t, g, levels[1:], tag) for _, t, g, levels, tag in opened] if requested else []
    for tomo, group, levels, tag in exact + pyramid:
        for level in levels:
            if _same(level.scale, spacing):
                array = open_array(group, level, tag)
                shape = tuple(int(s) for s in array.shape)
                return _Source(run=run, tomogram=tomo, level=level, shape=shape,  # type: ignore[arg-type]
                               path=_store_path(tomo, level))
    scales_seen = [lv.scale for *_, levels, _ in opened for lv in levels]
    stored = ", ".join(_spacing(vs.voxel_size) for vs, _ in with_type)
    levels_txt = ", ".join(_spacing(s) for s in sorted(set(round(s, 6) for s in scales_seen)))
    raise InputError(f"{where}: run '{run.name}' has no '{tomo_type}' tomogram at {_spacing(spacing)} "
                     f"(voxel spacings: {stored}; pyramid levels: {levels_txt})")


def _opener(source: _Source, where: str):
    def open_level():
        return open_array(_zarr_group(source.tomogram, where), source.level, where)
    return open_level


def plan_copick(opts: CopickOptions, options: ExtractOptions, warn: Warn | None = None) -> Plan:
    """Read a copick project's picks and tomogram metadata and plan the extraction (no voxel is
    read). Raises InputError on every bad input before anything is written."""
    if options.box < 2 or options.bin < 1:
        raise CryoalError(f"--box must be at least 2 and --bin at least 1 (got {options.box}, {options.bin})")
    if opts.voxel_spacing is not None and not (math.isfinite(opts.voxel_spacing) and opts.voxel_spacing > 0):
        raise CryoalError(f"--voxel-spacing must be a positive number of Å (got {opts.voxel_spacing:g})")
    root = open_project(opts.config)
    where = opts.config
    sets = _select_picks(root, opts)
    runs = list({id(s.run): s.run for s in sets}.values())
    present = _tomograms_by_type(runs)
    tomo_type = _choose_type(present, opts.tomo_type, where)
    spacing = _choose_spacing(present[tomo_type], opts.voxel_spacing, tomo_type, where)

    sources: dict[str, _Source] = {}
    for s in sets:
        if s.run.name not in sources:
            requested = opts.voxel_spacing is not None
            sources[s.run.name] = _source_for_run(s.run, tomo_type, spacing, requested, where)
        sources[s.run.name].sets.append(s)

    table: dict[str, list[str]] = {c: [] for c in META_COLUMNS}
    tomo_names: list[str] = []
    ids: list[str] = []
    labels: list[str] = []
    raw = []
    pixel_positions = []
    for name, src in sources.items():
        for s in src.sets:
            p = s.picks
            scores, instance_ids = p.scores(), p.instance_ids()
            for k, xyz in enumerate(s.positions):
                ids.append(f"{name}_{p.pickable_object_name}_{p.user_id}_{p.session_id}_{k}")
                tomo_names.append(name)
                labels.append(p.pickable_object_name)
                row = (p.pickable_object_name, p.user_id, p.session_id, str(k), repr(float(scores[k])),
                       str(int(instance_ids[k])), *(repr(float(v)) for v in xyz),
                       repr(float(src.level.scale)))
                for col, value in zip(META_COLUMNS, row, strict=True):
                    table[col].append(value)
            raw.append(s.positions)
            shift = np.asarray(src.level.translation_xyz, dtype=np.float64)
            pixel_positions.append((s.positions - shift) / src.level.scale)
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(
            f"{where}: particle id '{dup}' twice (the same picks in the static and overlay roots?)"
        )
    positions = np.concatenate(pixel_positions)
    picks = Picks(
        path=Path(where), table=table,
        convention=Convention(("location.x", "location.y", "location.z"), in_angstrom=True),
        tomo_names=tomo_names, raw_xyz=np.concatenate(raw), origin_angst=None, particle_ids=ids,
        labels=labels if opts.labels_from_object else None,
    )
    names = np.asarray(tomo_names, dtype=object)
    infos, tomos = [], []
    for name, src in sources.items():
        info = TomogramInfo(name=name, path=src.path, shape=src.shape, pixel_size=src.level.scale,
                            compressed=False, opener=_opener(src, f"{where}: run '{name}'"))
        infos.append(info)
        rows = np.flatnonzero(names == name)
        tomos.append(plan_tomogram(info, rows, positions[rows], options, src.level.scale))
    pixel_size = common_pixel_size(infos, [i.pixel_size for i in infos])
    plan = Plan(picks=picks, options=options, tomos=tomos, pixel_size=pixel_size)
    check_something_left(plan, f"copick locations in Å from the tomogram corner at {_spacing(pixel_size)} "
                               f"per pixel ({tomo_type})")
    return plan
