"""A tiny simulated benchmark input shared by the benchmark tests: a pool and its truth.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cryoal.io.pool import PoolWriter
from cryoal.simulate.particles import simulate_particles


def write_tiny_benchmark(d: Path, per_class: int = 12, classes: int = 3, box: int = 16,
                         seed: int = 3) -> tuple[list[str], np.ndarray, list[str]]:
    """Write d/pool.h5 (normalised particles, no labels) and d/truth.csv; returns (ids, class index
    per particle, class names)."""
    vols, labels, names = simulate_particles(per_class, classes=classes, snr=1.0, box=box, voxel_size=20.0,
                                             seed=seed)
    vols = (vols - vols.mean(axis=(1, 2, 3), keepdims=True)) / vols.std(axis=(1, 2, 3), keepdims=True)
    ids = [f"p{i:03d}" for i in range(len(labels))]
    with PoolWriter(d / "pool.h5", shape=(box,) * 3, voxel_size=20.0) as w:
        w.add(vols, ids, [f"{i}.mrc" for i in ids])
    with open(d / "truth.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["particle_id", "label"])
        writer.writerows((pid, names[c]) for pid, c in zip(ids, labels, strict=True))
    return ids, np.asarray(labels), list(names)
