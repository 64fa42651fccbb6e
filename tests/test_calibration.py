"""Temperature scaling: the fit, where it is stored, and every place that turns logits into
probabilities or gradients (engine, baselines, select, predict) against obvious references."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorm
from typer.testing import CliRunner

import cryoal
from cryoal.cli import app
from cryoal.io.pool import PoolWriter
from cryoal.learn.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    set_temperature,
    softmax,
    temperature_of,
)
from cryoal.learn.checkpoint import load_model, save_checkpoint
from cryoal.models import build_model
from cryoal.scoring.gradnorm import gradnorm_scores
from cryoal.scoring.reference import reference_scores_by_norm

pytestmark = pytest.mark.usefixtures("one_omp_thread")
BOX = 8
NAMES = ["a", "b", "c"]


def _overconfident(n=400, c=4, scale=3.0, seed=0):
    """Labels drawn from softmax(z); the logits handed over are scale * z (true T = scale)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 1.5
    y = np.array([rng.choice(c, p=p) for p in softmax(z)])
    return z * scale, y


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_fit_matches_a_brute_force_nll_grid(scale):
    logits, y = _overconfident(scale=scale)
    t = fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))  # steps of 0.15 %
    losses = [nll(logits, y, g) for g in grid]
    best = grid[int(np.argmin(losses))]
    assert abs(np.log(t) - np.log(best)) < 0.003
    assert nll(logits, y, t) <= min(losses) + 1e-9
    assert t == pytest.approx(scale, rel=0.25)  # and it recovers the scale the data were made with


def test_fit_on_nothing_or_constant_logits_is_one():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0
    assert fit_temperature(np.ones((5, 3)), np.arange(5) % 3) == 1.0


def test_ece_against_a_plain_loop():
    rng = np.random.default_rng(4)
    p = softmax(rng.normal(size=(300, 5)) * 2)
    y = rng.integers(0, 5, 300)
    total = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        members = [i for i in range(300) if lo <= p[i].max() < hi or (b == 9 and p[i].max() >= hi)]
        if members:
            acc = np.mean([p[i].argmax() == y[i] for i in members])
            conf = np.mean([p[i].max() for i in members])
            total += len(members) / 300 * abs(acc - conf)
    assert expected_calibration_error(p, y) == pytest.approx(total, abs=1e-12)


@pytest.mark.parametrize("arch", ["rb3d", "resnet3d", "dsrf3d"])
@pytest.mark.parametrize("temperature", [0.4, 2.5])
def test_calibrated_gradnorm_matches_the_float64_loop(arch, temperature):
    """The engine's scores of z / T against the per-sample loop over CE(z / T, c) and H(softmax(z / T))."""
    torch.manual_seed(0)
    kw = {"rb3d": {"width": 8}, "resnet3d": {"width": 4}, "dsrf3d": {"width": 4, "fc": 16}}[arch]
    model = randomise_batchnorm(build_model(arch, (12,) * 3, 4, **kw), torch.Generator().manual_seed(3))
    x = torch.randn(3, 1, 12, 12, 12, generator=torch.Generator().manual_seed(1))
    ref = reference_scores_by_norm(model.double(), x.double(), temperature=temperature)
    model.float()
    for norm, want in ref.items():
        got = gradnorm_scores(model, x, norm=norm, temperature=temperature).scores
        for k in want:
            assert np.max(np.abs(got[k] - want[k]) / want[k]) <= 1e-4, (norm, k)
        got_h = gradnorm_scores(model, x, schemes=("entropy",), norm=norm, temperature=temperature).scores
        assert np.max(np.abs(got_h["entropy"] - want["entropy"]) / want["entropy"]) <= 1e-4
    plain = reference_scores_by_norm(model.double(), x.double())["l2"]["expected"]
    assert not np.allclose(plain, ref["l2"]["expected"], rtol=1e-3)  # the temperature does matter


