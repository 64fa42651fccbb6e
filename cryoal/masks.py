"""Segmentation masks in a pool: reading and checking them, importing expert masks (`cryoal label`
with a `particle_id,mask_path` table), per-class IoU, and writing predicted masks (`cryoal predict`).

A segmentation pool keeps one int16 mask per particle in its `masks` dataset (-1 = unlabelled).
Its `label` marks which particles are annotated: -1 when no pixel of the mask is labelled, else
the largest class id the mask holds (0 for an all-background image). So `select` skips
annotated images, `status` counts them, and training stratifies its validation split by it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryoal.device import exact_float32
from cryoal.errors import CryoalError, InputError, OptionError
from cryoal.io.images import (
    UNLABELLED,
    ImageFile,
    as_mask,
    check_class_range,
    fit_mask,
    mask_format,
    read_mask,
    save_mask_stack,
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


def read_truth_masks(pool, table_path: str | os.PathLike, ignore_index: int | None = None) -> np.ndarray:
    """The oracle's masks (N, *shape) int16 for every pool particle, in pool order, from a
    `particle_id,mask_path` table (the benchmark's truth for segmentation pools). InputError when a
    particle has no mask, or a mask does not fit its image."""
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


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


def pixel_confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) pixel counts over labelled pixels (y_true >= 0); rows true, columns predicted."""
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    keep = t >= 0
    flat = t[keep].astype(np.int64) * n_classes + p[keep].astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou_per_class(cm: np.ndarray) -> list[float | None]:
    """Intersection over union of each class from a confusion matrix; None where the class is
    neither present nor predicted."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(cm.shape[0])]


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes with a defined IoU (NaN if none)."""
    vals = [v for v in iou_per_class(cm) if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


# ------------------------------------------------------------------------------------------
# Predicted masks
# ------------------------------------------------------------------------------------------


def default_masks_path(out_csv: str | os.PathLike) -> Path:
    """Where predicted masks go when not given: beside the CSV, `<stem>_masks.npy`."""
    p = Path(out_csv)
    return p.with_name(f"{p.stem}_masks.npy")


@exact_float32()
def predict_masks(
    pool_path: str | os.PathLike, model_path: str | os.PathLike, out_csv: str | os.PathLike,
    masks_path: str | os.PathLike | None = None, *, batch_size: int = 16, device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Segment every particle: predicted masks (int16, pool order) to `masks_path` (.npy or .mrc/.mrcs)
    and `particle_id,mean_confidence,fraction_<class>...` to `out_csv`; both atomic.

    mean_confidence is the mean over pixels of the top class probability. Memory stays flat in the
    pool size (the mask file is written through a memory map).
    """
    import csv

    import torch

    from cryoal.checkpoint import check_model_matches_pool, load_model
    from cryoal.device import resolve_device
    from cryoal.inference import to_model_input
    from cryoal.io.atomic import atomic_open, atomic_path, check_output_dir
    from cryoal.io.prefetch import BatchReader

    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")
    masks_path = Path(masks_path) if masks_path is not None else default_masks_path(out_csv)
    fmt = mask_format(masks_path)
    check_output_dir(out_csv)
    check_output_dir(masks_path)
    dev = resolve_device(device)
    model, meta = load_model(model_path, device=dev)
    names = [str(c) for c in meta["class_names"]]
    with open_pool(pool_path) as pool:
        check_model_matches_pool(meta, pool)
        ids = pool.particle_ids
        total = len(pool)
        conf_sum = 0.0
        pixels = np.zeros(len(names), np.int64)
        with atomic_path(masks_path) as tmp_masks, atomic_open(out_csv, "w") as fh:
            stack, finish = save_mask_stack(tmp_masks, total, tuple(pool.shape), fmt)
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["particle_id", "mean_confidence", *[f"fraction_{c}" for c in names]])
            done = 0
            for idx, volumes in BatchReader(pool, batch_size=batch_size):
                with torch.no_grad():
                    probs = torch.softmax(model(to_model_input(model, volumes, dev)).float(), dim=1)
                conf, pred = probs.max(dim=1)
                pred_np = pred.cpu().numpy().astype(np.int16)
                stack[idx] = pred_np
                conf_np = conf.flatten(1).mean(1).cpu().numpy()
                flat = pred_np.reshape(len(idx), -1)
                for i, c, row in zip(idx, conf_np, flat, strict=True):
                    frac = np.bincount(row, minlength=len(names)) / row.size
                    writer.writerow([ids[i], format(c, ".6g"), *(format(f, ".6g") for f in frac)])
                pixels += np.bincount(flat.ravel(), minlength=len(names))
                conf_sum += float(conf_np.sum())
                done += len(idx)
                if progress:
                    progress(done, total)
            finish()
            del stack
    share = pixels / max(int(pixels.sum()), 1)
    return {
        "n": int(total), "class_names": names, "output": str(out_csv), "masks": str(masks_path),
        "outputs": {"csv": str(out_csv), "masks": str(masks_path)},
        "counts": dict(zip(names, pixels.tolist(), strict=True)),  # predicted pixels per class
        "pixel_fraction": dict(zip(names, [float(s) for s in share], strict=True)),
        "mean_confidence": conf_sum / total if total else None,
    }


__all__ = [
    "MASK_COLUMNS", "MaskImportSummary", "class_names_for", "default_masks_path", "fit_to_pool",
    "import_mask_file", "iou_per_class", "mask_column", "mask_labels", "mean_iou", "parse_source",
    "pixel_confusion", "predict_masks", "read_truth_masks", "source_shape",
]
