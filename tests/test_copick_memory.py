"""Peak memory of `cryoal extract --copick`, measured in fresh processes (`benchmarks/peak_rss.py`).

Two copick projects hold the same 200 picks in a tomogram of 64 MiB and one 4× larger (256 MiB),
stored as OME-Zarr in 64³ chunks, uncompressed (so that nothing is small on disk by accident).
Reading box by box, chunk by chunk, the larger one must not raise the peak RSS by more than 50 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from copick_project import require, write_config
from script_helpers import load_benchmark_script

run_cryoal = load_benchmark_script("peak_rss").run_cryoal

copick = require("copick")
zarr = require("zarr")

PIXEL = 10.0
CHUNK = 64


def big_project(root: Path, depth: int, height: int = 512, width: int = 512) -> Path:
    """A copick project with one run whose wbp tomogram is (depth, height, width) float32, written
    through the tomogram's copick zarr store one slab at a time (a random slab repeated), plus 200
    picks spread from the first slice to the last."""
    config = write_config(root)
    proj = copick.from_file(str(config))
    run = proj.new_run("TS_big")
    tomo = run.new_voxel_spacing(PIXEL).new_tomogram("wbp")
    group = zarr.open_group(tomo.zarr(), mode="w")
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": "/",
        "axes": [{"name": a, "type": "space", "unit": "angstrom"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [PIXEL] * 3}]}],
    }]
    array = group.create_dataset("0", shape=(depth, height, width), chunks=(CHUNK,) * 3, dtype="f4",
                                 compressor=None, dimension_separator="/")
    slab = np.random.default_rng(1).normal(size=(CHUNK, height, width)).astype(np.float32)
    for z in range(0, depth, CHUNK):
        array[z:z + CHUNK] = slab
    rng = np.random.default_rng(0)
    points = np.array([[rng.integers(16, width - 16), rng.integers(16, height - 16),
                        16 + (depth - 32) * k // 200] for k in range(200)], dtype=float) * PIXEL
    run.new_picks("ribosome", session_id="1", user_id="alice").from_numpy(points)
    return config


def test_peak_memory_does_not_grow_with_tomogram_size(tmp_path):
    small = big_project(tmp_path / "small", 64)  # 64 MiB
    big = big_project(tmp_path / "big", 256)  # 256 MiB
    peaks = []
    for config in (small, big):
        pool = config.parent / "pool.h5"
        run = run_cryoal(["extract", "--copick", str(config), "-o", str(pool), "--box", "32"])
        assert run.returncode == 0, run.stderr
        assert "extracted 200 particles" in run.stdout
        peaks.append(run.peak_mib)
    small_mib, big_mib = peaks
    print(f"peak RSS: 64 MiB tomogram {small_mib:.0f} MiB, 256 MiB tomogram {big_mib:.0f} MiB")
    assert big_mib - small_mib < 50 * 1e6 / 2**20, peaks
