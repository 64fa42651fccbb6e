"""Scores of one active-learning run: test accuracy, macro-F1, and the area under the budget curve."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to the truth (NaN for an empty set)."""
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape}, y_pred {p.shape}")
    return float(np.mean(t == p)) if t.size else float("nan")


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over every class seen in the truth or the predictions.

    A class with no true and no predicted member cannot occur (it is not in the union); a class
    that is predicted but never true, or true but never predicted, has F1 = 0. This is what
    scikit-learn's `f1_score(average="macro", zero_division=0)` computes.
    """
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape}, y_pred {p.shape}")
    if t.size == 0:
        return float("nan")
    classes = np.union1d(t, p)
    # one-vs-rest counts for every class at once: (n_classes, n_samples) boolean masks
    is_true = t[None, :] == classes[:, None]
    is_pred = p[None, :] == classes[:, None]
    tp = np.sum(is_true & is_pred, axis=1)
    # F1 = 2tp / (2tp + fp + fn) = 2tp / (n_true + n_pred); the denominator is > 0 for every class here
    f1 = 2.0 * tp / (is_true.sum(axis=1) + is_pred.sum(axis=1))
    return float(np.mean(f1))


def aubc(n_labeled: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> float:
    """Area under the budget curve: trapezoid area of `values` vs `n_labeled`, over the label range.

    The points are sorted by `n_labeled`. The result is a mean accuracy over the budget, on the
    same 0..1 scale as the values. A single point has no range; its value is returned.
    """
    x = np.asarray(n_labeled, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("n_labeled and values must be equal-length, non-empty 1-D sequences")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    span = x[-1] - x[0]
    if span == 0:
        return float(np.mean(y))
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / span
