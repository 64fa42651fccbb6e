"""Simulated membrane images (2D) and patches (3D) with per-pixel masks, for the segmentation mode.

Each image holds 0-3 membranes: pieces of circles (spheres in 3D) of random radius and centre,
so that small ones are whole vesicles and large ones cross the image as gently curved lines
(sheets). A membrane is a lipid bilayer: its density across the membrane is two dark leaflets,
Gaussian profiles `LEAFLET_SEPARATION` pixels apart. The mask marks the bilayer (class 1,
`membrane`) against the rest (class 0, `background`). The density is blurred a little (the
microscope's point spread) and Gaussian noise is added at `snr` = signal variance / noise
variance, measured over the whole set.

Writing (`write_membrane_set`): images as float32 MRC files, masks as 8-bit PNG (2D) or int8
MRC (3D), `images.csv` (a manifest for `cryoal ingest --mode segmentation`: `particle_id,path`
and `mask_path` for the first `labelled` images only) and `truth_masks.csv` (`particle_id,
mask_path` for every image: the oracle's answers). Deterministic under `seed`.

Command line: ``python -m cryoal.simulate.membranes OUT_DIR [--n 200 --size 64 --ndim 2
--snr 1.0 --labelled 20 --seed 0]``.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

CLASS_NAMES = ("background", "membrane")
LEAFLET_SEPARATION = 4.0  # pixels between the two leaflets (~4 nm at 10 Å per pixel)
LEAFLET_SIGMA = 1.0
MASK_HALF_WIDTH = 3.0  # pixels from the bilayer centre that the mask calls membrane
BLUR_SIGMA = 0.7


def _distance_to_shell(grid: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance of every pixel (grid: (ndim, *shape)) to a circle/sphere surface."""
    offset = grid - centre.reshape(-1, *([1] * (grid.ndim - 1)))
    return np.sqrt((offset**2).sum(0)) - radius


def membrane_image(rng: np.random.Generator, shape: tuple[int, ...], n_membranes: int) -> tuple[
    np.ndarray, np.ndarray
]:
    """One noiseless image (float32, dark membranes on 0) and its mask (int16, 0/1)."""
    grid = np.indices(shape, dtype=np.float64)
    size = float(min(shape))
    density = np.zeros(shape, dtype=np.float64)
    mask = np.zeros(shape, dtype=np.int16)
    for _ in range(n_membranes):
        radius = size * float(np.exp(rng.uniform(np.log(0.15), np.log(2.0))))
        # centre: anywhere such that the shell passes through the image
        direction = rng.normal(size=len(shape))
        direction /= np.linalg.norm(direction)
        through = rng.uniform(0.15, 0.85, size=len(shape)) * np.asarray(shape)
        centre = through + direction * radius * rng.uniform(0.0, 1.0)
        d = _distance_to_shell(grid, centre, radius)
        half = LEAFLET_SEPARATION / 2
        leaflets = np.exp(-((d - half) ** 2) / (2 * LEAFLET_SIGMA**2)) + np.exp(
            -((d + half) ** 2) / (2 * LEAFLET_SIGMA**2)
        )
        density -= leaflets
        mask[np.abs(d) <= MASK_HALF_WIDTH] = 1
    return gaussian_filter(density, BLUR_SIGMA).astype(np.float32), mask


def simulate_membranes(
    n: int, size: int = 64, ndim: int = 2, snr: float = 1.0, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` noisy membrane images (n, *shape) float32 and their masks (n, *shape) int16.

    shape = (size,) * ndim. About one image in ten has no membrane (all background).
    """
    if ndim not in (2, 3):
        raise ValueError("ndim must be 2 or 3")
    if n < 1 or size < 8:
        raise ValueError("need n >= 1 and size >= 8")
    shape = (size,) * ndim
    rng = np.random.default_rng([seed, 7001])
    counts = rng.choice([0, 1, 2, 3], size=n, p=[0.1, 0.45, 0.3, 0.15])
    clean = np.empty((n, *shape), np.float32)
    masks = np.empty((n, *shape), np.int16)
    for i in range(n):
        clean[i], masks[i] = membrane_image(rng, shape, int(counts[i]))
    signal_var = float(clean.var())
    noise_std = math.sqrt(signal_var / snr) if math.isfinite(snr) and snr > 0 else 0.0
    images = clean + rng.normal(0.0, noise_std, size=clean.shape).astype(np.float32) if noise_std else clean
    return images.astype(np.float32), masks


def write_membrane_set(
    out_dir: str | os.PathLike, n: int = 200, size: int = 64, ndim: int = 2, snr: float = 1.0,
    labelled: int = 20, seed: int = 0,
) -> dict:
    """Write a simulated membrane set to `out_dir` (see the module docstring); returns a summary."""
    import mrcfile
    from PIL import Image

    from cryoal.errors import CryoalError
    from cryoal.io.tables import write_csv

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CryoalError(f"{out}: directory is not empty")
    if not 0 <= labelled <= n:
        raise CryoalError(f"--labelled {labelled}: must be between 0 and --n {n}")
    images, masks = simulate_membranes(n, size, ndim, snr, seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    ids = [f"mem{i + 1:04d}" for i in range(n)]
    paths, mask_paths = [], []
    for pid, img, mask in zip(ids, images, masks, strict=True):
        with mrcfile.new(out / "images" / f"{pid}.mrc", overwrite=True) as mrc:
            mrc.set_data(img)
            mrc.voxel_size = 10.0
        if ndim == 2:
            mask_rel = f"masks/{pid}.png"
            Image.fromarray(mask.astype(np.uint8), mode="L").save(out / mask_rel)
        else:
            mask_rel = f"masks/{pid}.mrc"
            with mrcfile.new(out / mask_rel, overwrite=True) as mrc:
                mrc.set_data(mask.astype(np.int8))
        paths.append(f"images/{pid}.mrc")
        mask_paths.append(mask_rel)
    given = [m if i < labelled else "" for i, m in enumerate(mask_paths)]
    write_csv(out / "images.csv", {"particle_id": ids, "path": paths, "mask_path": given})
    write_csv(out / "truth_masks.csv", {"particle_id": ids, "mask_path": mask_paths})
    frac = float((masks == 1).mean())
    return {"n": n, "shape": list(images.shape[1:]), "labelled": labelled, "membrane_fraction": frac,
            "classes": list(CLASS_NAMES), "out_dir": str(out)}


def main(argv: list[str] | None = None) -> None:
    """`python -m cryoal.simulate.membranes OUT_DIR ...`"""
    ap = argparse.ArgumentParser(prog="python -m cryoal.simulate.membranes",
                                 description="Simulated membrane images and masks for the segmentation mode.")
    ap.add_argument("out_dir")
    ap.add_argument("--n", type=int, default=200, help="number of images")
    ap.add_argument("--size", type=int, default=64, help="image size in pixels")
    ap.add_argument("--ndim", type=int, default=2, choices=(2, 3), help="2D images or 3D patches")
    ap.add_argument("--snr", type=float, default=1.0, help="signal variance / noise variance")
    ap.add_argument("--labelled", type=int, default=20, help="masks given in images.csv (the first N)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from cryoal.errors import CryoalError

    try:
        info = write_membrane_set(
            args.out_dir, args.n, args.size, args.ndim, args.snr, args.labelled, args.seed
        )
    except CryoalError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {info['n']} membrane images {info['shape']} to {info['out_dir']} "
          f"({info['membrane_fraction']:.1%} membrane pixels; {info['labelled']} masks in images.csv)")


if __name__ == "__main__":
    main()