def _model(path: Path, temperature: float | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet3d", (BOX,) * 3, 3, width=4).eval()
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    if temperature is not None:
        set_temperature(model, temperature)
    save_checkpoint(path, model, {"mode": "subtomogram", "class_names": NAMES, "input_shape": [BOX] * 3})
    return model


def _pool(path: Path, n=24) -> np.ndarray:
    rng = np.random.default_rng(0)
    vols = (rng.normal(size=(n, BOX, BOX, BOX)) * rng.uniform(0.2, 4, (n, 1, 1, 1))).astype(np.float32)
    with PoolWriter(path, shape=(BOX,) * 3, class_names=NAMES, voxel_size=10.0) as w:
        w.add(vols, [f"p{i:02d}" for i in range(n)], [f"p{i}.mrc" for i in range(n)],
              labels=[i % 3 if i < 6 else -1 for i in range(n)])
    return vols


def test_checkpoint_keeps_the_temperature_and_version_1_loads_uncalibrated(tmp_path, capsys):
    _model(tmp_path / "m.pt", 1.7)
    model, meta = load_model(tmp_path / "m.pt")
    assert temperature_of(model) == meta["temperature"] == 1.7
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format_version"] == 2 and raw["temperature"] == 1.7
    capsys.readouterr()
    old = {k: v for k, v in raw.items() if k != "temperature"}
    old["format_version"] = 1
    torch.save(old, tmp_path / "v1.pt")
    model1, meta1 = load_model(tmp_path / "v1.pt")
    assert temperature_of(model1) == meta1["temperature"] == 1.0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("warning: ") and "uncalibrated" in err[0]


def test_train_decides_the_temperature_on_its_validation_split():
    from cryoal.learn.calibration import decide_temperature
    from cryoal.learn.inference import predict_logits
    from cryoal.learn.train import fit

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 24)
    x = rng.normal(size=(72, BOX, BOX, BOX)).astype(np.float32) + y[:, None, None, None] * 0.8
    for val in (slice(1, None, 2), slice(1, 36, 2)):  # 36 validation particles, then a tiny 18
        model, metrics = fit(x[::2], y[::2], x[val], y[val], arch="resnet3d", n_classes=3, epochs=3,
                             batch_size=6, device="cpu", arch_kwargs={"width": 4})
        cal = metrics["calibration"]
        logits = predict_logits(model, x[val], "cpu").double().numpy()
        want = decide_temperature(logits, y[val])
        assert cal["applied"] == want["applied"] and cal["reason"] == want["reason"]
        assert cal["temperature"] == temperature_of(model) == pytest.approx(want["temperature"], rel=1e-4)
        assert cal["n_val"] == len(y[val]) and cal["nll_after"] <= cal["nll_before"] + 1e-12
        if cal["n_val"] < 20:
            assert not cal["applied"] and temperature_of(model) == 1.0
        else:
            assert cal["fitted_temperature"] == pytest.approx(fit_temperature(logits, y[val]), rel=1e-4)
    _, no_val = fit(x, y, None, None, arch="resnet3d", n_classes=3, epochs=1, batch_size=6, device="cpu",
                    arch_kwargs={"width": 4})
    assert no_val["calibration"] == {"temperature": 1.0, "applied": False, "fitted_temperature": None,
                                     "reason": "no validation split", "n_val": 0}


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_predict_divides_the_logits_by_the_temperature(tmp_path):
    _pool(tmp_path / "pool.h5")
    _model(tmp_path / "m.pt", 2.5)
    outs = {}
    for tag, extra in (("cal", ()), ("raw", ("--no-calibration",))):
        r = _run("predict", tmp_path / "pool.h5", "-m", tmp_path / "m.pt", "-o", tmp_path / f"{tag}.csv",
                 "--device", "cpu", *extra)
        assert r.exit_code == 0, r.stderr
        with open(tmp_path / f"{tag}.csv", newline="") as fh:
            outs[tag] = np.array([row[3:] for row in list(csv.reader(fh))[1:]], dtype=float)
    # calibrated = softmax(log p_raw / T): the same logits up to a per-row constant, over T
    want = softmax(np.log(outs["raw"]), 2.5)
    np.testing.assert_allclose(outs["cal"], want, rtol=2e-5, atol=1e-6)
    assert not np.allclose(outs["cal"], outs["raw"], atol=1e-3)


@pytest.mark.parametrize("scheme", ["expected", "entropy", "max-entropy", "margin", "least-confidence"])
def test_select_scores_use_the_temperature(tmp_path, scheme):
    vols = _pool(tmp_path / "pool.h5")
    model = _model(tmp_path / "m.pt", 0.6)
    rows = {}
    for tag, extra in (("cal", ()), ("raw", ("--no-calibration",))):
        r = _run("select", tmp_path / "pool.h5", "-m", tmp_path / "m.pt", "--scheme", scheme, "-n", 0,
                 "-o", tmp_path / f"{tag}.csv", "--device", "cpu", "--json", *extra)
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["temperature"] == (0.6 if tag == "cal" else 1.0)
        with open(tmp_path / f"{tag}.csv", newline="") as fh:
            rows[tag] = {row["particle_id"]: float(row["score"]) for row in csv.DictReader(fh)}
    unl = np.arange(6, 24)
    x = torch.from_numpy(vols[unl])
    cal = cryoal.score(model, x, scheme)  # the model object carries T = 0.6
    raw = cryoal.score(model, x, scheme, calibrated=False)
    for k, i in enumerate(unl):
        assert rows["cal"][f"p{i:02d}"] == pytest.approx(cal[k], rel=1e-5, abs=1e-12)
        assert rows["raw"][f"p{i:02d}"] == pytest.approx(raw[k], rel=1e-5, abs=1e-12)
    assert not np.allclose(cal, raw, rtol=1e-3)


def test_softmax_baselines_read_the_calibrated_probabilities(tmp_path):
    vols = _pool(tmp_path / "pool.h5")
    model = _model(tmp_path / "m.pt", 1.9)
    x = torch.from_numpy(vols)
    with torch.no_grad():
        p = softmax(model(x[:, None]).double().numpy(), 1.9)
    want = 1 - p.max(axis=1)  # least-confidence, by hand
    np.testing.assert_allclose(cryoal.score(model, x, "least-confidence"), want, rtol=1e-6)
