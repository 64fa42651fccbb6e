"""Segmentation masks in a pool: reading and checking them, and importing expert masks (`cryoal
label` with a `particle_id,mask_path` table). Their IoU is in `cryoal.learn.metrics`, predicted
masks in `cryoal.predict`, the benchmark's truth masks in `cryoal.benchmark.truth`.

A segmentation pool keeps one int16 mask per particle in its `masks` dataset (-1 = unlabelled).
Its `label` marks which particles are annotated: -1 when no pixel of the mask is labelled, else
the largest class id the mask holds (0 for an all-background image). So `select` skips
annotated images, `status` counts them, and training stratifies its validation split by it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import CryoalError, InputError
from cryoal.io.images import (
    UNLABELLED,
    ImageFile,
    as_mask,
    check_class_range,
    fit_mask,
    read_mask,
)
from cryoal.io.pool import edit_pool, open_pool
from cryoal.io.tables import read_table, table_len

MASK_COLUMNS = ("mask_path", "mask")


def mask_labels(masks: np.ndarray) -> np.ndarray:
    """Per particle: the largest class id in its mask, -1 if no pixel is labelled. (n, *S) -> (n,)."""
    masks = np.asarray(masks)
    if masks.shape[0] == 0:
        return np.empty(0, np.int32)
    return masks.reshape(masks.shape[0], -1).max(axis=1).astype(np.int32).clip(min=UNLABELLED)


def class_names_for(n_classes: int, given: Sequence[str] = ()) -> list[str]:
    """The given class names, extended with numbers ("2", "3", ...) up to `n_classes`."""
    names = list(given)
    return names + [str(k) for k in range(len(names), n_classes)]


def parse_source(source: str) -> tuple[Path, int]:
    """A pool `source` ("path" or "path#k", k from 1) -> (file, item index from 0)."""
    head, sep, tail = source.rpartition("#")
    if sep and tail.isdigit():
        return Path(head), int(tail) - 1
    return Path(source), 0


def source_shape(source: str, kind: str) -> tuple[int, ...] | None:
    """Shape of the image a particle was ingested from (before cropping to the box), if readable."""
    path, k = parse_source(source)
    try:
        with ImageFile(path, kind=kind) as f:
            return tuple(f.raw_item(k).shape)
    except (CryoalError, OSError):
        return None


def fit_to_pool(mask: np.ndarray, pool_shape: tuple[int, ...], image_shape: tuple[int, ...] | None,
                name: str) -> np.ndarray:
    """A mask of the pool's shape, or of its image's shape before ingest cropped/padded it to the box
    (then cropped/padded the same way); InputError naming `name` for any other shape."""
    if mask.ndim != len(pool_shape):
        raise InputError(
            f"{name}: mask is {mask.ndim}D but the pool's images are {len(pool_shape)}D {tuple(pool_shape)}"
        )
    if tuple(mask.shape) == tuple(pool_shape):
        return mask
    if image_shape is not None and tuple(mask.shape) == tuple(image_shape):
        return fit_mask(mask, tuple(pool_shape))
    want = f"{tuple(pool_shape)}"
    if image_shape is not None and tuple(image_shape) != tuple(pool_shape):
        want = f"{tuple(image_shape)} (or the pool's box {tuple(pool_shape)})"
    raise InputError(f"{name}: mask shape {tuple(mask.shape)} differs from its image {want}")


# ------------------------------------------------------------------------------------------
# Masks at ingest
# ------------------------------------------------------------------------------------------


def find_mask_file(image: Path, masks_dir: Path) -> Path | None:
    """The mask of `image` in `masks_dir`: a readable file named like the image (`a.mrc` ->
    `a.png`, `a.tif`, `a.npy`, `a.mrc`...) or with a `_mask` suffix (`a_mask.png`); None if none.
    InputError when several files qualify."""
    from cryoal.io.images import image_stem, is_image_name

    stem = image_stem(image)
    found = [
        p for p in sorted(masks_dir.iterdir())
        if p.is_file() and is_image_name(p) and image_stem(p) in (stem, f"{stem}_mask")
    ]
    if len(found) > 1:
        listed = ", ".join(p.name for p in found[:3])
        raise InputError(f"{image}: several masks match it in {masks_dir}: {listed}")
    return found[0] if found else None


@dataclass
class MaskReader:
    """Reads the mask of each ingested item, checked against its image and the classes.

    `class_names`: the classes known so far (from --classes or the pool); with `fixed_classes`, an id
    beyond them is an error, otherwise the list grows (numbered names) as masks show new ids.
    """

    ignore_index: int | None = None
    masks_dir: Path | None = None
    class_names: list[str] = field(default_factory=list)
    fixed_classes: bool = False

    def read(self, mask_path: Path | None, item: int, is_stack: bool, image_shape: tuple[int, ...],
             target: tuple[int, ...]) -> np.ndarray:
        """The item's mask fitted to the pool's `target` shape (all -1 when `mask_path` is None).

        A stack of images takes its masks from a stack file, item by item.
        """
        if mask_path is None:
            return np.full(target, UNLABELLED, np.int16)
        kind = "image" if len(image_shape) == 2 else "volume"
        with ImageFile(mask_path, kind=kind) as f:
            colour = f.colour_mode()
            if colour is not None:
                raise InputError(f"{mask_path}: a colour ({colour}) image cannot be a mask; save class ids "
                                 "as a single-channel (grey or palette) image")
            if is_stack and f.n_items != 1 and item >= f.n_items:
                raise InputError(
                    f"{mask_path}: holds {f.n_items} masks, its image stack needs item {item + 1}"
                )
            k = item if f.n_items > 1 else 0
            mask = as_mask(f.raw_item(k), str(mask_path), self.ignore_index)
        if mask.ndim != len(image_shape) or tuple(mask.shape) != tuple(image_shape):
            raise InputError(
                f"{mask_path}: mask shape {tuple(mask.shape)} differs from its image {tuple(image_shape)}"
            )
        top = int(mask.max()) if mask.size else -1
        if top >= len(self.class_names):
            if self.fixed_classes:
                check_class_range(mask, len(self.class_names), str(mask_path))
            self.class_names = class_names_for(top + 1, self.class_names)
        return fit_mask(mask, target)


# ------------------------------------------------------------------------------------------
# Importing expert masks
# ------------------------------------------------------------------------------------------


@dataclass
class MaskImportSummary:
    """What one mask import did."""

    pool: str
    round: int
    n_set: int = 0
    n_changed: int = 0  # particles that had a mask before
    n_skipped: int = 0  # rows with an empty mask path
    pixels_per_class: dict[str, int] = field(default_factory=dict)  # labelled pixels in this import
    new_classes: list[str] = field(default_factory=list)
    total_labelled: int = 0
    total: int = 0


def mask_column(table: dict, where: str) -> str:
    """The table's mask path column; InputError when it has none."""
    col = next((c for c in MASK_COLUMNS if c in table), None)
    if col is None:
        raise InputError(f"{where}: no mask_path column (columns: {', '.join(table) or 'none'})")
    return col


