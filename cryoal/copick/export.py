"""`cryoal export-copick POOL CONFIG.json`: labels, a selection and predictions back as copick picks.

What is written, under one session id (default: a timestamp):

* the expert labels: for each run and class, the labelled particles as one pick file of the object
  named like the class (copick names hold no `_` or spaces; `ring_c6` becomes `ring-c6`), user
  `--user` (default `cryoal`), score 1;
* `--selection to_label.csv` (select's CSV): per run, the particles to label next as one pick file
  of `--selection-object` (default `cryoal-to-label`), in rank order, `score` = the selection
  score and `instance_id` = the rank;
* `--predictions predictions.csv`: per run and predicted class, user `cryoal-predicted`,
  `score` = the confidence.

Locations are particle centres in Å from the tomogram corner: the `copick_x/y/z` the pool kept
from `extract --copick` (exact), else `coords` × `copick_voxel_spacing`, else `coords` ×
`--pixel-size`. The transformation is the identity.

Safety: everything is checked before anything is written (unknown objects unless `--add-objects`,
runs missing from the project, ids missing from the pool, an existing session of the same user
unless `--overwrite`). Each pick file is written to a temporary file in its directory and renamed;
so is the config when objects are added. Files of other users and sessions are never opened for
writing. With `--overwrite`, pick files of the same user and session that this export does not
write again are removed (they are this user's own stale picks).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import CryoalError, InputError, OptionError
from cryoal.io.atomic import discard, replace_all, stage_text
from cryoal.io.pool import open_pool
from cryoal.io.tables import read_table

DEFAULT_USER = "cryoal"
PREDICTED_USER = "cryoal-predicted"
SELECTION_OBJECT = "cryoal-to-label"
# Colours for objects added to the config (RGBA), cycled.
PALETTE = [(230, 25, 75, 255), (60, 180, 75, 255), (255, 225, 25, 255), (0, 130, 200, 255),
           (245, 130, 48, 255), (145, 30, 180, 255), (70, 240, 240, 255), (240, 50, 230, 255)]


@dataclass
class ExportOptions:
    """The `export-copick` options."""

    user: str = DEFAULT_USER
    session: str | None = None  # None: a timestamp
    selection: Path | None = None
    selection_object: str = SELECTION_OBJECT
    predictions: Path | None = None
    predicted_user: str = PREDICTED_USER
    add_objects: bool = False
    overwrite: bool = False
    pixel_size: float | None = None  # Å per pixel of the pool's coords, for pools not from --copick


@dataclass
class PickFile:
    """One pick file to write: run, object, user, and its points (Å), scores, instance ids."""

    run: str
    object: str
    user: str
    positions: np.ndarray
    scores: np.ndarray
    instance_ids: np.ndarray
    what: str  # labels, selection or predictions
    path: Path | None = None


@dataclass
class ExportSummary:
    """What an export wrote."""

    config: str
    session: str
    files: list[PickFile] = field(default_factory=list)
    added_objects: list[tuple[str, int]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def points(self, what: str) -> int:
        return sum(len(f.positions) for f in self.files if f.what == what)


def copick_name(name: str) -> str:
    """The copick name for a class name: copick's own `sanitize_name` (`_`, spaces -> `-`)."""
    from copick.util.escape import sanitize_name

    try:
        return sanitize_name(name, suppress_warnings=True)
    except ValueError:
        raise InputError(f"class '{name}': cannot be a copick object name") from None


def _check_name(flag: str, value: str) -> str:
    from copick.util.escape import sanitize_name

    try:
        clean = sanitize_name(value, suppress_warnings=True)
    except ValueError:
        clean = ""
    if clean != value:
        hint = f"; '{clean}' would do" if clean else ""
        raise CryoalError(f"{flag} '{value}': copick names cannot hold _, spaces or <>:\"/\\|?*{hint}")
    return value


# ------------------------------------------------------------------------------------------
# Positions of pool particles, in Å
# ------------------------------------------------------------------------------------------


