"""Uniform random rotations over SO(3) and small rotation helpers.

A rotation matrix R acts on column vectors of (x, y, z) coordinates: p_rotated = R @ p.
Uniformity: a unit quaternion made from four independent standard normals is uniform on the
3-sphere, and the double cover S^3 -> SO(3) carries that to the Haar (uniform) measure.
Quaternion -> matrix always gives det(R) = +1, unlike matrices orthogonalised by SVD.
"""

from __future__ import annotations

import numpy as np


def random_quaternions(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` uniform random unit quaternions (w, x, y, z), shape (n, 4), float64, with w >= 0."""
    q = rng.standard_normal((n, 4))
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    norm[norm == 0] = 1.0  # probability zero, but never divide by zero
    q = q / norm
    # q and -q are the same rotation: pick w >= 0 so that written quaternions are canonical
    return np.where(q[:, :1] < 0, -q, q)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (n, 3, 3) from unit quaternions (n, 4) ordered (w, x, y, z)."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    m = np.empty(q.shape[:-1] + (3, 3))
    m[..., 0, 0] = 1 - 2 * (y * y + z * z)
    m[..., 0, 1] = 2 * (x * y - w * z)
    m[..., 0, 2] = 2 * (x * z + w * y)
    m[..., 1, 0] = 2 * (x * y + w * z)
    m[..., 1, 1] = 1 - 2 * (x * x + z * z)
    m[..., 1, 2] = 2 * (y * z - w * x)
    m[..., 2, 0] = 2 * (x * z - w * y)
    m[..., 2, 1] = 2 * (y * z + w * x)
    m[..., 2, 2] = 1 - 2 * (x * x + y * y)
    return m


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` rotation matrices (n, 3, 3) drawn uniformly from SO(3)."""
    return quaternion_to_matrix(random_quaternions(n, rng))


def rotation_angle(r: np.ndarray) -> np.ndarray:
    """Rotation angle in radians, in [0, pi], of each matrix in (..., 3, 3)."""
    trace = np.trace(r, axis1=-2, axis2=-1)
    return np.arccos(np.clip((trace - 1.0) / 2.0, -1.0, 1.0))


def axis_angle(axis: np.ndarray | list[float], angle: float) -> np.ndarray:
    """The 3x3 matrix of a rotation by `angle` radians about `axis` (right-hand rule)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)
