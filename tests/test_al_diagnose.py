"""benchmarks/al_diagnose.py: its calibration and skew measures against obvious per-sample formulas."""

from __future__ import annotations

import numpy as np
import pytest
from script_helpers import load_benchmark_script


@pytest.fixture(scope="module")
def diag():
    return load_benchmark_script("al_diagnose")


def _ece_loop(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """One sample at a time: find its bin by walking the edges, then sum |acc - conf| x share."""
    members: dict[int, list[int]] = {}
    for i, c in enumerate(conf):
        b = 0
        while b < bins - 1 and c >= (b + 1) / bins:
            b += 1
        members.setdefault(b, []).append(i)
    total = 0.0
    for idx in members.values():
        acc = sum(correct[i] for i in idx) / len(idx)
        mean_conf = sum(conf[i] for i in idx) / len(idx)
        total += len(idx) / len(conf) * abs(acc - mean_conf)
    return total


def test_ece_matches_the_per_sample_loop(diag):
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.1, 1.0, 500)
    correct = (rng.uniform(size=500) < conf ** 2).astype(float)  # overconfident on purpose
    for bins in (1, 5, 10):
        assert diag.ece(conf, correct, bins) == pytest.approx(_ece_loop(conf, correct, bins), abs=1e-12)
    assert diag.ece(conf, correct) > 0.05


def test_ece_is_zero_when_confidence_equals_bin_accuracy(diag):
    # two bins' worth of samples whose accuracy equals their (constant) confidence exactly
    conf = np.array([0.25] * 4 + [0.75] * 4)
    correct = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=float)
    assert diag.ece(conf, correct) == pytest.approx(0.0, abs=1e-12)


def test_top_share(diag):
    assert diag.top_share(np.array([2, 2, 1, 0, 2])) == pytest.approx(0.6)
    assert np.isnan(diag.top_share(np.array([], dtype=np.int64)))
