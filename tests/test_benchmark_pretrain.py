"""`cryoal benchmark --pretrain` and `--initial-scheme` on a tiny simulated pool (CPU, 16^3, 1 epoch)."""

from __future__ import annotations

import csv
import json
import sys
from unittest.mock import patch

import numpy as np
import pytest
import torch
from benchmark_helpers import write_tiny_benchmark
from typer.testing import CliRunner

import cryoal.learn.pretrain
import cryoal.learn.train
from cryoal.benchmark import loop, splits
from cryoal.cli import app
from cryoal.io.pool import open_pool

BOX = 16
PER_CLASS = 12
CLASSES = 3

pytestmark = pytest.mark.usefixtures("one_train_thread")


@pytest.fixture(autouse=True)
def one_pretrain_thread(monkeypatch):
    """Pretraining uses one thread, as training does under `one_train_thread`."""
    monkeypatch.setattr(cryoal.learn.pretrain, "use_all_cpu_cores", lambda: (torch.set_num_threads(1), 1)[1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 36-particle pool of 3 classes (pool labels left empty) and its truth.csv."""
    d = tmp_path_factory.mktemp("bench_pretrain")
    _, labels, _ = write_tiny_benchmark(d, PER_CLASS, CLASSES, BOX)
    return d, labels


ARGS = ["--initial", "6", "--budget", "4", "--test-fraction", "0.25", "--epochs", "1", "--batch-size", "4",
        "--device", "cpu", "--arch", "rb3d", "--width", "4", "--mc-passes", "3"]
PRETRAIN = ["--pretrain", "--pretrain-epochs", "1"]


def _run(d, out, *extra, schemes="random", cycles=2, seeds=1):
    args = ["benchmark", str(d / "pool.h5"), "--truth", str(d / "truth.csv"), "-o", str(out),
            "--schemes", schemes, "--cycles", str(cycles), "--seeds", str(seeds), *ARGS, *extra]
    with patch.object(sys, "argv", ["cryoal", *args]):
        return CliRunner().invoke(app, args)


@pytest.fixture
def pretrained(monkeypatch):
    """Record the particle ids of every pool `pretrain_pool` was given, and the trunk weights every
    training run (`fit`) starts from."""
    seen = {"pretrain": [], "fit": []}
    real_pretrain, real_fit = cryoal.learn.pretrain.pretrain_pool, cryoal.learn.train.fit

    def pretrain_pool(pool_path, settings, *a, **kw):
        with open_pool(pool_path) as pool:
            seen["pretrain"].append((settings.seed, set(pool.particle_ids)))
        return real_pretrain(pool_path, settings, *a, **kw)

    def fit(*a, init_model=None, **kw):
        trunk = None if init_model is None else {
            k: v.clone() for k, v in init_model.trunk.state_dict().items()}
        seen["fit"].append(trunk)
        return real_fit(*a, init_model=init_model, **kw)

    monkeypatch.setattr(cryoal.learn.pretrain, "pretrain_pool", pretrain_pool)
    monkeypatch.setattr(cryoal.learn.train, "fit", fit)
    return seen


def _truth(d) -> np.ndarray:
    """The class index of every pool row, as the benchmark reads it."""
    from cryoal.benchmark.truth import load_truth

    with open_pool(d / "pool.h5") as pool:
        return load_truth(pool, d / "truth.csv").truth


def _test_ids(d, seed):
    test = splits.stratified_holdout(_truth(d), 0.25, splits.rng_for(seed, splits.TEST_SPLIT))
    with open_pool(d / "pool.h5") as pool:
        return set(pool.particle_ids[test]), set(pool.particle_ids)


def test_pretraining_never_sees_the_test_split_and_every_model_starts_from_it(tiny, tmp_path, pretrained):
    d, _ = tiny
    out = tmp_path / "out"
    res = _run(d, out, *PRETRAIN, schemes="random,typiclust,expected:cluster-power", cycles=3, seeds=2)
    assert res.exit_code == 0, res.output
    assert len(pretrained["pretrain"]) == 2  # one pretraining per seed
    for seed, (_, ids) in enumerate(pretrained["pretrain"]):
        test, every = _test_ids(d, seed)
        assert ids == every - test  # exactly the non-test particles
    # every model (cycle 0 once per seed, then 2 cycles x 3 schemes) starts from its seed's encoder
    assert len(pretrained["fit"]) == 2 * (1 + 2 * 3)
    for seed in range(2):
        enc = torch.load(out / "state" / f"encoder-seed{seed}.pt", weights_only=True)["state_dict"]
        for trunk in pretrained["fit"][seed * 7:(seed + 1) * 7]:
            assert trunk is not None and trunk.keys() == enc.keys()
            assert all(torch.equal(trunk[k], enc[k]) for k in enc)
    rows = list(csv.DictReader(open(out / "curves.csv", newline="")))
    assert {r["scheme"] for r in rows} == {"random", "typiclust", "expected:cluster-power"}
    picks = list(csv.DictReader(open(out / "selections.csv", newline="")))
    assert {p["scheme"] for p in picks} == {"random", "typiclust", "expected:cluster-power"}
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["pretrain"] is True and run["options"]["pretrain_epochs"] == 1
    assert set(run["pretraining"]) == {"0", "1"}
    for cost in run["pretraining"].values():
        assert cost["epochs"] == 1 and cost["method"] == "simclr" and cost["seconds"] > 0
        assert np.isfinite(cost["final_loss"]) and cost["n_particles"] == 27 and not cost["reused"]
    assert run["seconds"]["pretrain"] == pytest.approx(sum(c["seconds"] for c in run["pretraining"].values()))


def test_resume_does_not_pretrain_again(tiny, tmp_path, pretrained):
    d, _ = tiny
    out = tmp_path / "out"
    assert _run(d, out, *PRETRAIN, cycles=2).exit_code == 0
    first = json.loads((out / "run.json").read_text())["pretraining"]
    assert len(pretrained["pretrain"]) == 1
    res = _run(d, out, *PRETRAIN, "--resume", cycles=3)  # one more cycle: the seed is prepared again
    assert res.exit_code == 0, res.output
    assert len(pretrained["pretrain"]) == 1  # the cached encoder was reused
    run = json.loads((out / "run.json").read_text())
    assert run["pretraining"]["0"]["reused"] is True
    assert run["pretraining"]["0"]["seconds"] == first["0"]["seconds"]
    assert run["pretraining"]["0"]["encoder_digest"] == first["0"]["encoder_digest"]
    # resuming with other pretraining options is refused
    res = _run(d, out, "--resume", cycles=3)
    assert res.exit_code == 1 and "option pretrain" in res.output


def test_typiclust_initial_set_comes_from_the_embedding(tiny, tmp_path, monkeypatch):
    d, _ = tiny
    labels = _truth(d)
    out = tmp_path / "out"
    chosen = {}
    real = loop._cycle0

    def cycle0(data, config, steps, out_dir, seed, split, *a):
        chosen[seed] = (split.initial.copy(), split.selectable.copy(), data.scratch["encoder"])
        return real(data, config, steps, out_dir, seed, split, *a)

    monkeypatch.setattr(loop, "_cycle0", cycle0)
    res = _run(d, out, *PRETRAIN, "--initial-scheme", "typiclust", cycles=1)
    assert res.exit_code == 0, res.output
    initial, selectable, enc = chosen[0]
    assert initial.size == 6 and np.isin(initial, selectable).all()
    # what `typiclust_order` picks from the encoder's embedding of the non-test rows, from zero labels
    from cryoal.learn.embed import embed_batches
    from cryoal.learn.encoder import build_from_encoder
    from cryoal.scoring.typiclust import typiclust_order

    model = build_from_encoder(enc.record, enc.path, 2)
    with open_pool(d / "pool.h5") as pool:
        feats = np.concatenate(list(embed_batches(model, pool, torch.device("cpu"))))[selectable]
    order, _ = typiclust_order(feats, np.zeros(selectable.size, bool), 6,
                               seed=splits.torch_seed_for(0, splits.INITIAL_SET))
    assert set(selectable[order]) == set(initial)
    default = loop.make_split(labels, 0, loop.BenchmarkConfig(schemes=["random"], initial=6, cycles=1,
                                                               test_fraction=0.25))
    assert not np.array_equal(default.initial, initial)  # not the random draw
    run = json.loads((out / "run.json").read_text())
    with open_pool(d / "pool.h5") as pool:
        assert run["pretraining"]["0"]["initial_ids"] == [str(p) for p in pool.particle_ids[initial]]


def test_default_initial_set_is_unchanged(tiny):
    """Without --initial-scheme the initial set is still the balanced random draw of (seed, INITIAL_SET)."""
    _, labels = tiny
    config = loop.BenchmarkConfig(schemes=["random"], initial=6, cycles=1, test_fraction=0.25)
    for seed in range(3):
        split = loop.make_split(labels, seed, config)
        test = splits.stratified_holdout(labels, 0.25, splits.rng_for(seed, splits.TEST_SPLIT))
        rest = np.setdiff1d(np.arange(labels.size), test)
        expected = splits.balanced_sample(labels, rest, 6, splits.rng_for(seed, splits.INITIAL_SET))
        assert np.array_equal(split.initial, expected)
        assert np.bincount(labels[split.initial], minlength=CLASSES).tolist() == [2, 2, 2]


@pytest.mark.parametrize("extra, message", [
    (["--initial-scheme", "typiclust"], "needs --pretrain"),
    (["--pretrain-epochs", "2"], "needs --pretrain"),
    (["--initial-scheme", "kmeans"], "--initial-scheme"),
    (["--schemes", "typiclust"], "add --pretrain"),
    (["--schemes", "random,expected:cluster-power"], "add --pretrain"),
])
def test_bad_pretrain_options_are_one_line(tiny, tmp_path, extra, message):
    d, _ = tiny
    out = tmp_path / "out"
    res = _run(d, out, *extra)
    assert res.exit_code != 0 and message in res.output and "Traceback" not in res.output
    assert not (out / "run.json").exists()


def test_without_pretrain_nothing_is_pretrained(tiny, tmp_path, pretrained):
    d, _ = tiny
    out = tmp_path / "out"
    assert _run(d, out, cycles=1).exit_code == 0
    assert pretrained["pretrain"] == [] and pretrained["fit"] == [None]  # from scratch
    run = json.loads((out / "run.json").read_text())
    assert "pretraining" not in run and "pretrain" not in run["seconds"]
    assert not list((out / "state").glob("encoder-*"))
    assert "encoder_digest" not in torch.load(out / "state" / "cycle0-seed0.pt", weights_only=True)


def test_default_schemes_leave_typiclust_to_pretrained_runs(tiny, tmp_path):
    d, _ = tiny
    args = ["benchmark", str(d / "pool.h5"), "--truth", str(d / "truth.csv"), "--cycles", "1", *ARGS]
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())["options"]["schemes"]
    assert "typiclust" not in plain and {"expected", "random", "coreset"} <= set(plain)
    res = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "pre"), *PRETRAIN])
    assert res.exit_code == 0, res.output
    pre = json.loads((tmp_path / "pre" / "run.json").read_text())["options"]["schemes"]
    assert pre == [*plain, "typiclust"]


@pytest.fixture
def trained(monkeypatch):
    """Every `fit` the benchmark runs: its learning rate and the trunk and head weights before and
    after training."""
    seen = []
    real_fit = cryoal.learn.train.fit

    def snapshot(module):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    def fit(*a, init_model=None, **kw):
        before = None if init_model is None else (snapshot(init_model.trunk), snapshot(init_model.head))
        model, metrics = real_fit(*a, init_model=init_model, **kw)
        seen.append({"lr": kw["lr"], "before": before, "trunk": snapshot(model.trunk),
                     "head": snapshot(model.head)})
        return model, metrics

    monkeypatch.setattr(cryoal.learn.train, "fit", fit)
    return seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


WARM = ["--warm-start", "--epochs", "2"]  # two epochs: a fine-tuned trunk surely moves


def test_freeze_trunk_trains_the_head_alone_every_cycle(tiny, tmp_path, trained):
    d, _ = tiny
    out = tmp_path / "out"
    res = _run(d, out, *PRETRAIN, *WARM, "--freeze-trunk", cycles=3)
    assert res.exit_code == 0, res.output
    enc = torch.load(out / "state" / "encoder-seed0.pt", weights_only=True)["state_dict"]
    assert len(trained) == 3  # cycle 0, then two warm-start cycles from the previous model
    for fit in trained:
        # the trunk, BatchNorm statistics included, is the encoder's after training; the head learnt
        assert fit["before"] is not None and _same(fit["before"][0], enc) and _same(fit["trunk"], enc)
        assert not _same(fit["head"], fit["before"][1])
        assert fit["lr"] == cryoal.learn.train.PROBE_LR  # `train --freeze-trunk`'s default
    assert _same(trained[1]["before"][1], trained[0]["head"])  # warm start: from the previous head
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["freeze_trunk"] is True and run["options"]["lr"] == cryoal.learn.train.PROBE_LR
    assert torch.load(out / "state" / "cycle0-seed0.pt", weights_only=True)["freeze_trunk"] is True
    # resumed: cycle 2 starts from the cycle-1 model saved in the state directory, loaded afresh
    trained.clear()
    res = _run(d, out, *PRETRAIN, *WARM, "--freeze-trunk", "--resume", cycles=4)
    assert res.exit_code == 0, res.output
    assert len(trained) == 2
    for fit in trained:
        assert _same(fit["trunk"], enc) and not _same(fit["head"], fit["before"][1])


def test_frozen_run_reuses_no_fine_tuned_cycle0_model(tiny, tmp_path, trained):
    """A cycle-0 model left in the state directory by a fine-tuned run is trained again frozen."""
    d, _ = tiny
    out = tmp_path / "out"
    assert _run(d, out, *PRETRAIN, *WARM, "--lr", "0.01", cycles=1).exit_code == 0
    enc = torch.load(out / "state" / "encoder-seed0.pt", weights_only=True)["state_dict"]
    assert len(trained) == 1 and trained[0]["lr"] == 0.01
    assert not _same(trained[0]["trunk"], enc)  # fine-tuned: the trunk moved
    (out / "curves.csv").unlink()  # the state directory stays, as after a run cut short
    (out / "selections.csv").unlink(missing_ok=True)
    trained.clear()
    res = _run(d, out, *PRETRAIN, *WARM, "--freeze-trunk", "--lr", "0.01", cycles=2)
    assert res.exit_code == 0, res.output
    assert len(trained) == 2 and all(_same(f["trunk"], enc) and f["lr"] == 0.01 for f in trained)


def test_freeze_trunk_needs_pretrain(tiny, tmp_path):
    d, _ = tiny
    out = tmp_path / "out"
    res = _run(d, out, "--freeze-trunk")
    assert res.exit_code == 2 and "--freeze-trunk: needs --pretrain" in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_resuming_a_fine_tuned_run_frozen_is_refused(tiny, tmp_path):
    """Also from a run.json written before the option existed (no `freeze_trunk`: fine-tuned)."""
    d, _ = tiny
    out = tmp_path / "out"
    assert _run(d, out, *PRETRAIN, cycles=1).exit_code == 0
    run = json.loads((out / "run.json").read_text())
    del run["options"]["freeze_trunk"]
    (out / "run.json").write_text(json.dumps(run))
    res = _run(d, out, *PRETRAIN, "--freeze-trunk", "--lr", "0.001", "--resume", cycles=2)  # same lr
    assert res.exit_code == 1 and "option freeze_trunk was False" in res.output
    assert not (out / "state" / "random-seed0-cycle0.pt").exists()  # refused before any cycle ran


def test_resume_keeps_the_pretraining_cost_of_finished_seeds(tiny, tmp_path, pretrained):
    """A resumed run does not prepare a seed it finished before; that seed's pretraining cost still
    belongs in run.json: from the previous run.json, or, when the previous run was interrupted and
    wrote none, from the encoder file cached in OUT/state."""
    d, _ = tiny
    out = tmp_path / "out"
    assert _run(d, out, *PRETRAIN, cycles=2, seeds=1).exit_code == 0
    first = json.loads((out / "run.json").read_text())["pretraining"]["0"]
    res = _run(d, out, *PRETRAIN, "--resume", cycles=2, seeds=2)  # seed 0 finished, seed 1 new
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert sorted(run["pretraining"]) == ["0", "1"]
    assert run["pretraining"]["0"]["seconds"] == first["seconds"]
    assert run["pretraining"]["0"]["encoder_digest"] == first["encoder_digest"]
    assert run["seconds"]["pretrain"] == pytest.approx(first["seconds"] + run["pretraining"]["1"]["seconds"])
    # an interrupted run leaves run.json without costs: they come from the cached encoders
    run.pop("pretraining")
    (out / "run.json").write_text(json.dumps(run))
    res = _run(d, out, *PRETRAIN, "--resume", cycles=2, seeds=2)  # nothing left to run
    assert res.exit_code == 0, res.output
    again = json.loads((out / "run.json").read_text())["pretraining"]
    assert sorted(again) == ["0", "1"]
    assert again["0"]["seconds"] == first["seconds"]
    assert again["0"]["encoder_digest"] == first["encoder_digest"]
    assert len(pretrained["pretrain"]) == 2  # one pretraining per seed, none repeated
