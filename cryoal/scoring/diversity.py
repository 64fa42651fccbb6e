"""Batch (diversity) schemes: coreset (k-center greedy) and BADGE (k-means++ on gradient embeddings).

Both return a selection order and, for each pick, its "gain": the distance from the picked point
to the nearest point chosen before it (for coreset, labelled particles count as chosen). Memory is
O(N) beyond the (N, F) features: no N x N matrix, and BADGE never forms its (N, C*F) embeddings.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

# Rows per block when comparing every point with many centres (bounds the (block, M) matrix).
CENTRE_BLOCK = 4096


def penultimate(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, features) from one forward: features are the input of `model.head` when the model
    has a Linear head (the conventions' classifiers), else `model.features(x)`."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        seen: list[Tensor] = []
        hook = head.register_forward_hook(lambda m, args, out: seen.append(args[0]))
        try:
            logits = model(x)
        finally:
            hook.remove()
        if len(seen) == 1:
            return logits, seen[0].flatten(1)
    if not hasattr(model, "features"):
        raise TypeError("coreset and badge need a model with a `features(x)` method or a Linear `head`")
    return model(x), model.features(x).flatten(1)


def _sq_dist_to(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    diff = points - centre
    return np.einsum("ij,ij->i", diff, diff)


def min_sq_dist(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distance from each point to its nearest centre, in row blocks (no N x M matrix)."""
    out = np.empty(len(points))
    cn = np.einsum("ij,ij->i", centres, centres)
    for start in range(0, len(points), CENTRE_BLOCK):
        blk = points[start : start + CENTRE_BLOCK]
        d = np.einsum("ij,ij->i", blk, blk)[:, None] + cn[None, :] - 2.0 * blk @ centres.T
        out[start : start + CENTRE_BLOCK] = np.maximum(d.min(axis=1), 0.0)
    return out


def kcenter_greedy(
    features: np.ndarray, n: int, centres: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Coreset selection: repeatedly pick the point farthest from every chosen point.

    `centres` (M, F) are already-chosen points (the labelled set). Without centres, the first
    pick is the point farthest from the mean. Ties go to the lowest index. Returns (order, gains),
    gains being the Euclidean distance to the nearest earlier centre when picked.
    """
    x = np.asarray(features, dtype=np.float64)
    n = min(n, len(x))
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n)
    if centres is not None and len(centres):
        min_d = min_sq_dist(x, np.asarray(centres, dtype=np.float64))
        start = 0
    else:
        if n == 0:
            return order, gains
        first = int(np.argmax(_sq_dist_to(x, x.mean(axis=0))))
        order[0], gains[0] = first, float(np.sqrt(_sq_dist_to(x[first : first + 1], x.mean(axis=0))[0]))
        min_d = _sq_dist_to(x, x[first])
        min_d[first] = -np.inf
        start = 1
    for k in range(start, n):
        i = int(np.argmax(min_d))
        order[k], gains[k] = i, float(np.sqrt(max(min_d[i], 0.0)))
        np.minimum(min_d, _sq_dist_to(x, x[i]), out=min_d)
        min_d[i] = -np.inf  # never again, even among exact duplicates
    return order, gains


def badge_embedding_parts(probs: np.ndarray) -> np.ndarray:
    """a_i = p_i - e_{argmax p_i}: the last-layer gradient embedding is a_i (outer) h_i."""
    p = np.asarray(probs, dtype=np.float64)
    a = p.copy()
    a[np.arange(len(p)), p.argmax(axis=1)] -= 1.0
    return a


def badge_select(
    probs: np.ndarray, features: np.ndarray, n: int, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """BADGE: k-means++ seeding on g_i = a_i (outer) h_i, never forming g.

    ||g_i||^2 = |a_i|^2 |h_i|^2 and <g_i, g_j> = (a_i . a_j)(h_i . h_j), so each step costs
    O(N (C + F)). The first pick is the largest ||g_i||; each next pick is drawn with probability
    proportional to the squared distance to the nearest pick so far (uniformly among the rest if
    every distance is zero). Returns (order, gains), gains being that distance when picked.
    """
    a = badge_embedding_parts(probs)
    h = np.asarray(features, dtype=np.float64)
    n = min(n, len(a))
    norm2 = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", h, h)
    rng = np.random.default_rng(seed)
    order = np.empty(n, dtype=np.int64)
    gains = np.empty(n)
    chosen = np.zeros(len(a), dtype=bool)
    min_d2 = np.full(len(a), np.inf)
    for k in range(n):
        if k == 0:
            i = int(np.argmax(norm2))
            d2 = float(norm2[i])
        else:
            w = np.where(chosen, 0.0, min_d2)
            cum = np.cumsum(w)
            if cum[-1] > 0:
                i = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
                i = min(i, len(a) - 1)
            else:
                rest = np.flatnonzero(~chosen)
                i = int(rest[int(rng.integers(len(rest)))])
            d2 = float(min_d2[i])
        order[k], gains[k] = i, np.sqrt(max(d2, 0.0))
        chosen[i] = True
        d2_new = norm2 + norm2[i] - 2.0 * (a @ a[i]) * (h @ h[i])
        np.minimum(min_d2, np.maximum(d2_new, 0.0), out=min_d2)
    return order, gains


def gains_by_index(order: np.ndarray, gains: np.ndarray, size: int) -> np.ndarray:
    """Scatter per-pick gains back to per-sample scores (NaN for samples never picked)."""
    out = np.full(size, np.nan)
    out[order] = gains
    return out
