"""Whether `train` keeps a fitted temperature: never on a tiny validation split, and on a larger
one only when it lowers the validation NLL by more than chance (a likelihood-ratio test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.io.pool import PoolWriter
from cryoal.learn.calibration import CHI2_1_95, decide_temperature, fit_temperature, nll, softmax

pytestmark = pytest.mark.usefixtures("one_omp_thread")


def _split(n: int, true_t: float, seed: int, c: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Validation logits whose calibrated temperature is `true_t`: labels drawn from softmax(z),
    logits handed over are true_t * z (1: calibrated; 3: over-confident; 0.3: under-confident)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 1.5
    cum = softmax(z).cumsum(axis=1)
    y = np.minimum((rng.random((n, 1)) > cum).sum(axis=1), c - 1)  # inverse-CDF draw per row
    return z * true_t, y


def test_tiny_split_keeps_t_one_and_says_why():
    moved = 0
    for seed in range(50):
        logits, y = _split(19, 3.0, seed)
        d = decide_temperature(logits, y)
        assert d["temperature"] == 1.0 and not d["applied"] and d["fitted_temperature"] is None
        assert d["n_val"] == 19 and "fewer than 20" in d["reason"]
        assert d["nll_after"] == d["nll_before"] == pytest.approx(nll(logits, y))
        moved += abs(np.log(fit_temperature(logits, y))) > np.log(1.5)
    assert moved > 25  # what was refused: a fit would have moved T by 1.5x or more in most splits
    logits, y = _split(4, 3.0, 0)
    assert decide_temperature(logits, y)["temperature"] == 1.0


def test_decision_is_the_likelihood_ratio_test_against_a_grid_search():
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    cases = [(20, 1.0), (30, 1.5), (50, 1.0), (80, 0.7), (200, 1.0), (200, 1.2)] * 2
    for seed, (n, true_t) in enumerate(cases):
        logits, y = _split(n, true_t, seed)
        d = decide_temperature(logits, y)
        before = nll(logits, y)
        best = min(nll(logits, y, t) for t in grid)
        ratio = 2 * n * (before - best)
        assert d["likelihood_ratio"] == pytest.approx(ratio, abs=1e-4)
        if abs(ratio - CHI2_1_95) > 1e-3:  # away from the threshold, the same verdict
            assert d["applied"] == (ratio > CHI2_1_95), (n, true_t, ratio)
        kept = d["fitted_temperature"] if d["applied"] else 1.0
        assert d["temperature"] == kept and d["nll_after"] == pytest.approx(nll(logits, y, kept))


def test_calibrated_models_rarely_get_a_temperature():
    """A calibrated model keeps T = 1 in about 95 % of splits: the test's level is 5 %."""
    trials = 400
    kept = sum(decide_temperature(*_split(100, 1.0, seed))["applied"] for seed in range(trials))
    # Binomial(400, 0.05): mean 20, sd 4.4; 6..38 is beyond 3 sd on both sides
    assert 6 <= kept <= 38, kept


@pytest.mark.parametrize("true_t", [3.0, 0.3])
def test_clearly_miscalibrated_models_keep_their_temperature(true_t):
    for seed in range(100):
        logits, y = _split(60, true_t, seed)
        d = decide_temperature(logits, y)
        assert d["applied"], (seed, d["reason"])
        assert d["temperature"] == d["fitted_temperature"] == pytest.approx(true_t, rel=0.6)
        assert d["nll_after"] < d["nll_before"] - CHI2_1_95 / 120


def test_cli_train_json_reports_the_uncalibrated_tiny_split(tmp_path):
    """The demo's case: 4 validation particles give T = 1, said in --json, the table and the model."""
    rng = np.random.default_rng(0)
    labels = [0, 1] * 10
    with PoolWriter(tmp_path / "pool.h5", shape=(8, 8, 8), class_names=["a", "b"]) as w:
        w.add(rng.standard_normal((20, 8, 8, 8), dtype=np.float32), [f"p{i}" for i in range(20)],
              ["s"] * 20, labels=labels)
    args = ["train", str(tmp_path / "pool.h5"), "-o", str(tmp_path / "m.pt"), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.stderr
    cal = json.loads(res.stdout)["calibration"]
    assert cal["applied"] is False and cal["temperature"] == 1.0 and cal["n_val"] == 4
    assert "only 4 validation particles (fewer than 20)" in cal["reason"]
    assert torch.load(tmp_path / "m.pt", weights_only=True)["temperature"] == 1.0
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.stderr
    assert "calibration: none, T = 1 (only 4 validation particles" in table.stdout