def import_mask_file(
    pool_path: str | os.PathLike, table_path: str | os.PathLike, *, add_classes: bool = False,
    ignore_index: int | None = None,
) -> MaskImportSummary:
    """Import expert masks from a `particle_id,mask_path` table (paths relative to the table).

    All or nothing: an unknown id, an unreadable mask, a mask whose shape differs from its image,
    or a class id beyond the pool's classes (without `add_classes`) raises InputError and leaves
    the pool unchanged. A mask replaces the particle's previous mask; the rows set get a new
    `label_round`. Empty mask paths are skipped.
    """
    pool_path, table_path = Path(pool_path), Path(table_path)
    table = read_table(table_path)
    if "particle_id" not in table:
        raise InputError(f"{table_path}: no 'particle_id' column (columns: {', '.join(table) or 'none'})")
    col = mask_column(table, str(table_path))
    if table_len(table) == 0:
        raise InputError(f"{table_path}: no rows")
    base = table_path.parent
    with open_pool(pool_path) as pool:
        if pool.mode != "segmentation":
            raise InputError(
                f"{table_path}: mask_path column given, but {pool_path} is in {pool.mode} mode; "
                "masks go into segmentation pools (ingest --mode segmentation)"
            )
        kind = "image" if len(pool.shape) == 2 else "volume"
        names = pool.class_names
        lookup = {pid: i for i, pid in enumerate(pool.particle_ids)}
        chosen: dict[int, tuple[str, np.ndarray]] = {}
        n_skipped = 0
        max_id = -1
        for k, (pid, ref) in enumerate(zip(table["particle_id"], table[col], strict=True)):
            ref = ref.strip()
            if not ref:
                n_skipped += 1
                continue
            row = lookup.get(pid.strip())
            if row is None:
                raise InputError(
                    f"{table_path}: unknown particle id '{pid}' (row {k + 1}); it is not in the pool"
                )
            path = Path(ref) if os.path.isabs(ref) else base / ref
            mask = read_mask(path, kind=kind, ignore_index=ignore_index)
            mask = fit_to_pool(mask, pool.shape, source_shape(pool.sources[row], kind), str(path))
            if row in chosen and not np.array_equal(chosen[row][1], mask):
                raise InputError(f"{table_path}: particle id '{pid}' is given two different masks")
            chosen[row] = (str(path), mask)
            max_id = max(max_id, int(mask.max()))
        new_names: list[str] = []
        if max_id >= len(names):
            if not (add_classes or not names):
                worst = max(chosen.values(), key=lambda pm: int(pm[1].max()))
                check_class_range(worst[1], len(names), worst[0])
            new_names = class_names_for(max_id + 1, names)[len(names):]
        rounds = pool.label_rounds
        summary = MaskImportSummary(
            pool=str(pool_path), round=int(rounds.max(initial=-1)) + 1, n_skipped=n_skipped
        )
    if not chosen:
        return summary
    all_names = names + new_names
    rows = np.asarray(sorted(chosen), dtype=np.int64)
    masks = np.stack([chosen[r][1] for r in rows])
    with edit_pool(pool_path) as h5:
        label = np.asarray(h5["label"][...], dtype=np.int32)
        rounds = np.asarray(h5["label_round"][...], dtype=np.int32)
        this_round = int(rounds.max(initial=-1)) + 1
        summary.round = this_round
        summary.n_changed = int((label[rows] >= 0).sum())
        for r, m in zip(rows, masks, strict=True):
            h5["masks"][r] = m
        label[rows] = mask_labels(masks)
        rounds[rows] = np.where(label[rows] >= 0, this_round, rounds[rows])
        h5["label"][...] = label
        h5["label_round"][...] = rounds
        h5.attrs["class_names"] = json.dumps(all_names)
        summary.n_set = int(rows.size)
        summary.new_classes = new_names
        counts = np.bincount(masks[masks >= 0].ravel(), minlength=len(all_names))
        summary.pixels_per_class = {all_names[c]: int(n) for c, n in enumerate(counts) if n}
        summary.total_labelled = int((label >= 0).sum())
        summary.total = int(label.size)
    return summary


__all__ = [
    "MASK_COLUMNS", "MaskImportSummary", "class_names_for", "fit_to_pool", "import_mask_file",
    "mask_column", "mask_labels", "parse_source", "source_shape",
]
