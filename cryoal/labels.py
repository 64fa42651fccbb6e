"""Importing expert labels into a pool: all or nothing, one `label_round` per import.

A label is a class name. If it is not a known name but an integer k with 1 <= k <= C (C the
number of classes the pool already has), it means class k, counted from 1 as RELION's
rlnClassNumber and the gallery's number keys count. An empty label is skipped. A label that is
neither is an unknown class: the whole import is refused, unless `add_classes` is set or the
pool has no classes yet; new names are then added, sorted (numerically when all are integers).
A number beyond C is refused even with `add_classes` (a typo of a class number must not become a
new class called "6"); a pool with no classes yet takes numbers as names.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import InputError
from cryoal.io.pool import edit_pool, open_pool
from cryoal.io.tables import read_table, table_len

_INT = re.compile(r"^\d+$")


def _sort_names(names: set[str]) -> list[str]:
    if all(_INT.match(n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def resolve_labels(
    values: Sequence[str], class_names: Sequence[str], *, add_classes: bool, where: str
) -> tuple[np.ndarray, list[str]]:
    """Map label strings to class indices (-1 for empty) with the rule in the module docstring.

    Returns (indices, class names after the import). `where` names the input in error messages.
    """
    names = list(class_names)
    known = {n: i for i, n in enumerate(names)}
    n_before = len(names)
    out = np.full(len(values), -1, dtype=np.int32)
    unknown: dict[str, list[int]] = {}
    for i, raw in enumerate(values):
        v = str(raw).strip()
        if not v:
            continue
        if v in known:
            out[i] = known[v]
        elif _INT.match(v) and 1 <= int(v) <= n_before:
            out[i] = int(v) - 1
        else:
            unknown.setdefault(v, []).append(i)
    if unknown and n_before:
        number = next((v for v in unknown if _INT.match(v)), None)
        if number is not None:
            raise InputError(
                f"{where}: label '{number}' is a class number out of range: the pool's classes are "
                f"1-{n_before} ({', '.join(names)}); a number never adds a class, even with "
                "--add-classes: give a new class a name"
            )
    if unknown:
        if not (add_classes or n_before == 0):
            first = next(iter(unknown))
            listed = ", ".join(names) if names else "none"
            raise InputError(
                f"{where}: unknown class '{first}' ({len(unknown)} unknown in all; pool classes: {listed}, "
                f"or their numbers 1-{n_before}); pass --add-classes to add new classes"
            )
        for name in _sort_names(set(unknown)):
            known[name] = len(names)
            names.append(name)
            out[unknown[name]] = known[name]
    return out, names


@dataclass
class LabelSummary:
    """What one label import did."""

    pool: str
    round: int
    n_set: int = 0
    n_changed: int = 0  # particles that had another class before
    n_skipped: int = 0  # rows with an empty label
    per_class: dict[str, int] = field(default_factory=dict)  # labels set in this import, by class
    new_classes: list[str] = field(default_factory=list)
    total_labelled: int = 0
    total: int = 0


def _plan(
    pool_ids: np.ndarray, particle_ids: Sequence[str], labels: Sequence[str], class_names: list[str],
    add_classes: bool, where: str,
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Validate an import: (pool rows, class indices, class names after, number of empty labels)."""
    if len(particle_ids) != len(labels):
        raise ValueError("particle_ids and labels must have the same length")
    lookup = {pid: i for i, pid in enumerate(pool_ids)}
    rows = np.empty(len(particle_ids), dtype=np.int64)
    for k, pid in enumerate(particle_ids):
        pid = str(pid).strip()
        i = lookup.get(pid)
        if i is None:
            raise InputError(f"{where}: unknown particle id '{pid}' (row {k + 1}); it is not in the pool")
        rows[k] = i
    idx, names = resolve_labels(labels, class_names, add_classes=add_classes, where=where)
    keep = idx >= 0
    rows, idx = rows[keep], idx[keep]
    # the same particle twice: fine if it gets the same class both times, refused otherwise
    order = np.argsort(rows, kind="stable")
    rows, idx = rows[order], idx[order]
    same_row = rows[1:] == rows[:-1]
    clash = same_row & (idx[1:] != idx[:-1])
    if clash.any():
        pid = pool_ids[rows[1:][clash][0]]
        raise InputError(f"{where}: particle id '{pid}' is given two different labels")
    first = np.concatenate([[True], ~same_row]) if rows.size else np.zeros(0, bool)
    return rows[first], idx[first], names, int((~keep).sum())


def set_labels(
    pool_path: str | os.PathLike, particle_ids: Sequence[str], labels: Sequence[str],
    add_classes: bool = False, where: str | None = None,
) -> LabelSummary:
    """Set the labels of the given particles in one atomic import and return what changed.

    `labels` are class names or 1-based class numbers (see the module docstring); empty ones
    are skipped. Unknown ids or classes raise InputError and leave the pool byte-for-byte
    unchanged. The rows set get `label_round` = previous maximum + 1. An import with only
    empty labels changes nothing (and starts no round).
    """
    pool_path = Path(pool_path)
    where = where or "labels"
    # validate against a read-only view first, so that a bad file never costs a copy of the pool
    with open_pool(pool_path) as pool:
        rows, idx, names, n_empty = _plan(
            pool.particle_ids, particle_ids, labels, pool.class_names, add_classes, where
        )
        if rows.size == 0:
            label = pool.labels
            return LabelSummary(
                pool=str(pool_path), round=int(pool.label_rounds.max(initial=-1)), n_skipped=n_empty,
                total_labelled=int((label >= 0).sum()), total=int(label.size),
            )
    with edit_pool(pool_path) as h5:
        # plan again under the lock: the pool may have changed since the read-only pass
        pool_ids = np.asarray(h5["particle_id"].asstr()[...], dtype=object)
        old_names = list(json.loads(h5.attrs.get("class_names", "[]")))
        rows, idx, names, n_empty = _plan(pool_ids, particle_ids, labels, old_names, add_classes, where)
        label = np.asarray(h5["label"][...], dtype=np.int32)
        rounds = np.asarray(h5["label_round"][...], dtype=np.int32)
        this_round = int(rounds.max(initial=-1)) + 1
        summary = LabelSummary(
            pool=str(pool_path), round=this_round, n_set=int(rows.size), n_skipped=n_empty,
            n_changed=int(((label[rows] >= 0) & (label[rows] != idx)).sum()),
            new_classes=names[len(old_names):],
            per_class={names[c]: int(n) for c, n in enumerate(np.bincount(idx, minlength=len(names))) if n},
        )
        label[rows] = idx
        rounds[rows] = this_round
        h5["label"][...] = label
        h5["label_round"][...] = rounds
        h5.attrs["class_names"] = json.dumps(names)
        summary.total_labelled = int((label >= 0).sum())
        summary.total = int(label.size)
    return summary


def import_label_file(pool_path: str | os.PathLike, table_path: str | os.PathLike,
                      add_classes: bool = False) -> LabelSummary:
    """Import the `particle_id` and `label` columns of a CSV/TSV/STAR file (extra columns ignored)."""
    table = read_table(table_path)
    missing = [c for c in ("particle_id", "label") if c not in table]
    if missing:
        raise InputError(
            f"{table_path}: no {' or '.join(repr(c) for c in missing)} column "
            f"(columns: {', '.join(table) or 'none'})"
        )
    if table_len(table) == 0:
        raise InputError(f"{table_path}: no rows")
    return set_labels(pool_path, table["particle_id"], table["label"], add_classes, where=str(table_path))
