"""`cryoal benchmark` end to end on a tiny simulated pool (CPU, 16^3, 1 epoch)."""

from __future__ import annotations

import csv
import json
import sys
from unittest.mock import patch

import numpy as np
import pytest
from benchmark_helpers import write_tiny_benchmark
from typer.testing import CliRunner

from cryoal.benchmark import loop, steps
from cryoal.benchmark.metrics import aubc
from cryoal.cli import app

BOX = 16
PER_CLASS = 12
CLASSES = 3

pytestmark = pytest.mark.usefixtures("one_train_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 36-particle pool of 3 classes (pool labels left empty) and its truth.csv."""
    d = tmp_path_factory.mktemp("bench")
    ids, labels, names = write_tiny_benchmark(d, PER_CLASS, CLASSES, BOX)
    return d, ids, [names[c] for c in labels]


ARGS = ["--seeds", "1", "--initial", "6", "--budget", "4", "--test-fraction", "0.25", "--epochs", "1",
        "--batch-size", "4", "--device", "cpu", "--arch", "resnet3d", "--width", "4", "--mc-passes", "3"]


def _run(d, out, *extra, schemes="expected,random", cycles=2):
    args = ["benchmark", str(d / "pool.h5"), "--truth", str(d / "truth.csv"), "-o", str(out),
            "--schemes", schemes, "--cycles", str(cycles), *ARGS, *extra]
    with patch.object(sys, "argv", ["cryoal", *args]):  # what run.json records as the command line
        return CliRunner().invoke(app, args)


def _curves(out):
    with open(out / "curves.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _selections(out):
    with open(out / "selections.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def recorded(monkeypatch):
    """Wrap the real steps to record which rows were evaluated (the test split) and trained on."""
    seen = {"test": [], "train": []}
    real_eval, real_train = steps.evaluate_model, steps.train_model

    def evaluate(model, data, test, config):
        seen["test"].append(set(data.particle_ids[test]))
        return real_eval(model, data, test, config)

    def train(data, labelled, config, seed, cycle, init_model=None, **kw):
        if not kw.get("build_only"):
            seen["train"].append((cycle, set(data.particle_ids[labelled])))
        return real_train(data, labelled, config, seed, cycle, init_model, **kw)

    monkeypatch.setattr(steps, "evaluate_model", evaluate)
    monkeypatch.setattr(steps, "train_model", train)
    return seen


def test_tiny_benchmark_files_and_invariants(tiny, tmp_path, recorded):
    d, ids, _ = tiny
    out = tmp_path / "out"
    res = _run(d, out, cycles=3)
    assert res.exit_code == 0, res.output
    rows = _curves(out)
    assert [(r["scheme"], int(r["cycle"])) for r in rows] == [
        ("expected", 0), ("expected", 1), ("expected", 2), ("random", 0), ("random", 1), ("random", 2)
    ]
    for r in rows:  # n_labeled grows by the budget each cycle
        assert int(r["n_labeled"]) == 6 + 4 * int(r["cycle"])
        assert 0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["macro_f1"]) <= 1.0
    # cycle 0 is trained once per seed and shared: identical scores for every scheme
    c0 = {(r["accuracy"], r["macro_f1"]) for r in rows if r["cycle"] == "0"}
    assert len(c0) == 1
    assert sum(1 for cycle, _ in recorded["train"] if cycle == 0) == 1
    # one fixed, stratified test split (3 of 12 per class), never selected, never trained on
    tests = recorded["test"]
    assert all(t == tests[0] for t in tests) and len(tests[0]) == 9
    picks = _selections(out)
    assert len(picks) == 2 * 2 * 4  # 2 schemes x 2 selection rounds x budget
    assert not {p["particle_id"] for p in picks} & tests[0]
    for _, trained in recorded["train"]:
        assert not trained & tests[0]
    for scheme in ("expected", "random"):
        mine = [p["particle_id"] for p in picks if p["scheme"] == scheme]
        assert len(set(mine)) == len(mine)  # never picks a particle twice
    # summary: AUBC is the trapezoid over n_labeled / label range, from the curves
    with open(out / "summary.csv", newline="") as fh:
        summary = {r["scheme"]: r for r in csv.DictReader(fh)}
    for scheme in ("expected", "random"):
        acc = [float(r["accuracy"]) for r in rows if r["scheme"] == scheme]
        by_hand = (4 * (acc[0] + acc[1]) / 2 + 4 * (acc[1] + acc[2]) / 2) / 8
        assert float(summary[scheme]["aubc_mean"]) == pytest.approx(by_hand, abs=1e-6)
        assert float(summary[scheme]["aubc_mean"]) == pytest.approx(aubc([6, 10, 14], acc), abs=1e-6)
        assert float(summary[scheme]["final_acc_mean"]) == pytest.approx(acc[-1], abs=1e-6)
        assert float(summary[scheme]["aubc_std"]) == 0.0  # one seed
    run = json.loads((out / "run.json").read_text())
    assert run["command"].startswith("cryoal benchmark") and "--budget 4" in run["command"]
    assert {"cryoal", "torch", "numpy", "python"} <= set(run["versions"])
    assert run["options"]["budget"] == 4 and run["options"]["schemes"] == ["expected", "random"]
    assert run["start"] and run["end"]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "AUBC" in res.stdout and "expected" in res.stdout
    # the user's pool is only read: still no labels
    from cryoal.io.pool import open_pool

    with open_pool(d / "pool.h5") as pool:
        assert (pool.labels == -1).all()


def test_interrupt_keeps_valid_curves_and_resume_matches_uninterrupted(tiny, tmp_path, monkeypatch):
    d, _, _ = tiny
    full = tmp_path / "full"
    assert _run(d, full, cycles=3).exit_code == 0

    calls = {"n": 0}
    real_train = steps.train_model

    def flaky(*args, **kw):
        if not kw.get("build_only"):
            calls["n"] += 1
            if calls["n"] == 4:  # cycle 0, expected 1, expected 2, then Ctrl-C in random cycle 1
                raise KeyboardInterrupt
        return real_train(*args, **kw)

    monkeypatch.setattr(steps, "train_model", flaky)
    part = tmp_path / "part"
    res = _run(d, part, cycles=3)
    assert res.exit_code == 130
    rows = _curves(part)  # a valid CSV with the finished cycles only
    assert [(r["scheme"], r["cycle"]) for r in rows] == [
        ("expected", "0"), ("expected", "1"), ("expected", "2"), ("random", "0")
    ]
    assert not list(part.glob(".*tmp*"))  # no temporary file left behind
    monkeypatch.setattr(steps, "train_model", real_train)
    res = _run(d, part, "--resume", cycles=3)
    assert res.exit_code == 0, res.output
    assert _curves(part) == _curves(full)
    assert _selections(part) == _selections(full)
    run = json.loads((part / "run.json").read_text())
    assert len(run["previous_runs"]) == 1


def test_resume_extends_cycles_and_refuses_changed_options(tiny, tmp_path):
    d, _, _ = tiny
    out = tmp_path / "out"
    assert _run(d, out, cycles=2).exit_code == 0
    res = _run(d, out, "--resume", cycles=3)
    assert res.exit_code == 0, res.output
    full = tmp_path / "full"
    assert _run(d, full, cycles=3).exit_code == 0
    assert _curves(out) == _curves(full)
    res = _run(d, out, "--resume", "--epochs", "2", cycles=3)
    assert res.exit_code == 1 and "epochs" in res.output
    res = _run(d, out, cycles=3)  # without --resume: refuses to overwrite
    assert res.exit_code == 1 and "--resume" in res.output


def test_warm_start_runs_and_shares_cycle0(tiny, tmp_path):
    d, _, _ = tiny
    out = tmp_path / "warm"
    res = _run(d, out, "--warm-start", cycles=2)
    assert res.exit_code == 0, res.output
    rows = _curves(out)
    assert len({r["accuracy"] for r in rows if r["cycle"] == "0"}) == 1
    assert len(rows) == 4


@pytest.fixture
def inits(monkeypatch):
    """Record, per training call, the weights it started from (None: from scratch) and ended with."""
    from cryoal.select import model_fingerprint

    calls = []
    real_train = steps.train_model

    def train(data, labelled, config, seed, cycle, init_model=None, **kw):
        start = None if init_model is None else model_fingerprint(init_model)
        model = real_train(data, labelled, config, seed, cycle, init_model, **kw)
        if not kw.get("build_only"):
            calls.append((cycle, start, model_fingerprint(model)))
        return model

    monkeypatch.setattr(steps, "train_model", train)
    return calls


@pytest.mark.parametrize("warm", [True, False])
def test_warm_start_fine_tunes_the_previous_cycles_model(tiny, tmp_path, inits, warm):
    """With --warm-start each cycle starts from the weights the cycle before ended with (also after
    --resume, from the saved state); without it every cycle starts from scratch."""
    d, _, _ = tiny
    out = tmp_path / "w"
    flag = ("--warm-start",) if warm else ()
    res = _run(d, out, *flag, schemes="random", cycles=2)
    assert res.exit_code == 0, res.output
    res = _run(d, out, *flag, "--resume", schemes="random", cycles=3)
    assert res.exit_code == 0, res.output
    ended = {cycle: end for cycle, _, end in inits}
    started = {cycle: start for cycle, start, _ in inits}
    assert sorted(started) == [0, 1, 2] and started[0] is None
    if warm:
        assert started[1] == ended[0] and started[2] == ended[1]
    else:
        assert started[1] is None and started[2] is None


@pytest.mark.parametrize(
    ("extra", "schemes", "cycles", "message", "code"),
    [  # a bad --schemes is a usage error (2); sizes the pool cannot hold are the data's (1)
        ((), "expected,nope", 2, "unknown scheme 'nope'", 2),
        ((), "expected,coreset-balanced", 2, "coreset already builds a diverse batch", 2),
        (("--budget", "25"), "random", 2, "--budget 25", 1),
        (("--budget", "6"), "random", 5, "--budget 6", 1),
        (("--initial", "40"), "random", 2, "--initial 40", 1),
    ],
)
def test_bad_input_one_line(tiny, tmp_path, extra, schemes, cycles, message, code):
    d, _, _ = tiny
    res = _run(d, tmp_path / "o", *extra, schemes=schemes, cycles=cycles)
    assert res.exit_code == code
    err = res.output.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("error:")
    assert not (tmp_path / "o").exists()


def test_missing_truth_label_is_one_line(tiny, tmp_path):
    d, ids, labels = tiny
    bad = tmp_path / "truth.csv"
    rows = list(zip(ids, labels, strict=True))[:-2]
    bad.write_text("particle_id,label\n" + "".join(f"{i},{c}\n" for i, c in rows))
    args = ["benchmark", str(d / "pool.h5"), "--truth", str(bad), "-o", str(tmp_path / "o"), *ARGS]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1
    assert "no true label for 2 of the 36 pool particles" in res.output and ids[-2] in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_split_is_shared_and_deterministic():
    truth = np.repeat(np.arange(4), 25)
    cfg = loop.BenchmarkConfig(schemes=["random"], initial=8, budget=4, cycles=3, test_fraction=0.2)
    a, b = loop.make_split(truth, 0, cfg), loop.make_split(truth, 0, cfg)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.initial, b.initial)
    assert np.bincount(truth[a.test]).tolist() == [5, 5, 5, 5]
    assert np.bincount(truth[a.initial]).tolist() == [2, 2, 2, 2]
    assert not set(a.initial) & set(a.test)
    assert not np.array_equal(loop.make_split(truth, 1, cfg).test, a.test)


def test_balanced_variant_selects_with_balance(tiny, tmp_path, monkeypatch):
    """`expected-balanced` (the alias of `expected:balanced`) runs `select_from_pool(scheme="expected",
    pick="balanced")` beside plain `expected` (pick None: select's default), from the same cycle-0
    model, and is reported under its own name."""
    import cryoal.select

    calls = []
    real = cryoal.select.select_from_pool

    def recording(pool, model, **kw):
        calls.append((kw["scheme"], kw.get("pick")))
        return real(pool, model, **kw)

    monkeypatch.setattr(cryoal.select, "select_from_pool", recording)
    d, _, _ = tiny
    out = tmp_path / "o"
    res = _run(d, out, schemes="expected,expected-balanced", cycles=2)
    assert res.exit_code == 0, res.output
    assert set(calls) == {("expected", None), ("expected", "balanced")}
    rows = _curves(out)
    assert {r["scheme"] for r in rows} == {"expected", "expected-balanced"}
    assert len({r["accuracy"] for r in rows if r["cycle"] == "0"}) == 1
    picks = [r for r in _selections(out) if r["scheme"] == "expected-balanced"]
    assert len(picks) == 4 and len({r["particle_id"] for r in picks}) == 4


def test_variants_call_select_with_their_pick_and_calibration(tiny, tmp_path, monkeypatch):
    """`<scheme>:<pick>[:uncalibrated]` runs select with that pick and calibration; variants that
    differ only by pick score the shared cycle-0 model once (the score cache)."""
    import cryoal.learn.calibration as calibration
    import cryoal.scoring.registry as registry
    import cryoal.select

    # keep every fitted T (this tiny split would keep T = 1), so that calibrated scores differ
    real_decide = calibration.decide_temperature
    monkeypatch.setattr(calibration, "decide_temperature",
                        lambda z, y: real_decide(z, y, min_particles=0, critical=-float("inf")))
    calls, passes = [], []
    real = cryoal.select.select_from_pool
    real_gradnorm = registry.gradnorm_scores

    def recording(pool, model, **kw):
        calls.append((kw["scheme"], kw.get("pick"), kw.get("calibrated", True)))
        return real(pool, model, **kw)

    def counting(*a, **kw):
        passes.append(kw.get("temperature"))
        return real_gradnorm(*a, **kw)

    monkeypatch.setattr(cryoal.select, "select_from_pool", recording)
    monkeypatch.setattr(registry, "gradnorm_scores", counting)
    d, _, _ = tiny
    out = tmp_path / "o"
    res = _run(d, out, schemes="expected:top,expected:power,expected:power:uncalibrated", cycles=2)
    assert res.exit_code == 0, res.output
    assert calls == [("expected", "top", True), ("expected", "power", True), ("expected", "power", False)]
    n_batches = len(passes) // 2  # top scored (calibrated), power reused it, uncalibrated scored again
    assert n_batches >= 1 and len(passes) == 2 * n_batches and passes[-1] == 1.0
    picks = {}
    for r in _selections(out):
        picks.setdefault(r["scheme"], []).append(r["particle_id"])
    assert len(picks) == 3 and all(len(v) == len(set(v)) for v in picks.values())


@pytest.mark.parametrize("name,message", [
    ("expected:best", "unknown pick 'best'"), ("badge:power", "badge already builds a diverse batch"),
    ("nope:power", "unknown scheme 'nope:power'"), ("expected:power:raw", "expected <scheme>[:<pick>]"),
])
def test_bad_variant_names(name, message):
    from cryoal.benchmark.variants import parse_variant
    from cryoal.errors import CryoalError
    from cryoal.scoring import SCHEMES

    with pytest.raises(CryoalError, match=message.replace("[", r"\[")):
        parse_variant(name, tuple(SCHEMES))
    v = parse_variant("entropy-balanced:uncalibrated", tuple(SCHEMES))
    assert (v.scheme, v.pick, v.calibrated) == ("entropy", "balanced", False)
