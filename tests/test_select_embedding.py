"""`select` with the pool's embeddings: `--scheme typiclust` (no model, zero labels), `--pick
cluster|cluster-power`, the refusals (no, partial or stale embeddings), the default pick shown,
and torchrun identity."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error, cli
from test_distributed_select import N, make_model, make_pool, single, torchrun

from cryoal.io.embedding import write_embeddings
from cryoal.io.pool import PoolWriter, open_pool
from cryoal.scoring.typiclust import typiclust_order

pytestmark = pytest.mark.usefixtures("one_omp_thread")
DIGEST = "enc-0001"


def embed(pool: Path, digest: str = DIGEST) -> np.ndarray:
    """Three well-separated groups (the pool's truth classes) of 6-d embeddings, written into the pool."""
    rng = np.random.default_rng(1)
    truth = np.arange(N) % 3
    values = (np.eye(3, 6)[truth] * 8.0 + rng.normal(size=(N, 6))).astype(np.float32)
    write_embeddings(pool, [values[:40], values[40:]], 6, digest)
    return values


def unlabel_all(pool: Path) -> None:
    import h5py

    with h5py.File(pool, "r+") as h5:
        h5["label"][...] = -1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("emb")
    make_pool(d / "plain.h5")
    make_model(d / "model.pt")
    shutil.copy(d / "plain.h5", d / "pool.h5")
    values = embed(d / "pool.h5")
    shutil.copy(d / "pool.h5", d / "fresh.h5")
    unlabel_all(d / "fresh.h5")
    return d, values


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_typiclust_needs_no_model_and_no_labels(setup, tmp_path):
    d, values = setup
    out = tmp_path / "first.csv"
    res = cli("select", d / "fresh.h5", "--scheme", "typiclust", "-n", 6, "-o", out, "--seed", 2)
    assert res.exit_code == 0, res.output
    got = rows(out)
    assert [r["rank"] for r in got] == [str(i) for i in range(1, 7)]
    assert all(r["predicted_label"] == "" and r["confidence"] == "" and r["label"] == "" for r in got)
    order, typ = typiclust_order(values, np.zeros(N, bool), 6, seed=2)
    with open_pool(d / "fresh.h5") as pool:
        ids = pool.particle_ids
    assert [r["particle_id"] for r in got] == [str(ids[i]) for i in order]
    np.testing.assert_allclose([float(r["score"]) for r in got], typ, rtol=1e-12)
    assert len({int(i) % 3 for i in order[:3]}) == 3  # the three groups first
    again = tmp_path / "again.csv"
    assert cli("select", d / "fresh.h5", "--scheme", "typiclust", "-n", 6, "-o", again,
               "--seed", 2).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_typiclust_counts_the_labelled_as_covering(setup, tmp_path):
    d, values = setup
    out = tmp_path / "t.csv"
    res = cli("select", d / "pool.h5", "--scheme", "typiclust", "-n", 5, "-o", out, "--json")
    assert res.exit_code == 0, res.output
    with open_pool(d / "pool.h5") as pool:
        labels, ids = pool.labels, pool.particle_ids
    cand = np.flatnonzero(labels < 0)
    x = np.concatenate([values[cand], values[labels >= 0]])
    order, _ = typiclust_order(x, np.arange(len(x)) >= cand.size, 5, seed=0)
    assert [r["particle_id"] for r in rows(out)] == [str(ids[cand[i]]) for i in order]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["pick"] is None and summary["model"] is None


def test_default_pick_is_shown_and_top_is_unchanged(setup, tmp_path):
    d, _ = setup
    common = [d / "plain.h5", "-m", d / "model.pt", "--scheme", "expected", "-n", 5, "--device", "cpu"]
    res = cli("select", *common, "-o", tmp_path / "a.csv")
    assert res.exit_code == 0, res.output
    assert "pick power-balanced (default)" in res.stdout
    res = cli("select", *common, "-o", tmp_path / "b.csv", "--pick", "top")
    assert res.exit_code == 0 and "pick top;" in res.stdout and "(default)" not in res.stdout
    scores = [float(r["score"]) for r in rows(tmp_path / "b.csv")]
    assert scores == sorted(scores, reverse=True)
    res = cli("select", *common, "--scheme", "random", "-o", tmp_path / "c.csv")
    assert res.exit_code == 0 and "pick top (default)" in res.stdout


def test_the_default_pick_is_the_same_on_every_pool(setup, tmp_path):
    """power-balanced with or without a usable embedding (the pretraining study found no embedding
    pick ahead of it), so `select --scheme expected` works as typed on every pool and an embedding,
    even a stale one, changes nothing unless an embedding pick is asked for."""
    from cryoal.learn.checkpoint import load_model, save_checkpoint

    d, _ = setup
    model, meta = load_model(d / "model.pt")
    save_checkpoint(tmp_path / "other.pt", model, {**meta, "encoder_digest": "enc-other"})
    cases = ((d / "pool.h5", d / "model.pt"), (d / "plain.h5", d / "model.pt"),
             (d / "pool.h5", tmp_path / "other.pt"))
    for k, (pool, model_path) in enumerate(cases):
        out = tmp_path / f"{k}.csv"
        res = cli("select", pool, "-m", model_path, "--scheme", "expected", "-n", 4, "-o", out,
                  "--device", "cpu", "--seed", 1)
        assert res.exit_code == 0, res.output
        assert "pick power-balanced (default)" in res.stdout, res.stdout
    explicit = tmp_path / "explicit.csv"
    assert cli("select", d / "pool.h5", "-m", d / "model.pt", "--scheme", "expected", "-n", 4, "-o", explicit,
               "--device", "cpu", "--seed", 1, "--pick", "power-balanced").exit_code == 0
    assert explicit.read_bytes() == (tmp_path / "0.csv").read_bytes()
    # the stale embedding (other.pt's digest) does not matter to the default, only to an embedding pick
    res = cli("select", d / "pool.h5", "-m", tmp_path / "other.pt", "--scheme", "expected", "-n", 4,
              "-o", tmp_path / "stale.csv", "--device", "cpu", "--pick", "cluster-power")
    assert res.exit_code == 1 and "made by encoder" in res.output and "cryoal embed" in res.output, res.output


def test_cluster_picks_are_pick_order_on_the_pool_embeddings(setup, tmp_path):
    """The CLI's batch is `pick_order` on the scores (from `--pick top -n 0`), the candidates'
    embeddings and the labelled particles' embeddings."""
    from cryoal.scoring.picks import pick_order

    d, values = setup
    with open_pool(d / "pool.h5") as pool:
        ids, labels = [str(i) for i in pool.particle_ids], pool.labels
    common = [d / "pool.h5", "-m", d / "model.pt", "--scheme", "expected", "--device", "cpu", "--seed", 4]
    assert cli("select", *common, "-n", 0, "--pick", "top", "-o", tmp_path / "all.csv").exit_code == 0
    score = {r["particle_id"]: float(r["score"]) for r in rows(tmp_path / "all.csv")}
    cand = np.flatnonzero(labels < 0)
    scores = np.array([score[ids[i]] for i in cand])
    for pick in ("cluster", "cluster-power"):
        out = tmp_path / f"{pick}.csv"
        res = cli("select", *common, "-n", 5, "--pick", pick, "-o", out)
        assert res.exit_code == 0, res.output
        want = pick_order(scores, np.array(ids)[cand], np.zeros(cand.size, int), 5, pick=pick, seed=4,
                          embedding=(values[cand], values[labels >= 0]))
        got = rows(out)
        assert [r["particle_id"] for r in got] == [ids[cand[i]] for i in want]
        assert all(r["predicted_label"] for r in got)


@pytest.mark.parametrize("args,culprits", [
    (("--scheme", "typiclust"), ("cryoal pretrain", "plain.h5")),
    (("-m", "MODEL", "--scheme", "expected", "--pick", "cluster"), ("cryoal pretrain", "plain.h5")),
])
def test_embedding_picks_refuse_a_pool_without_embeddings(setup, tmp_path, args, culprits):
    d, _ = setup
    out = tmp_path / "x.csv"
    args = tuple(str(d / "model.pt") if a == "MODEL" else a for a in args)
    assert_one_error(cli("select", d / "plain.h5", *args, "-n", 3, "-o", out, "--device", "cpu"), *culprits)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_score_scheme_without_a_model_names_m(setup, tmp_path):
    d, _ = setup
    out = tmp_path / "x.csv"
    assert_one_error(cli("select", d / "pool.h5", "--scheme", "expected", "-n", 3, "-o", out), "-m MODEL",
                     code=2)  # a usage error
    assert_one_error(cli("select", d / "fresh.h5", "--scheme", "typiclust", "-n", 3, "-o", out,
                         "--format", "star"), "--format star", "-m", code=2)
    assert not list(tmp_path.iterdir())


def test_appended_particles_and_another_encoder_are_refused_with_the_fix(setup, tmp_path):
    from cryoal.learn.checkpoint import load_model, save_checkpoint

    d, _ = setup
    pool = tmp_path / "pool.h5"
    shutil.copy(d / "pool.h5", pool)
    with PoolWriter(pool, append=True) as w:  # a particle added after pretraining
        w.add(np.zeros((1, 8, 8, 8), np.float32), ["late"], ["/data/late.mrc"])
    out = tmp_path / "x.csv"
    assert_one_error(cli("select", pool, "--scheme", "typiclust", "-n", 3, "-o", out), "cryoal embed")
    model, meta = load_model(d / "model.pt")
    save_checkpoint(tmp_path / "tuned.pt", model, {**meta, "encoder_digest": "enc-other"})
    for args in (("--scheme", "typiclust"), ("--scheme", "margin", "--pick", "cluster-power")):
        assert_one_error(cli("select", d / "pool.h5", "-m", tmp_path / "tuned.pt", *args, "-n", 3, "-o", out,
                             "--device", "cpu"), "enc-other", "cryoal embed")
    save_checkpoint(tmp_path / "same.pt", model, {**meta, "encoder_digest": DIGEST})  # the right encoder
    assert cli("select", d / "pool.h5", "-m", tmp_path / "same.pt", "--scheme", "margin", "--pick", "cluster",
               "-n", 3, "-o", out, "--device", "cpu").exit_code == 0
    assert out.exists()


TORCHRUN_SCRIPT = r"""
import sys
from cryoal.learn.distributed import init_distributed, shutdown
from cryoal.select import select_pool
pool, fresh, model, out = sys.argv[1:5]
ctx = init_distributed("cpu")
select_pool(fresh, None, f"{out}/typiclust.csv", scheme="typiclust", n=0, seed=3, dist=ctx, device="cpu")
select_pool(pool, None, f"{out}/typiclust-lab.csv", scheme="typiclust", n=9, seed=3, dist=ctx, device="cpu")
for pick in ("cluster", "cluster-power"):
    select_pool(pool, model, f"{out}/{pick}.csv", scheme="expected", n=20, batch_size=7, device="cpu",
                seed=3, pick=pick, beta=2.0, dist=ctx)
shutdown(ctx)
"""


def test_embedding_picks_on_two_ranks_equal_one_process(setup, tmp_path):
    d, _ = setup
    script = tmp_path / "emb.py"
    script.write_text(TORCHRUN_SCRIPT)
    args = [str(d / "pool.h5"), str(d / "fresh.h5"), str(d / "model.pt")]
    for name, runner in (("one", single), ("two", torchrun)):
        (tmp_path / name).mkdir()
        res = runner([str(script), *args, str(tmp_path / name)])
        assert res.returncode == 0, res.stderr[-3000:]
    names = ["typiclust.csv", "typiclust-lab.csv", "cluster.csv", "cluster-power.csv"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(names)
    for name in names:
        one = (tmp_path / "one" / name).read_bytes()
        assert one == (tmp_path / "two" / name).read_bytes(), name
    assert len((tmp_path / "one" / "typiclust.csv").read_text().splitlines()) == N + 1