class _Positions:
    """Particle centres in Å, from what the pool kept (see the module docstring)."""

    def __init__(self, pool, pixel_size: float | None):
        self.pool = pool
        self.tomos = pool.tomos
        columns = set(pool.meta_columns)
        self.angst = None
        if {"copick_x", "copick_y", "copick_z"} <= columns:
            self.angst = [pool.meta(c) for c in ("copick_x", "copick_y", "copick_z")]
        self.spacing = pool.meta("copick_voxel_spacing") if "copick_voxel_spacing" in columns else None
        self.coords = pool.coords
        self.pixel_size = pixel_size

    def __call__(self, i: int) -> np.ndarray:
        pid = self.pool.particle_ids[i]
        if self.angst is not None and all(col[i] for col in self.angst):
            return np.array([float(col[i]) for col in self.angst])
        xyz = self.coords[i].astype(np.float64)
        if not np.all(np.isfinite(xyz)) or not self.tomos[i]:
            raise InputError(f"{self.pool.path}: particle '{pid}' has no tomogram position (tomo, coords)")
        size = self.pixel_size
        if size is None and self.spacing is not None and self.spacing[i]:
            size = float(self.spacing[i])
        if size is None:
            raise InputError(
                f"{self.pool.path}: particle '{pid}' was not extracted with --copick, so its pixel size "
                "is unknown; give --pixel-size (Å per pixel of the tomogram it was cut from)"
            )
        return xyz * size


# ------------------------------------------------------------------------------------------
# Planning
# ------------------------------------------------------------------------------------------


def _group(what: str, user: str, rows: list[tuple[str, str, np.ndarray, float, int]]) -> list[PickFile]:
    """rows (run, object, position, score, instance id), in output order -> one PickFile per
    (run, object), points in row order."""
    groups: dict[tuple[str, str], list] = {}
    for run, obj, pos, score, inst in rows:
        groups.setdefault((run, obj), []).append((pos, score, inst))
    files = []
    for (run, obj), items in sorted(groups.items()):
        files.append(PickFile(
            run=run, object=obj, user=user, what=what,
            positions=np.array([p for p, _, _ in items], dtype=np.float64).reshape(-1, 3),
            scores=np.array([s for _, s, _ in items], dtype=np.float64),
            instance_ids=np.array([k for _, _, k in items], dtype=np.int64),
        ))
    return files


