"""The oracle: true labels of every pool particle, read from a `particle_id,label` table (or true
masks, from a `particle_id,mask_path` table)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cryoal.benchmark.config import BenchmarkData
from cryoal.errors import InputError
from cryoal.io.pool import Pool
from cryoal.io.tables import read_table


def class_order(pool_names: list[str], truth_names: set[str]) -> list[str]:
    """The pool's class names first (their order is the model's output order), then new ones sorted."""
    return list(pool_names) + sorted(truth_names - set(pool_names))


def load_truth(pool: Pool, path: str | os.PathLike) -> BenchmarkData:
    """Align the truth table to the pool rows. Every pool particle needs a non-empty label.

    Truth rows for ids that are not in the pool are ignored (a truth file may cover more
    particles than one pool holds); a duplicated id with two different labels is an error.
    """
    path = Path(path)
    table = read_table(path)
    from cryoal.io.masks import MASK_COLUMNS

    if any(c in table for c in MASK_COLUMNS):  # segmentation: particle_id,mask_path
        return _load_mask_truth(pool, path)
    for col in ("particle_id", "label"):
        if col not in table:
            raise InputError(f"{path}: needs columns particle_id,label; found {','.join(table) or 'none'}")
    truth: dict[str, str] = {}
    for pid, lab in zip(table["particle_id"], table["label"], strict=True):
        if not lab:
            continue
        if truth.setdefault(pid, lab) != lab:
            raise InputError(f"{path}: particle '{pid}' has two labels, '{truth[pid]}' and '{lab}'")
    ids = pool.particle_ids
    missing = [pid for pid in ids if pid not in truth]
    if missing:
        raise InputError(
            f"{path}: no true label for {len(missing)} of the {len(ids)} pool particles "
            f"(first: '{missing[0]}')"
        )
    labels = [truth[pid] for pid in ids]
    names = class_order(pool.class_names, set(labels))
    if len(names) < 2:
        raise InputError(f"{path}: the pool's particles all have the same true label '{names[0]}'")
    index = {name: k for k, name in enumerate(names)}
    return BenchmarkData(pool, np.asarray([index[lab] for lab in labels], dtype=np.int64), names)


def _load_mask_truth(pool: Pool, path: Path) -> BenchmarkData:
    """Segmentation truth: every particle's mask. The strata (for the test split and the initial
    set) are `mask_labels` (largest class id in the mask); the metric is the mean IoU."""
    from cryoal.io.masks import class_names_for, mask_labels

    masks = read_truth_masks(pool, path)
    present = np.unique(masks[masks >= 0])
    if present.size < 2:
        raise InputError(f"{path}: the true masks hold a single class; nothing to segment")
    names = class_names_for(int(present.max()) + 1, pool.class_names)
    return BenchmarkData(pool, mask_labels(masks).astype(np.int64).clip(min=0), names, targets=masks)


def read_truth_masks(pool, table_path: str | os.PathLike, ignore_index: int | None = None) -> np.ndarray:
    """The oracle's masks (N, *shape) int16 for every pool particle, in pool order, from a
    `particle_id,mask_path` table (the benchmark's truth for segmentation pools). InputError when a
    particle has no mask, or a mask does not fit its image."""
    from cryoal.io.images import read_mask
    from cryoal.io.masks import fit_to_pool, mask_column, source_shape

    table_path = Path(table_path)
    table = read_table(table_path)
    if "particle_id" not in table:
        raise InputError(f"{table_path}: no 'particle_id' column (columns: {', '.join(table) or 'none'})")
    col = mask_column(table, str(table_path))
    refs = {pid.strip(): ref.strip() for pid, ref in zip(table["particle_id"], table[col], strict=True)
            if ref.strip()}
    kind = "image" if len(pool.shape) == 2 else "volume"
    out = np.empty((len(pool), *pool.shape), np.int16)
    for row, pid in enumerate(pool.particle_ids):
        ref = refs.get(str(pid))
        if ref is None:
            raise InputError(f"{table_path}: no mask for pool particle '{pid}'")
        path = Path(ref) if os.path.isabs(ref) else table_path.parent / ref
        mask = read_mask(path, kind=kind, ignore_index=ignore_index)
        out[row] = fit_to_pool(mask, pool.shape, source_shape(pool.sources[row], kind), str(path))
    return out
