"""Render pseudo-atom models onto voxel grids.

Each Gaussian blob is integrated exactly over every voxel (differences of erf), so a blob narrower
than a voxel still puts its full mass on the grid without aliasing. An isotropic Gaussian is a
product of three 1D profiles, so a volume is sum_a w_a gz_a ⊗ gy_a ⊗ gx_a: one matrix product per
volume instead of a loop over atoms and voxels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
from scipy.special import erf

from cryoal.simulate.shapes import ClassShape

_SQRT2 = np.sqrt(2.0)


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run BLAS on one thread inside the block.

    The render products are small (e.g. 1024x54 by 54x32): threads cost more than they save,
    and on a busy machine their spin-waits made rendering up to 10x slower (measured).
    threadpoolctl is optional; without it BLAS keeps its default threads.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def axis_profiles(coords: np.ndarray, sigmas: np.ndarray, n: int) -> np.ndarray:
    """Fraction of each 1D Gaussian (centre `coords`, width `sigmas`, in voxels) in voxels 0..n-1.

    Voxel i covers [i - 0.5, i + 0.5]. Returns (A, n) float64.
    """
    edges = np.arange(n + 1, dtype=np.float64) - 0.5
    cdf = erf((edges[None, :] - coords[:, None]) / (sigmas[:, None] * _SQRT2))
    return 0.5 * (cdf[:, 1:] - cdf[:, :-1])


def render_points(
    xyz: np.ndarray, sigmas: np.ndarray, weights: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """Sum of voxel-integrated Gaussians at voxel coordinates `xyz` (A, 3) on a (D, H, W) grid.

    `sigmas` are in voxels. Values are mass per voxel (float32). Axis order follows the project
    convention: the point (x, y, z) lands in `vol[z, y, x]`.
    """
    d, h, w = shape
    gx = axis_profiles(xyz[:, 0], sigmas, w)
    gy = axis_profiles(xyz[:, 1], sigmas, h)
    gz = axis_profiles(xyz[:, 2], sigmas, d) * weights[:, None]
    zy = (gz[:, :, None] * gy[:, None, :]).reshape(len(xyz), d * h).astype(np.float32)
    return (zy.T @ gx.astype(np.float32)).reshape(d, h, w)


def render_shape(
    shape: ClassShape,
    rotation: np.ndarray,
    centre: np.ndarray | tuple[float, float, float],
    grid: tuple[int, int, int],
    voxel_size: float,
) -> np.ndarray:
    """Render a class template rotated by `rotation` (3x3, acting on x, y, z) with its centre of
    mass at voxel coordinate `centre` (x, y, z) of a (D, H, W) grid with `voxel_size` Å voxels."""
    xyz = shape.positions @ np.asarray(rotation).T / voxel_size + np.asarray(centre, dtype=np.float64)
    return render_points(xyz, shape.sigmas / voxel_size, shape.weights, grid)


def box_centre(box: int) -> np.ndarray:
    """Voxel coordinate (x, y, z) of the centre of a cubic box: index box // 2 on each axis."""
    return np.full(3, box // 2, dtype=np.float64)
