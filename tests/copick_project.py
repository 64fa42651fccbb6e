"""Real copick projects for the tests, built with copick's own API on the local file system.

`build_project(root)`: an overlay-root config with three objects, two runs of different shapes and
contents, each tomogram holding planted asymmetric (L-shaped) objects of distinct values on noise,
and picks from two users:

* TS_01 (40×48×64 voxels at 10 Å, written by `tomogram.from_numpy`: 256³ chunks, a 3-level pyramid),
  also stored at a second voxel spacing, 20 Å (its own tomogram, made by 2×2×2 block averaging);
* TS_02 (36×40×56 at 10 Å, written with `write_ome_zarr_3d` in 16³ chunks, so boxes cross chunks);
* picks: alice (session 1) ribosomes in both runs, bob (session 7) apoferritin in both runs, with
  fractional locations, one pick near an edge, and one pick whose transformation holds a shift.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


def require(name: str) -> ModuleType:
    """Import the optional package `name` (copick, zarr) or skip the test module without it; where
    CRYOAL_REQUIRE_COPICK is set (CI), a missing package is a failure, never a silent skip."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if os.environ.get("CRYOAL_REQUIRE_COPICK"):
            pytest.fail(f"{name} is not installed (CRYOAL_REQUIRE_COPICK is set): {exc}", pytrace=False)
        pytest.skip(f"{name} is not installed", allow_module_level=True)


SPACING = 10.0
SHAPES = {"TS_01": (40, 48, 64), "TS_02": (36, 40, 56)}
# Planted objects: centre voxel (x, y, z) per run. Each is an L of distinct values (axes show).
PLANTED = {"TS_01": [(20, 30, 14), (44, 12, 25)], "TS_02": [(15, 20, 18), (38, 28, 9)]}
OBJECTS = [
    {"name": "ribosome", "is_particle": True, "label": 1, "radius": 60.0},
    {"name": "apoferritin", "is_particle": True, "label": 2, "radius": 40.0},
    {"name": "membrane", "is_particle": False, "label": 3},
]


def make_volume(run: str, seed: int) -> np.ndarray:
    """Noise with asymmetric L-shaped objects of distinct values at PLANTED[run]."""
    vol = np.random.default_rng(seed).normal(0.0, 1.0, SHAPES[run]).astype(np.float32)
    for n, (x, y, z) in enumerate(PLANTED[run]):
        base = 40.0 + 30.0 * n
        vol[z, y, x] = base
        for k in range(1, 5):
            vol[z, y, x + k] = base + k  # x arm, 4 long
        for k in range(1, 4):
            vol[z, y + k, x] = base + 10 + k  # y arm, 3 long
        for k in range(1, 3):
            vol[z + k, y, x] = base + 20 + k  # z arm, 2 long
    return vol


def block_average(vol: np.ndarray) -> np.ndarray:
    d, h, w = (s // 2 * 2 for s in vol.shape)
    v = vol[:d, :h, :w].astype(np.float64)
    return v.reshape(d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(1, 3, 5)).astype(np.float32)


# Picks in Å from the tomogram corner: (run, object, user, session) -> [(x, y, z), ...]
def pick_sets() -> dict[tuple[str, str, str, str], list[tuple[float, float, float]]]:
    a, b = PLANTED["TS_01"], PLANTED["TS_02"]
    return {
        ("TS_01", "ribosome", "alice", "1"): [
            (a[0][0] * SPACING + 1.2, a[0][1] * SPACING - 2.0, a[0][2] * SPACING + 4.9),
            (a[1][0] * SPACING, a[1][1] * SPACING, a[1][2] * SPACING),
            (30.0, 400.0, 200.0),  # near the x = 0 edge: edge-filled for boxes wider than 6
        ],
        ("TS_01", "apoferritin", "bob", "7"): [(300.5, 250.0, 120.0), (500.0, 100.0, 300.0)],
        ("TS_02", "ribosome", "alice", "1"): [(b[0][0] * SPACING, b[0][1] * SPACING, b[0][2] * SPACING)],
        ("TS_02", "apoferritin", "bob", "7"): [
            (b[1][0] * SPACING - 3.0, b[1][1] * SPACING, b[1][2] * SPACING + 2.0),
            (250.0, 190.0, 170.0),
        ],
    }


# A pick whose transformation holds a shift: its centre is location + shift.
SHIFTED = (("TS_02", "apoferritin", "bob", "7"), 1, (20.0, -10.0, 5.0))


def write_config(root: Path, objects=OBJECTS) -> Path:
    (root / "overlay").mkdir(parents=True, exist_ok=True)
    config = {
        "config_type": "filesystem", "name": "cryoal test", "version": "0.2.0",
        "pickable_objects": objects,
        "overlay_root": "local://" + str((root / "overlay").resolve()),
        "overlay_fs_args": {"auto_mkdir": True},
    }
    path = root / "copick.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def build_project(root: Path) -> Path:
    """Build the project under `root`; returns its config path."""
    import copick
    from copick.util.ome import write_ome_zarr_3d

    config = write_config(root)
    proj = copick.from_file(str(config))
    vol1, vol2 = make_volume("TS_01", 1), make_volume("TS_02", 2)
    run1 = proj.new_run("TS_01")
    run1.new_voxel_spacing(SPACING).new_tomogram("wbp").from_numpy(vol1)
    run1.new_voxel_spacing(2 * SPACING).new_tomogram("wbp").from_numpy(block_average(vol1), levels=1)
    run2 = proj.new_run("TS_02")
    tomo2 = run2.new_voxel_spacing(SPACING).new_tomogram("wbp")
    pyramid = {SPACING: vol2, 2 * SPACING: block_average(vol2)}
    write_ome_zarr_3d(tomo2.zarr(), pyramid, chunk_size=(16, 16, 16))
    for (run, obj, user, session), points in pick_sets().items():
        picks = proj.get_run(run).new_picks(obj, session_id=session, user_id=user)
        transforms = np.tile(np.eye(4), (len(points), 1, 1))
        if SHIFTED[0] == (run, obj, user, session):
            transforms[SHIFTED[1], :3, 3] = SHIFTED[2]
        picks.from_numpy(np.asarray(points, dtype=float), transforms=transforms,
                         scores=np.linspace(0.5, 0.9, len(points)), instance_ids=np.arange(len(points)) + 1)
    return config


def full_positions() -> dict[tuple[str, str, str, str], np.ndarray]:
    """The particle centres (Å) of every pick set: location plus the transformation's shift."""
    out = {}
    for key, points in pick_sets().items():
        pos = np.asarray(points, dtype=float)
        if key == SHIFTED[0]:
            pos[SHIFTED[1]] += SHIFTED[2]
        out[key] = pos
    return out


def particle_id(run: str, obj: str, user: str, session: str, k: int) -> str:
    return f"{run}_{obj}_{user}_{session}_{k}"


def tree_digest(root: Path, skip=lambda p: False) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest), except those `skip` names."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and not skip(p)
    }
