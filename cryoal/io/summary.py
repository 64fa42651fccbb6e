"""A pool's summary for `cryoal status`: counts, shape, voxel size, label rounds and sources."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import numpy as np

from cryoal.io.pool import open_pool


def _source_file(source: str) -> str:
    # "path#k" names item k of a stack file; the file is what counts as a source
    head, sep, tail = source.rpartition("#")
    return head if sep and tail.isdigit() else source


def pool_summary(path: str | os.PathLike) -> dict:
    """Everything `status` shows, as plain JSON-ready values (NaN voxel size -> None)."""
    path = Path(path)
    with open_pool(path) as pool:
        labels = pool.labels
        rounds = pool.label_rounds
        names = pool.class_names
        counts = np.bincount(labels[labels >= 0], minlength=len(names)) if len(names) else np.zeros(0, int)
        files = {_source_file(s) for s in pool.sources if s}
        tomos = {t for t in pool.tomos if t}
        edge = pool.edge
        round_counts = Counter(int(r) for r in rounds[rounds >= 0])
        voxel = pool.voxel_size
        info = {
            "pool": str(path),
            "format_version": int(pool.h5.attrs["format_version"]),
            "mode": pool.mode,
            "total": len(pool),
            "labelled": int((labels >= 0).sum()),
            "unlabelled": int((labels < 0).sum()),
            "per_class": {n: int(c) for n, c in zip(names, counts, strict=True)},
            "class_names": names,
            "box": pool.box,
            "shape": list(pool.shape),
            "voxel_size": voxel if math.isfinite(voxel) else None,
            "label_rounds": {str(r): round_counts[r] for r in sorted(round_counts)},
            "n_source_files": len(files),
            "n_source_dirs": len({os.path.dirname(f) for f in files}),
            "n_tomograms": len(tomos),
            "meta_columns": pool.meta_columns,
            "edge": int(edge.sum()) if edge is not None else None,
            "file_bytes": path.stat().st_size,
        }
    return info


# about 64 MB of float32 read at a time by `check_volumes`
_CHECK_BYTES = 64 * 2**20


def _volume_problem(pool, index: int) -> str | None:
    """Why particle `index` fails the check (unreadable or not finite), or None if it passes."""
    try:
        vol = pool.read([index])
    except Exception as exc:  # noqa: BLE001 (h5py raises OSError, ValueError, ...: all mean unreadable)
        return f"cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"
    if not np.isfinite(vol).all():
        return "holds NaN or infinite values"
    return None


def check_volumes(path: str | os.PathLike, max_bad: int = 5) -> dict:
    """Read every particle's volume back (`status --check`): is each one readable and finite?

    Reads about 64 MB at a time; a batch that fails is read again one particle at a time to name
    the particles at fault. Returns {"checked": N, "n_bad": k, "bad": [{"index", "particle_id",
    "problem"}, ...]} with at most `max_bad` entries in "bad".
    """
    n_bad, bad = 0, []
    with open_pool(path) as pool:
        n = len(pool)
        per_batch = max(1, _CHECK_BYTES // (4 * int(np.prod(pool.shape))))
        ids = pool.particle_ids
        for start in range(0, n, per_batch):
            rows = range(start, min(n, start + per_batch))
            try:
                ok = bool(np.isfinite(pool.read(slice(rows.start, rows.stop))).all())
            except Exception:  # noqa: BLE001 (any read failure: find the particles one by one)
                ok = False
            if ok:
                continue
            for i in rows:
                problem = _volume_problem(pool, i)
                if problem is not None:
                    n_bad += 1
                    if len(bad) < max_bad:
                        bad.append({"index": i, "particle_id": str(ids[i]), "problem": problem})
    return {"checked": n, "n_bad": n_bad, "bad": bad}
