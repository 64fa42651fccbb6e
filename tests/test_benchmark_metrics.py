"""Benchmark metrics, splits and report files, checked against obvious references."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cryoal.benchmark import splits
from cryoal.benchmark.metrics import accuracy, aubc, macro_f1
from cryoal.benchmark.report import (
    CurveRow,
    Selection,
    plot_curves,
    read_curves,
    read_selections,
    summarize,
    write_curves,
    write_selections,
    write_summary,
)


def _f1_loop(t, p):
    """Per-class F1 by explicit counting, averaged over the classes present in t or p."""
    scores = []
    for c in sorted(set(t) | set(p)):
        tp = sum(1 for a, b in zip(t, p, strict=True) if a == c and b == c)
        fp = sum(1 for a, b in zip(t, p, strict=True) if a != c and b == c)
        fn = sum(1 for a, b in zip(t, p, strict=True) if a == c and b != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(scores) / len(scores)


def test_accuracy_and_macro_f1_match_references():
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = rng.integers(0, 5, 40)
        p = np.where(rng.random(40) < 0.6, t, rng.integers(0, 6, 40))  # class 5: predicted, never true
        assert accuracy(t, p) == pytest.approx(sum(a == b for a, b in zip(t, p, strict=True)) / 40)
        assert macro_f1(t, p) == pytest.approx(_f1_loop(list(t), list(p)), abs=1e-12)
        assert macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro", zero_division=0), abs=1e-12)
    assert macro_f1([0, 1, 1], [0, 1, 1]) == 1.0
    assert math.isnan(accuracy([], []))


def test_aubc_matches_hand_computed_value():
    # points (10, .5), (20, .7), (40, .8): trapezoids 10*(.5+.7)/2 + 20*(.7+.8)/2 = 6 + 15 = 21; range 30
    assert aubc([10, 20, 40], [0.5, 0.7, 0.8]) == pytest.approx(21 / 30)
    assert aubc([40, 10, 20], [0.8, 0.5, 0.7]) == pytest.approx(21 / 30)  # order does not matter
    assert aubc([10, 20], [0.6, 0.6]) == pytest.approx(0.6)  # a flat curve has its own value
    assert aubc([10], [0.4]) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        aubc([1, 2], [0.5])


def test_stratified_holdout_keeps_class_fractions():
    labels = np.repeat(np.arange(4), [10, 20, 3, 1])
    held = splits.stratified_holdout(labels, 0.3, splits.rng_for(0, splits.TEST_SPLIT))
    counts = np.bincount(labels[held], minlength=4)
    assert counts.tolist() == [3, 6, 1, 0]  # round(0.3 n), >= 1 for n >= 2, never a whole class
    again = splits.stratified_holdout(labels, 0.3, splits.rng_for(0, splits.TEST_SPLIT))
    assert np.array_equal(held, again)
    other = splits.stratified_holdout(labels, 0.3, splits.rng_for(1, splits.TEST_SPLIT))
    assert not np.array_equal(held, other)


def test_balanced_sample_spreads_over_classes():
    labels = np.repeat(np.arange(3), [2, 30, 30])
    cand = np.arange(labels.size)
    pick = splits.balanced_sample(labels, cand, 11, splits.rng_for(0, splits.INITIAL_SET))
    counts = np.bincount(labels[pick], minlength=3)
    assert pick.size == 11 and np.unique(pick).size == 11
    assert counts[0] == 2 and sorted(counts[1:].tolist()) == [4, 5]  # the small class is used up
    with pytest.raises(ValueError):
        splits.balanced_sample(labels, cand[:5], 6, splits.rng_for(0, 2))


def _rows():
    rows = []
    acc = {
        ("a", 0): [0.5, 0.7, 0.8], ("a", 1): [0.4, 0.6, 0.9],
        ("b", 0): [0.5, 0.5, 0.6], ("b", 1): [0.4, 0.5, 0.5],
    }
    for (scheme, seed), ys in acc.items():
        for cycle, y in enumerate(ys):
            rows.append(CurveRow(scheme, seed, cycle, 10 + 10 * cycle, y, y - 0.1))
    return rows


def test_summary_mean_and_std_over_seeds(tmp_path):
    summary = {s.scheme: s for s in summarize(_rows())}
    a0 = (10 * (0.5 + 0.7) / 2 + 10 * (0.7 + 0.8) / 2) / 20
    a1 = (10 * (0.4 + 0.6) / 2 + 10 * (0.6 + 0.9) / 2) / 20
    assert summary["a"].aubc_mean == pytest.approx((a0 + a1) / 2)
    assert summary["a"].aubc_std == pytest.approx(np.std([a0, a1], ddof=1))
    assert summary["a"].final_acc_mean == pytest.approx(0.85)
    assert summary["b"].final_acc_std == pytest.approx(np.std([0.6, 0.5], ddof=1))
    write_summary(tmp_path / "summary.csv", list(summary.values()))
    with open(tmp_path / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["scheme", "aubc_mean", "aubc_std", "final_acc_mean", "final_acc_std"]
    assert float(table[0]["aubc_mean"]) == pytest.approx((a0 + a1) / 2, abs=1e-6)


def test_curves_and_selections_round_trip(tmp_path):
    rows = _rows()
    write_curves(tmp_path / "curves.csv", rows)
    back = read_curves(tmp_path / "curves.csv")
    assert sorted(back, key=lambda r: r.key) == sorted(rows, key=lambda r: r.key)
    header = (tmp_path / "curves.csv").read_text().splitlines()[0]
    assert header == "scheme,seed,cycle,n_labeled,accuracy,macro_f1"
    picks = [Selection("a", 0, 0, 1, "p7"), Selection("a", 0, 0, 2, "p,3")]
    write_selections(tmp_path / "selections.csv", picks)
    assert read_selections(tmp_path / "selections.csv") == picks


def test_plot_writes_a_png(tmp_path):
    plot_curves(tmp_path / "curves.png", _rows(), ["a", "b"], title="t")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
