"""Classification and segmentation metrics from one confusion matrix: accuracy, per-class
recall, per-class and mean IoU. Targets may be per sample or per pixel; -1 (unlabelled) is left
out everywhere."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: rows are the true class, columns the predicted class. Targets may be dense
    (masks: every pixel counts) and -1 (unlabelled) is left out."""
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    keep = t >= 0
    flat = t[keep].astype(np.int64) * n_classes + p[keep].astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def labelled_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of labelled targets (samples, or pixels of masks) predicted right; NaN if none."""
    t = np.asarray(y_true)
    keep = t >= 0
    return float((np.asarray(y_pred)[keep] == t[keep]).mean()) if keep.any() else float("nan")


def per_class_accuracy(cm: np.ndarray) -> list[float | None]:
    """Recall of each class (diagonal over row sum); None for a class with no samples."""
    rows = cm.sum(axis=1)
    return [float(cm[i, i] / rows[i]) if rows[i] else None for i in range(cm.shape[0])]


def iou_per_class(cm: np.ndarray) -> list[float | None]:
    """Intersection over union of each class from a confusion matrix; None where the class is
    neither present nor predicted."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(cm.shape[0])]


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes with a defined IoU (NaN if none)."""
    vals = [v for v in iou_per_class(cm) if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


__all__ = ["confusion_matrix", "iou_per_class", "labelled_accuracy", "mean_iou", "per_class_accuracy"]
