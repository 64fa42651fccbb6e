"""`cryoal select`: the ranked-CSV contract, agreement with `cryoal.score`, subsets, atomic output
and bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cryoal
import cryoal.select as select_mod
from cryoal.cli import app
from cryoal.errors import CryoalError
from cryoal.io.pool import PoolWriter, open_pool
from cryoal.learn.checkpoint import save_checkpoint
from cryoal.models import build_model
from cryoal.scoring import diversity

NAMES = ["a", "b", "c"]
BOX = 8
N = 26
COLUMNS = ["rank", "particle_id", "score", "predicted_label", "confidence", "source", "tomo", "x", "y", "z",
           "label"]
# Pool rows hold ids in a shuffled order, so that pool order and id order differ.
IDS = [f"p{i:02d}" for i in np.random.default_rng(7).permutation(N)]
LABELLED = {0: 0, 3: 1, 8: 2, 11: 0, 20: 1}  # pool row -> class
DUPLICATE = (5, 17)  # two unlabelled rows with the same volume: tied scores

pytestmark = pytest.mark.usefixtures("one_omp_thread")


def make_pool(path: Path, *, labels: dict | None = None, box: int = BOX, mode: str = "subtomogram") -> None:
    rng = np.random.default_rng(0)
    shape = (box,) * 3 if mode == "subtomogram" else (box, box)
    vols = rng.normal(size=(N, *shape)) * rng.uniform(0.2, 3, (N,) + (1,) * len(shape))
    vols[DUPLICATE[1]] = vols[DUPLICATE[0]]
    lab = np.full(N, -1)
    for row, c in (LABELLED if labels is None else labels).items():
        lab[row] = c
    coords = rng.uniform(0, 300, (N, 3)).astype(np.float32)
    coords[2, 1] = np.nan
    with PoolWriter(path, mode=mode, shape=shape, class_names=NAMES, voxel_size=8.0) as w:
        w.add(vols.astype(np.float32), IDS, [f"/d/{pid}.mrc" for pid in IDS], labels=lab,
              tomos=[f"t{i % 2}" for i in range(N)], coords=coords)


def make_model(path: Path, box: int = BOX, mode: str = "subtomogram") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet3d", (box,) * 3, 3, width=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        model.head.weight.mul_(5.0)
    save_checkpoint(path, model, {"mode": mode, "class_names": NAMES, "input_shape": [box] * 3})
    return model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("select")
    make_pool(d / "pool.h5")
    model = make_model(d / "model.pt")
    return d, model


def run(*args):
    return CliRunner().invoke(app, ["select", *map(str, args)])


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def select(env, tmp_path, *extra, scheme="expected", n=5, name="out.csv"):
    d, _ = env
    out = tmp_path / name
    r = run(d / "pool.h5", "-m", d / "model.pt", "--scheme", scheme, "-n", n, "-o", out, "--device", "cpu",
            "--batch-size", 4, *extra)
    assert r.exit_code == 0, r.stderr
    return read_csv(out)


def _pool_arrays(env):
    d, _ = env
    with open_pool(d / "pool.h5") as p:
        return p.read(np.arange(N)), p.coords, p.labels


def test_csv_contract(env, tmp_path):
    header, rows = select(env, tmp_path, "--pick", "top", n=6)
    assert header == COLUMNS
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    vols, coords, labels = _pool_arrays(env)
    model = env[1]
    for r in rows:
        i = IDS.index(r["particle_id"])
        assert labels[i] == -1 and r["label"] == ""
        assert r["source"] == f"/d/{r['particle_id']}.mrc" and r["tomo"] == f"t{i % 2}"
        for axis, k in (("x", 0), ("y", 1), ("z", 2)):
            want = "" if np.isnan(coords[i, k]) else float(np.float32(coords[i, k]))
            assert (r[axis] == "") if want == "" else float(r[axis]) == pytest.approx(want, rel=1e-6)
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(vols[i : i + 1])[:, None]).double(), 1)[0].numpy()
        assert r["predicted_label"] == NAMES[int(p.argmax())]
        assert float(r["confidence"]) == pytest.approx(p.max(), rel=1e-5)


@pytest.mark.parametrize("scheme", ["expected", "entropy", "margin", "bald", "random"])
def test_select_scores_equal_cryoal_score(env, tmp_path, scheme):
    """-n 0: every unlabelled particle once, ranked, with the scores `cryoal.score` gives."""
    header, rows = select(env, tmp_path, "--mc-passes", 3, scheme=scheme, n=0)
    vols, _, labels = _pool_arrays(env)
    unl = np.flatnonzero(labels < 0)
    assert sorted(r["particle_id"] for r in rows) == sorted(IDS[i] for i in unl)
    got = {r["particle_id"]: float(r["score"]) for r in rows}
    if scheme in ("bald",):  # dropout masks depend on the batch: compare batch by batch (size 4)
        want = np.concatenate([cryoal.score(env[1], vols[unl[k : k + 4]], scheme, mc_passes=3)
                               for k in range(0, unl.size, 4)])
    else:
        want = cryoal.score(env[1], vols[unl], scheme)
    for i, w in zip(unl, want, strict=True):
        assert got[IDS[i]] == pytest.approx(w, rel=1e-5, abs=1e-12)


def test_tensor_sum_norm(env, tmp_path):
    """--norm tensor-sum writes the per-tensor-sum scores, which differ from the global L2 norm."""
    _, rows = select(env, tmp_path, "--norm", "tensor-sum", scheme="expected", n=0)
    vols, _, labels = _pool_arrays(env)
    unl = np.flatnonzero(labels < 0)
    got = {r["particle_id"]: float(r["score"]) for r in rows}
    want = cryoal.score(env[1], vols[unl], "expected", norm="tensor-sum")
    l2 = cryoal.score(env[1], vols[unl], "expected")
    assert np.all(want > l2)  # a sum of per-tensor norms exceeds their root-sum-square
    for i, w in zip(unl, want, strict=True):
        assert got[IDS[i]] == pytest.approx(w, rel=1e-5)


def test_ties_break_by_particle_id(env, tmp_path):
    _, rows = select(env, tmp_path, "--pick", "top", scheme="max-entropy", n=0)
    ids = [r["particle_id"] for r in rows]
    a, b = sorted(IDS[i] for i in DUPLICATE)
    assert rows[ids.index(a)]["score"] == rows[ids.index(b)]["score"]
    assert ids.index(b) == ids.index(a) + 1
    scores, ids_ = np.array([0.5, 0.9, 0.5, np.nan, 0.9]), np.array(["e", "d", "c", "a", "b"])
    order = select_mod.rank_by_score(scores, ids_)
    assert order.tolist() == [4, 1, 2, 0, 3]


def test_pool_subset_is_reproducible(env, tmp_path):
    sets = []
    for seed, name in ((1, "a.csv"), (1, "b.csv"), (2, "c.csv")):
        _, rows = select(env, tmp_path, "--pool-subset", 8, "--seed", seed, n=0, name=name)
        sets.append({r["particle_id"] for r in rows})
    assert len(sets[0]) == 8 and sets[0] == sets[1] and sets[0] != sets[2]
    labelled_ids = {IDS[i] for i in LABELLED}
    assert not (sets[0] | sets[2]) & labelled_ids
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_coreset_starts_from_the_labelled_set(env, tmp_path):
    _, rows = select(env, tmp_path, scheme="coreset", n=5)
    vols, _, labels = _pool_arrays(env)
    model = env[1]
    with torch.no_grad():
        feats = model.features(torch.from_numpy(vols)[:, None]).double().numpy()
    unl = [i for i in np.argsort(IDS) if labels[i] < 0]  # candidates in id order
    order, gains = diversity.kcenter_greedy(feats[unl], 5, feats[labels >= 0])
    assert [r["particle_id"] for r in rows] == [IDS[unl[k]] for k in order]
    np.testing.assert_allclose([float(r["score"]) for r in rows], gains, rtol=1e-5)


def test_badge_is_reproducible_and_distinct(env, tmp_path):
    _, a = select(env, tmp_path, "--seed", 4, scheme="badge", n=7, name="a.csv")
    _, b = select(env, tmp_path, "--seed", 4, scheme="badge", n=7, name="b.csv")
    assert a == b and len({r["particle_id"] for r in a}) == 7


def test_json_summary(env, tmp_path):
    d, _ = env
    r = run(d / "pool.h5", "-m", d / "model.pt", "-n", 3, "-o", tmp_path / "o.csv", "--device", "cpu",
            "--json", "--scheme", "least-confidence")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["n_written"] == 3 and summary["n_scored"] == N - len(LABELLED)
    assert summary["scheme"] == "least-confidence"


def test_failure_leaves_no_partial_file(env, tmp_path, monkeypatch):
    d, _ = env
    out = tmp_path / "keep.csv"
    out.write_text("old content\n")
    r = run(d / "pool.h5", "-m", d / "model.pt", "-n", 999, "-o", out, "--device", "cpu")
    assert r.exit_code == 1 and out.read_text() == "old content\n"

    calls = {"n": 0}
    real = select_mod.ranked_columns

    def boom(*a, **k):  # fail after scoring, while the CSV is being prepared
        calls["n"] += 1
        raise CryoalError("disk full (simulated)")

    monkeypatch.setattr(select_mod, "ranked_columns", boom)
    fresh = tmp_path / "fresh.csv"
    with pytest.raises(CryoalError):
        select_mod.select_pool(d / "pool.h5", d / "model.pt", fresh, scheme="entropy", n=3, device="cpu")
    monkeypatch.setattr(select_mod, "ranked_columns", real)
    assert calls["n"] == 1 and not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


def _error_line(r, code: int = 1) -> str:
    """The one `error:` line of a failed run that exited `code` (2: a usage error)."""
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    return lines[0]


def test_bad_inputs(env, tmp_path):
    d, _ = env
    pool, model = d / "pool.h5", d / "model.pt"
    out = tmp_path / "o.csv"
    common = ["-o", out, "--device", "cpu"]

    line = _error_line(run(pool, "-m", model, "-n", 2, "--scheme", "nope", *common), code=2)
    assert "--scheme must be one of expected, entropy" in line and "(got 'nope')" in line
    assert "-n 22 is larger than" in _error_line(run(pool, "-m", model, "-n", 22, *common))
    assert "--pool-subset" in _error_line(run(pool, "-m", model, "-n", 9, "--pool-subset", 8, *common))

    make_model(tmp_path / "big.pt", box=12)
    assert "shape" in _error_line(run(pool, "-m", tmp_path / "big.pt", "-n", 2, *common))

    make_pool(tmp_path / "img.h5", mode="image")
    assert "mode" in _error_line(run(tmp_path / "img.h5", "-m", model, "-n", 2, *common))

    make_pool(tmp_path / "all.h5", labels={i: i % 3 for i in range(N)})
    assert "nothing to select" in _error_line(run(tmp_path / "all.h5", "-m", model, "-n", 2, *common))

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert "corrupt.pt" in _error_line(run(pool, "-m", bad, "-n", 2, *common))

    assert "--norm" in _error_line(run(pool, "-m", model, "-n", 2, "--norm", "l1", *common), code=2)
    assert not out.exists()


def test_bald_needs_dropout(env):
    d, _ = env
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(),
                                torch.nn.Linear(2, 3))
    with open_pool(d / "pool.h5") as pool, pytest.raises(CryoalError, match="dropout"):
        select_mod.select_from_pool(pool, model, scheme="bald", n=2)


def _round_robin_reference(order: list[int], predicted: list[int]) -> list[int]:
    """Obvious class-balanced order: repeatedly walk the classes, in the order their best remaining
    item appears in `order`, taking each one's best remaining item."""
    queues: dict[int, list[int]] = {}
    for i in order:
        queues.setdefault(predicted[i], []).append(i)
    out: list[int] = []
    while any(queues.values()):
        heads = sorted((q[0] for q in queues.values() if q), key=order.index)
        for h in heads:
            queues[predicted[h]].pop(0)
            out.append(h)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_interleave_by_class_matches_round_robin(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    order = rng.permutation(n)
    predicted = rng.integers(0, int(rng.integers(1, 5)), n)
    got = select_mod.interleave_by_class(order, predicted)
    assert got.tolist() == _round_robin_reference(order.tolist(), predicted.tolist())


def test_balance_picks_each_predicted_class_in_turn(env, tmp_path):
    _, plain = select(env, tmp_path, "--pick", "top", scheme="expected", n=0, name="plain.csv")
    _, bal = select(env, tmp_path, "--balance", scheme="expected", n=0, name="bal.csv")
    # the same particles and scores, reordered: round robin over the predicted classes, each
    # class in score order, and the first pick is still the global best
    assert {r["particle_id"]: r["score"] for r in plain} == {r["particle_id"]: r["score"] for r in bal}
    assert bal[0]["particle_id"] == plain[0]["particle_id"]
    predicted = [r["predicted_label"] for r in plain]
    assert len(set(predicted)) > 1  # the fixture model predicts several classes
    want = [plain[i]["particle_id"] for i in _round_robin_reference(list(range(len(plain))), predicted)]
    assert [r["particle_id"] for r in bal] == want
    # -n k is the head of the balanced order
    _, top = select(env, tmp_path, "--balance", scheme="expected", n=4, name="top.csv")
    assert [r["particle_id"] for r in top] == want[:4]
    assert [r["rank"] for r in top] == ["1", "2", "3", "4"]


@pytest.mark.parametrize("scheme", ["coreset", "badge"])
def test_balance_refuses_batch_schemes(env, tmp_path, scheme):
    d, _ = env
    r = run(d / "pool.h5", "-m", d / "model.pt", "--scheme", scheme, "-n", 3, "-o", tmp_path / "o.csv",
            "--device", "cpu", "--balance")
    assert "--balance applies to score-based schemes" in _error_line(r, code=2)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("extra,message", [
    (("--scheme", "badge", "--pick", "power"), "--pick power applies to score-based schemes"),
    (("--pick", "best"), "--pick must be one of top, power, softrank"),
    (("--pick", "power", "--beta", "0"), "--beta 0.0: must be a finite number above 0"),
    (("--pick", "power", "--beta", "-2"), "--beta -2.0"),
    (("--pick", "power", "--balance"), "cannot be combined"),
])
def test_bad_picks_are_one_line(env, tmp_path, extra, message):
    d, _ = env
    r = run(d / "pool.h5", "-m", d / "model.pt", "-n", 3, "-o", tmp_path / "o.csv", "--device", "cpu", *extra)
    assert message in _error_line(r, code=2)  # options that do not go together: a usage error
    assert not (tmp_path / "o.csv").exists()


def test_power_on_a_scheme_with_signed_scores_is_refused(env, tmp_path, monkeypatch):
    from cryoal.scoring import registry

    signed = registry.ScoreScheme("signed", "scores of either sign", lambda m, x, c: (None, None),
                                  nonnegative=False)
    monkeypatch.setitem(registry.SCHEMES, "signed", signed)
    d, _ = env
    r = run(d / "pool.h5", "-m", d / "model.pt", "--scheme", "signed", "-n", 3, "-o", tmp_path / "o.csv",
            "--device", "cpu", "--pick", "power")
    assert "signed scores can be negative; use --pick softrank" in _error_line(r, code=2)


@pytest.mark.parametrize("pick", ["power", "softrank", "power-balanced", "classnorm"])
def test_sampled_pick_writes_raw_scores_in_pick_order(env, tmp_path, pick):
    """score = the scheme's raw score of that particle, rank = draw order, reproducible by --seed."""
    _, all_rows = select(env, tmp_path, n=0, name="all.csv")
    raw = {r["particle_id"]: r["score"] for r in all_rows}
    _, a = select(env, tmp_path, "--pick", pick, "--seed", "4", n=8, name="a.csv")
    _, b = select(env, tmp_path, "--pick", pick, "--seed", "4", n=8, name="b.csv")
    _, c = select(env, tmp_path, "--pick", pick, "--seed", "5", n=8, name="c.csv")
    assert a == b and [r["particle_id"] for r in a] != [r["particle_id"] for r in c]
    assert [r["rank"] for r in a] == [str(k) for k in range(1, 9)]
    assert all(r["score"] == raw[r["particle_id"]] for r in a)
    assert len({r["particle_id"] for r in a}) == 8