def _float(text: str, where: str, column: str, row: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: row {row}, column {column}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: row {row}, column {column}: {text!r} is not finite")
    return value


def _table_rows(path: Path, needed: tuple[str, ...], pool) -> tuple[dict[str, list[str]], np.ndarray]:
    table = read_table(path)
    for col in needed:
        if col not in table:
            raise InputError(f"{path}: no column '{col}' (columns: {', '.join(table)})")
    ids = table["particle_id"]
    lookup = {pid: i for i, pid in enumerate(pool.particle_ids)}
    rows = np.empty(len(ids), dtype=np.int64)
    for k, pid in enumerate(ids):
        if pid not in lookup:
            raise InputError(f"{path}: row {k + 2}: particle id '{pid}' is not in {pool.path}")
        rows[k] = lookup[pid]
    return table, rows


def _label_files(pool, where, user: str) -> list[PickFile]:
    labels = pool.labels
    names = pool.class_names
    rows = []
    for i in np.flatnonzero(labels >= 0):
        rows.append((pool.tomos[i], copick_name(names[labels[i]]), where(int(i)), 1.0, 0))
    return _group("labels", user, rows)


def _selection_files(pool, where, path: Path, obj: str, user: str) -> list[PickFile]:
    table, idx = _table_rows(path, ("particle_id",), pool)
    n = len(idx)
    ranks = [_float(t, str(path), "rank", k + 2) for k, t in enumerate(table["rank"])] if "rank" in table \
        else list(range(1, n + 1))
    scores = [_float(t, str(path), "score", k + 2) if t else 1.0 for k, t in enumerate(table["score"])] \
        if "score" in table else [1.0] * n
    order = sorted(range(n), key=lambda k: (ranks[k], k))  # rank order kept within each run's file
    rows = [(pool.tomos[idx[k]], obj, where(int(idx[k])), scores[k], int(ranks[k])) for k in order]
    return _group("selection", user, rows)


def _prediction_files(pool, where, path: Path, user: str) -> list[PickFile]:
    table, idx = _table_rows(path, ("particle_id", "predicted_label", "confidence"), pool)
    rows = []
    for k, i in enumerate(idx):
        label = table["predicted_label"][k]
        if not label:
            raise InputError(f"{path}: row {k + 2}: empty predicted_label")
        conf = _float(table["confidence"][k], str(path), "confidence", k + 2)
        rows.append((pool.tomos[i], copick_name(label), where(int(i)), conf, 0))
    return _group("predictions", user, rows)


def _existing_session(root, user: str, session: str) -> list:
    return [p for run in root.runs for p in run.get_picks(user_id=user, session_id=session)]


def _local_overlay(root, config: Path) -> None:
    protocol = getattr(root.fs_overlay, "protocol", None)  # copick wraps the fs; it forwards the protocol
    protocols = {protocol} if isinstance(protocol, str) else set(protocol or ())
    if not protocols & {"file", "local"}:
        raise CryoalError(f"{config}: export-copick writes to a local overlay_root only (this one is "
                          f"{'/'.join(sorted(map(str, protocols))) or 'unknown'})")


def _picks_path(run, obj: str, user: str, session: str) -> Path:
    """Where copick keeps this pick file in the overlay (its own path rule, through its API)."""
    from copick.models import CopickPicksFile

    meta = CopickPicksFile(pickable_object_name=obj, user_id=user, session_id=session, run_name=run.name)
    picks = run._picks_factory()(run=run, file=meta)
    return Path(picks.path)


def _pick_json(f: PickFile, session: str, voxel_spacing: float | None) -> str:
    from copick.models import CopickLocation, CopickPicksFile, CopickPoint

    points = [CopickPoint(location=CopickLocation(x=float(p[0]), y=float(p[1]), z=float(p[2])),
                          score=float(s), instance_id=int(k))
              for p, s, k in zip(f.positions, f.scores, f.instance_ids, strict=True)]
    meta = CopickPicksFile(pickable_object_name=f.object, user_id=f.user, session_id=session, run_name=f.run,
                           voxel_spacing=voxel_spacing, points=points, trust_orientation=False)
    return json.dumps(meta.model_dump(), indent=4)  # the layout copick's own store() writes


def _new_objects(config_data: dict, wanted: list[str], pool) -> list[dict]:
    present = {o["name"] for o in config_data.get("pickable_objects", [])}
    labels = [int(o.get("label") or 0) for o in config_data.get("pickable_objects", [])]
    nxt = max(labels, default=0) + 1
    radius = 60.0
    if math.isfinite(pool.voxel_size):
        radius = pool.box * pool.voxel_size / 4  # a display size for napari-copick: a quarter of the box
    added = []
    for name in wanted:
        if name in present:
            continue
        added.append({"name": name, "is_particle": True, "label": nxt, "radius": radius,
                      "color": list(PALETTE[(nxt - 1) % len(PALETTE)])})
        present.add(name)
        nxt += 1
    return added


def export_copick(pool_path: str | os.PathLike, config: str | os.PathLike, opts: ExportOptions | None = None,
                  ) -> ExportSummary:
    """Write the pool's labels (and a selection, predictions) as copick picks; see the module
    docstring. Raises CryoalError before writing anything when any input is bad."""
    from cryoal.copick.source import open_project

    opts = opts or ExportOptions()
    config = Path(config)
    root = open_project(config)
    session = opts.session or time.strftime("%Y%m%d-%H%M%S")
    _check_name("--session", session)
    _check_name("--user", opts.user)
    _check_name("--selection-object", opts.selection_object)
    if opts.predictions is not None:
        _check_name("predicted user", opts.predicted_user)
        if opts.predicted_user == opts.user:
            raise CryoalError(f"--user '{opts.user}': the predictions are written under it already")
    if opts.pixel_size is not None and not (math.isfinite(opts.pixel_size) and opts.pixel_size > 0):
        raise OptionError(f"--pixel-size must be a positive number of Å (got {opts.pixel_size:g})")
    _local_overlay(root, config)

    with open_pool(pool_path) as pool:
        where = _Positions(pool, opts.pixel_size)
        files = _label_files(pool, where, opts.user)
        if opts.selection is not None:
            files += _selection_files(pool, where, Path(opts.selection), opts.selection_object, opts.user)
        if opts.predictions is not None:
            files += _prediction_files(pool, where, Path(opts.predictions), opts.predicted_user)
        if not files:
            raise InputError(f"{pool.path}: nothing to export (no labelled particles; give --selection "
                             "or --predictions)")
        spacing = where.spacing[0] if where.spacing is not None and len(where.spacing) else ""
        voxel_spacing = float(spacing) if spacing else None
        config_data = json.loads(config.read_text(encoding="utf-8"))
        known = {o.name for o in root.pickable_objects}
        missing = sorted({f.object for f in files if f.what != "selection"} - known)
        if missing and not opts.add_objects:
            raise InputError(
                f"{config}: object '{missing[0]}' is not in the config ({len(missing)} missing: "
                f"{', '.join(missing)}; objects: {', '.join(sorted(known))}); pass --add-objects to add them"
            )
        wanted = missing + ([opts.selection_object] if opts.selection is not None else [])
        added = _new_objects(config_data, wanted, pool)

    runs = {r.name: r for r in root.runs}
    for f in files:
        if f.run not in runs:
            raise InputError(f"{config}: no run '{f.run}' in the project (a {f.what} pick of tomogram "
                             f"'{f.run}'; runs: {', '.join(sorted(runs)[:6])}...)")
    users = {f.user for f in files}
    stale = []
    for user in sorted(users):
        existing = _existing_session(root, user, session)
        static = [p for p in existing if getattr(p, "read_only", False)]
        if static:
            raise InputError(f"{config}: user '{user}' session '{session}' exists in the static (read-only) "
                             "root; choose another --session")
        if existing and not opts.overwrite:
            raise InputError(
                f"{config}: user '{user}' already has session '{session}' ({len(existing)} pick files, e.g. "
                f"run '{existing[0].run.name}' object '{existing[0].pickable_object_name}'); choose another "
                "--session or pass --overwrite"
            )
        stale += existing

    for f in files:
        f.path = _picks_path(runs[f.run], f.object, f.user, session)
    texts = [_pick_json(f, session, voxel_spacing) for f in files]
    summary = ExportSummary(config=str(config), session=session, files=files,
                            added_objects=[(o["name"], o["label"]) for o in added])
    _write_all(config, config_data, added, files, texts)
    written = {f.path for f in files}
    for p in stale:
        path = _picks_path(p.run, p.pickable_object_name, p.user_id, p.session_id)
        if path not in written and path.exists():
            path.unlink()
            summary.removed.append(str(path))
    return summary


def _write_all(config: Path, config_data: dict, added: list[dict], files: list[PickFile],
               texts: list[str]) -> None:
    """Write every file to a temporary file beside its target, then rename them all: the config
    first (so that every object a pick file names exists), then the pick files. A failure while
    writing the temporary files leaves the project untouched."""
    staged: list[tuple[Path, Path]] = []
    try:
        if added:
            data = dict(config_data)
            data["pickable_objects"] = list(config_data.get("pickable_objects", [])) + added
            staged.append((stage_text(config, json.dumps(data, indent=4) + "\n"), config))
        for f, text in zip(files, texts, strict=True):
            assert f.path is not None
            f.path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((stage_text(f.path, text), f.path))
    except BaseException:
        for tmp, _ in staged:
            discard(tmp)
        raise
    replace_all(staged)
