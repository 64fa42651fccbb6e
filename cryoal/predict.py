"""Classify every particle of a pool: `predict_pool` streams it in batches and writes a CSV.

CSV columns: `particle_id,predicted_label,confidence,p_<class>...` (confidence = the top
probability). Memory stays flat in the pool size: one batch of volumes at a time, rows are written
as they come to a temporary file that replaces the target only when every row is written. The
next batch is read from the pool on a background thread while the model runs (`BatchReader`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from cryoal.device import exact_float32
from cryoal.errors import CryoalError, OptionError

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

    A segmentation pool gets masks instead (`cryoal.masks.predict_masks`): predicted masks to
    `masks_path` (.npy or .mrc; default `<csv stem>_masks.npy`) and a per-image CSV with the mean
    confidence.

    `calibrated` (default) divides the logits by the checkpoint's fitted temperature
    (`cryoal.calibration`) before the softmax; False writes the raw softmax.
    """
    import contextlib

    from cryoal.checkpoint import check_model_matches_pool, load_model
    from cryoal.device import resolve_device, use_all_cpu_cores
    from cryoal.inference import predict_proba
    from cryoal.io.atomic import atomic_open, check_output_dir
    from cryoal.io.pool import open_pool
    from cryoal.io.prefetch import BatchReader
    from cryoal.select import output_paths

    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")
    with open_pool(pool_path) as pool:
        dense = pool.mode == "segmentation"
    if dense or masks_path is not None:
        from cryoal.masks import predict_masks

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
    model, meta = load_model(model_path, device=dev)
    temperature = float(meta.get("temperature", 1.0)) if calibrated else 1.0
    names = [str(c) for c in meta["class_names"]]
    counts = np.zeros(len(names), dtype=np.int64)
    conf_sum = 0.0
    with open_pool(pool_path) as pool:
        check_model_matches_pool(meta, pool)
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


__all__ = ["prediction_columns", "predict_pool"]
