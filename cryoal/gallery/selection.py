"""Which particles a gallery shows, in which order, and what their captions say.

Three sources: a ranked selection CSV (`cryoal select` output, kept in rank order), explicit ids,
or a few labelled examples of each class. Any id that is not in the pool is an error: a selection
from another pool must never render silently as the wrong particles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoal.errors import InputError
from cryoal.io.pool import Pool
from cryoal.io.star import read_text_file
from cryoal.io.tables import read_table, table_len


@dataclass
class Item:
    """One particle in a gallery: its pool row and what its caption shows."""

    index: int
    particle_id: str
    rank: int
    predicted: str = ""
    confidence: str = ""
    label: str = ""  # the label the pool already has ("" when unlabelled)

    def caption(self) -> list[str]:
        """Caption lines for a montage tile: rank and id, then prediction (or the pool label)."""
        lines = [f"#{self.rank}  {self.particle_id}"]
        second = []
        if self.predicted:
            second.append(f"pred {self.predicted}" + (f" {self.confidence}" if self.confidence else ""))
        if self.label:
            second.append(f"label {self.label}")
        lines.append("  ".join(second))
        return lines


def format_confidence(value: str) -> str:
    """Show a probability as 0.87; anything that is not a number is shown as given."""
    try:
        f = float(value)
    except ValueError:
        return value.strip()
    return f"{f:.2f}" if math.isfinite(f) else ""


def _pool_label_names(pool: Pool, indices: np.ndarray) -> list[str]:
    names = pool.class_names
    labels = pool.labels[indices]
    return [names[k] if 0 <= k < len(names) else (str(k) if k >= 0 else "") for k in labels]


def _check_ids(pool: Pool, ids: Sequence[str], where: str) -> np.ndarray:
    """Pool rows of `ids`; a duplicate or an unknown id is an error naming `where`."""
    seen: set[str] = set()
    for pid in ids:
        if pid in seen:
            raise InputError(f"{where}: particle id '{pid}' is listed twice")
        seen.add(pid)
    lookup = {pid: i for i, pid in enumerate(pool.particle_ids)}
    missing = [pid for pid in ids if pid not in lookup]
    if missing:
        if len(missing) == len(ids):
            raise InputError(
                f"{where}: none of its {len(ids)} particle ids are in {pool.path} "
                f"(first: '{missing[0]}'); was it made from another pool?"
            )
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"{where}: particle id '{missing[0]}'{more} not in {pool.path}")
    return np.asarray([lookup[pid] for pid in ids], dtype=np.int64)


def _items(pool: Pool, ids: Sequence[str], rows: np.ndarray, ranks: Sequence[int]) -> list[Item]:
    labels = _pool_label_names(pool, rows)
    return [
        Item(index=int(r), particle_id=pid, rank=int(k), label=lab)
        for pid, r, k, lab in zip(ids, rows, ranks, labels, strict=True)
    ]


def from_selection(pool: Pool, path: str | os.PathLike, limit: int | None = None) -> list[Item]:
    """Particles of a ranked selection CSV, in rank order, captioned with its predictions.

    Sorted by the `rank` column when every row has a numeric one (a spreadsheet may have
    re-sorted the file), else kept in file order. `limit` keeps the first N after sorting.
    """
    path = Path(path)
    table = read_table(path)
    if "particle_id" not in table:
        raise InputError(f"{path}: no 'particle_id' column (columns: {', '.join(table) or 'none'})")
    n = table_len(table)
    if n == 0:
        raise InputError(f"{path}: no particles listed")
    order = list(range(n))
    ranks = list(range(1, n + 1))
    if "rank" in table:
        try:
            given = [int(float(v)) for v in table["rank"]]
        except ValueError:
            given = None
        if given is not None:
            order = sorted(order, key=lambda i: given[i])  # stable: ties keep file order
            ranks = [given[i] for i in order]
    if limit is not None:
        order, ranks = order[:limit], ranks[:limit]
    ids = [table["particle_id"][i] for i in order]
    rows = _check_ids(pool, ids, str(path))
    items = _items(pool, ids, rows, ranks)
    pred = table.get("predicted_label")
    conf = table.get("confidence")
    for item, i in zip(items, order, strict=True):
        if pred is not None:
            item.predicted = pred[i]
        if conf is not None:
            item.confidence = format_confidence(conf[i])
    return items


def parse_ids(spec: str) -> list[str]:
    """`a,b,c`, or `@file` with ids separated by commas, whitespace or newlines."""
    if spec.startswith("@"):
        text = read_text_file(spec[1:], "a UTF-8 text file of particle ids", f" (from --ids {spec})")
        parts = text.replace(",", "\n").split()
    else:
        parts = [p.strip() for p in spec.split(",")]
    ids = [p for p in parts if p]
    if not ids:
        raise InputError(f"--ids {spec!r}: no particle ids given")
    return ids


def from_ids(pool: Pool, ids: Sequence[str]) -> list[Item]:
    """The given particles, in the given order."""
    rows = _check_ids(pool, ids, str(pool.path))
    return _items(pool, ids, rows, range(1, len(ids) + 1))


def labelled_examples(pool: Pool, per_class: int, seed: int = 0) -> list[Item]:
    """Up to `per_class` labelled particles of each class, class by class in pool order.

    A fixed-seed random choice (not the first ones: those often come from one tomogram), so
    reruns show the same examples.
    """
    labels = pool.labels
    if not (labels >= 0).any():
        raise InputError(f"{pool.path}: no labelled particles yet; import labels with `cryoal label` first")
    rng = np.random.default_rng(seed)
    rows: list[int] = []
    for k in sorted(set(labels[labels >= 0].tolist())):
        members = np.flatnonzero(labels == k)
        if members.size > per_class:
            members = np.sort(rng.choice(members, size=per_class, replace=False))
        rows.extend(members.tolist())
    idx = np.asarray(rows, dtype=np.int64)
    ids = [str(pool.particle_ids[i]) for i in idx]
    return _items(pool, ids, idx, range(1, len(ids) + 1))


def apply_predictions(items: list[Item], path: str | os.PathLike) -> None:
    """Caption items with `predicted_label`/`confidence` from a `cryoal predict` CSV.

    Every shown particle must be in the file: a missing one means it belongs to another pool.
    """
    path = Path(path)
    table = read_table(path)
    for col in ("particle_id", "predicted_label"):
        if col not in table:
            raise InputError(f"{path}: no '{col}' column (columns: {', '.join(table) or 'none'})")
    row_of = {pid: i for i, pid in enumerate(table["particle_id"])}
    missing = [it.particle_id for it in items if it.particle_id not in row_of]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(
            f"{path}: no prediction for particle '{missing[0]}'{more}; was it made from another pool?"
        )
    conf = table.get("confidence")
    for it in items:
        i = row_of[it.particle_id]
        it.predicted = table["predicted_label"][i]
        it.confidence = format_confidence(conf[i]) if conf is not None else ""
