"""Classify every particle of a pool: `predict_pool` streams it in batches and writes a CSV;
`predict_masks` does the same for a segmentation pool, with a file of predicted masks.

CSV columns: `particle_id,predicted_label,confidence,p_<class>...` (confidence = the top
probability). Memory stays flat in the pool size: one batch of volumes at a time, rows are written
as they come to a temporary file that replaces the target only when every row is written. The
next batch is read from the pool on a background thread while the model runs (`BatchReader`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cryoal.errors import CryoalError, OptionError
from cryoal.learn.device import exact_float32

PROB_FORMAT = ".6g"


def prediction_columns(class_names: list[str]) -> list[str]:
    """The CSV header for a model with these classes."""
    return ["particle_id", "predicted_label", "confidence", *[f"p_{c}" for c in class_names]]


@exact_float32()
def predict_pool(
    pool_path: str | os.PathLike,
    model_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    fmt: str = "csv",
    masks_path: str | os.PathLike | None = None,
    calibrated: bool = True,
) -> dict[str, Any]:
    """Write predictions for every particle of the pool to `out_csv`; returns a summary dict
    (`n`, `counts` per predicted class, `mean_confidence`, `class_names`, `outputs`).

    `progress(done, total)` is called after each batch. `fmt`: `csv`, `star` (a RELION particle
    STAR file with `rlnClassNumber` at `out_csv`, see `cryoal.export.write_predictions_star`) or
    `both` (the STAR file beside the CSV, suffix `.star`). The STAR file needs the probabilities
    of every particle in memory (N x C floats), the CSV is streamed.

    A segmentation pool gets masks instead (`predict_masks`): predicted masks to
    `masks_path` (.npy or .mrc; default `<csv stem>_masks.npy`) and a per-image CSV with the mean
    confidence.

    `calibrated` (default) divides the logits by the checkpoint's fitted temperature
    (`cryoal.learn.calibration`) before the softmax; False writes the raw softmax.
    """
    import contextlib

    from cryoal.io.atomic import atomic_open, check_output_dir
    from cryoal.io.pool import open_pool
    from cryoal.io.prefetch import BatchReader
    from cryoal.learn.checkpoint import model_and_pool
    from cryoal.learn.device import resolve_device, use_all_cpu_cores
    from cryoal.learn.inference import predict_proba
    from cryoal.select import output_paths

    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")
    with open_pool(pool_path) as pool:
        dense = pool.mode == "segmentation"
    if dense or masks_path is not None:
        if fmt != "csv" or not dense:
            raise CryoalError(f"{pool_path}: --masks and segmentation pools go with --format csv and "
                              "masks with segmentation pools only")
        return predict_masks(pool_path, model_path, out_csv, masks_path, batch_size=batch_size,
                             device=device, progress=progress)
    paths = output_paths(out_csv, fmt)
    for path in paths.values():
        check_output_dir(path)
    dev = resolve_device(device)
    if dev.type == "cpu":
        use_all_cpu_cores()
    with model_and_pool(model_path, pool_path, dev) as (model, meta, pool):
        temperature = float(meta.get("temperature", 1.0)) if calibrated else 1.0
        names = [str(c) for c in meta["class_names"]]
        counts = np.zeros(len(names), dtype=np.int64)
        conf_sum = 0.0
        ids = pool.particle_ids
        total = len(pool)
        done = 0
        if "star" in paths and pool.mode == "segmentation":
            raise OptionError(f"--format {fmt}: STAR export holds one class per particle, not masks; use csv")
        all_probs = np.empty((total, len(names)), np.float64) if "star" in paths else None
        with atomic_open(paths["csv"], "w") if "csv" in paths else contextlib.nullcontext() as fh:
            writer = csv.writer(fh, lineterminator="\n") if fh is not None else None
            if writer is not None:
                writer.writerow(prediction_columns(names))
            for idx, volumes in BatchReader(pool, batch_size=batch_size):
                proba = predict_proba(model, volumes, dev, temperature)
                top = proba.argmax(axis=1)
                conf = proba[np.arange(len(top)), top]
                if all_probs is not None:
                    all_probs[idx] = proba
                if writer is not None:
                    for i, k, c, p in zip(idx, top, conf, proba, strict=True):
                        probs = (format(v, PROB_FORMAT) for v in p)
                        writer.writerow([ids[i], names[k], format(c, PROB_FORMAT), *probs])
                counts += np.bincount(top, minlength=len(names))
                conf_sum += float(conf.sum())
                done += len(idx)
                if progress:
                    progress(done, total)
            if all_probs is not None:  # before the CSV is renamed into place: both or neither
                from cryoal.export import write_predictions_star

                write_predictions_star(paths["star"], pool, np.arange(total), all_probs, names)
    return {
        "n": int(total), "class_names": names,
        "counts": dict(zip(names, counts.tolist(), strict=True)),
        "mean_confidence": conf_sum / total if total else None,
        "output": str(out_csv), "outputs": paths, "temperature": temperature,
    }


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

    from cryoal.io.atomic import atomic_open, atomic_path, check_output_dir
    from cryoal.io.images import mask_format, save_mask_stack
    from cryoal.io.prefetch import BatchReader
    from cryoal.learn.checkpoint import model_and_pool
    from cryoal.learn.device import resolve_device
    from cryoal.models.input import to_model_input

    if batch_size < 1:
        raise CryoalError(f"--batch-size {batch_size}: must be at least 1")
    masks_path = Path(masks_path) if masks_path is not None else default_masks_path(out_csv)
    fmt = mask_format(masks_path)
    check_output_dir(out_csv)
    check_output_dir(masks_path)
    dev = resolve_device(device)
    with model_and_pool(model_path, pool_path, dev) as (model, meta, pool):
        names = [str(c) for c in meta["class_names"]]
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


__all__ = ["default_masks_path", "prediction_columns", "predict_masks", "predict_pool"]
