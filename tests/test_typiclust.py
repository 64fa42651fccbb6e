"""The picks in the embedding (`cryoal.scoring.typiclust`, `--pick cluster|cluster-power`) against
plain-loop references, scikit-activeml's TypiClust, and a statistical check of coverage."""

from __future__ import annotations

import numpy as np
import pytest

from cryoal.scoring import typiclust as tc
from cryoal.scoring.picks import gumbel_noise, pick_order, power_keys, rank_by_score

pytestmark = pytest.mark.usefixtures("one_omp_thread")


def blobs(sizes, dim=8, spread=0.3, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs of the given sizes around well-separated centres: (points, blob of each)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(len(sizes), dim))
    blob = np.repeat(np.arange(len(sizes)), sizes)
    return centres[blob] + spread * rng.normal(size=(blob.size, dim)), blob


def slow_typicality(x: np.ndarray, k: int = 20) -> np.ndarray:
    """1 / mean distance to the k nearest other points, with explicit loops."""
    out = np.empty(len(x))
    if len(x) == 1:
        return np.ones(1)
    k = min(k, len(x) - 1)
    for i in range(len(x)):
        d = sorted(float(np.sqrt(((x[i] - x[j]) ** 2).sum())) for j in range(len(x)) if j != i)
        out[i] = 1.0 / (sum(d[:k]) / k)
    return out


def slow_quota_order(clusters, labelled, key, n):
    """The greedy visit, one pick at a time: the cluster with the fewest labelled-or-picked
    members (ties: larger, then lower number) gives its best remaining candidate by `key`."""
    clusters = list(clusters)
    count = {c: sum(1 for i, cc in enumerate(clusters) if cc == c and labelled[i]) for c in set(clusters)}
    size = {c: clusters.count(c) for c in set(clusters)}
    left = {c: sorted((i for i, cc in enumerate(clusters) if cc == c and not labelled[i]),
                      key=lambda i: (-key[i], i)) for c in set(clusters)}
    out = []
    while len(out) < n:
        c = min((c for c in left if left[c]), key=lambda c: (count[c], -size[c], c))
        out.append(left[c].pop(0))
        count[c] += 1
    return out


@pytest.mark.parametrize("seed", range(3))
def test_typicality_matches_the_loop(seed):
    x = np.random.default_rng(seed).normal(size=(40, 5))
    np.testing.assert_allclose(tc.typicality(x), slow_typicality(x), rtol=1e-6)
    np.testing.assert_allclose(tc.typicality(x, k=3), slow_typicality(x, k=3), rtol=1e-6)
    assert tc.typicality(x[:1]).tolist() == [1.0]


@pytest.mark.parametrize("seed", range(5))
def test_quota_order_matches_the_greedy_loop(seed):
    rng = np.random.default_rng(seed)
    m, n_clusters = 60, 7
    clusters = rng.integers(0, n_clusters, m)
    labelled = rng.random(m) < 0.2
    key = rng.integers(0, 5, m).astype(float)  # ties: the lower row first
    keys = {c: key[(clusters == c) & ~labelled] for c in range(n_clusters)}
    n = int((~labelled).sum())
    fast = tc.quota_order(clusters, labelled, keys, n, n_clusters)
    assert fast.tolist() == slow_quota_order(clusters, labelled, key, n)
    quotas = tc.cluster_quotas(clusters, labelled, 9, n_clusters)
    assert np.array_equal(quotas, np.bincount(clusters[fast[:9]], minlength=n_clusters))


def test_typiclust_order_matches_a_loop_over_its_clusters():
    x, _ = blobs([30, 20, 12, 8, 5])
    labelled = np.zeros(len(x), bool)
    labelled[[0, 31]] = True  # blobs 0 and 1 are covered
    order, typ = tc.typiclust_order(x, labelled, 6, seed=3)
    n_clusters = tc.n_clusters_for(2, 6, len(x))
    clusters = tc.kmeans_labels(x, n_clusters, tc.kmeans_seed(3))
    ref_typ = np.zeros(len(x))
    for c in range(n_clusters):
        members = np.flatnonzero(clusters == c)
        ref_typ[members] = slow_typicality(x[members])
    assert order.tolist() == slow_quota_order(clusters, labelled, ref_typ, 6)
    np.testing.assert_allclose(typ, ref_typ[order], rtol=1e-6)
    assert not labelled[order].any() and len(set(order.tolist())) == 6


def test_typiclust_is_deterministic_under_its_seed():
    x, _ = blobs([50, 30, 20, 10, 10, 5], seed=1)
    lab = np.zeros(len(x), bool)
    a = tc.typiclust_order(x, lab, 8, seed=11)
    b = tc.typiclust_order(x, lab, 8, seed=11)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    every = tc.typiclust_order(x, lab, 0, seed=11)[0]  # n = 0: every candidate, once
    assert sorted(every.tolist()) == list(range(len(x)))


def test_typiclust_agrees_with_scikit_activeml():
    """Same clusters (scikit-activeml's default KMeans with the same random_state), same picks."""
    skal = pytest.importorskip("skactiveml.pool")
    from skactiveml.utils import MISSING_LABEL

    x, blob = blobs([40, 30, 25, 20, 15, 10, 8], seed=2)
    y = np.full(len(x), MISSING_LABEL)
    y[[1, 45]] = blob[[1, 45]]
    lab = ~np.isnan(y)
    for seed in (0, 1, 2):
        n = 5  # at most the uncovered clusters: where both rules agree exactly
        rs = tc.kmeans_seed(seed)
        ref = skal.TypiClust(random_state=rs, k=20).query(x, y, batch_size=n)
        ours, _ = tc.typiclust_order(x, lab, n, seed=seed)
        assert sorted(ours.tolist()) == sorted(np.asarray(ref).tolist())


def _blobs_covered(picks, blob) -> int:
    return len(set(blob[picks].tolist()))


def test_typiclust_covers_the_blobs_random_does_not():
    """10 blobs of unequal sizes (5% to 21% of the pool): TypiClust's first 10 picks (10
    clusters) land in >= 9 blobs for at least 18 of 20 seeds (all 20 reach 10 today). Ten
    uniform draws cover about 6.0 blobs on average (sum_b 1 - (1 - p_b)^10), and >= 9 with
    probability ~0.55% (20,000 simulated draws): 3 or more of 20 has probability ~2e-4.
    """
    sizes = [110, 90, 70, 60, 50, 40, 30, 25, 25, 25]
    x, blob = blobs(sizes, dim=16, spread=1.0, seed=5)
    lab = np.zeros(len(x), bool)
    typi = [_blobs_covered(tc.typiclust_order(x, lab, 10, seed=s)[0], blob) >= 9 for s in range(20)]
    rng = np.random.default_rng(0)
    rand = [_blobs_covered(rng.choice(len(x), 10, replace=False), blob) >= 9 for _ in range(20)]
    assert sum(typi) >= 18, typi
    assert sum(rand) <= 2, rand


def test_cluster_pick_takes_the_best_score_of_each_uncovered_cluster():
    x, blob = blobs([30, 25, 20, 15, 10], seed=3)
    lab_rows = np.array([0])  # blob 0 covered by one labelled particle
    cand = np.setdiff1d(np.arange(len(x)), lab_rows)
    scores = np.random.default_rng(0).random(cand.size)
    scores[blob[cand] == 0] += 10.0  # `top` would take blob 0 only
    ids = np.array([f"p{i:03d}" for i in cand])
    pred = np.zeros(cand.size, int)
    order = pick_order(scores, ids, pred, 4, pick="cluster", seed=1, embedding=(x[cand], x[lab_rows]))
    assert len(set(blob[cand[order]].tolist())) == 4 and 0 not in blob[cand[order]]
    for i in order:  # the best score of its blob
        same = blob[cand] == blob[cand[i]]
        assert scores[i] == scores[same].max()
    top = pick_order(scores, ids, pred, 4, pick="top")
    assert set(blob[cand[top]].tolist()) == {0}


def test_cluster_picks_follow_the_reference_loop_and_the_seed():
    x, _ = blobs([30, 25, 20, 15, 10], seed=4)
    rng = np.random.default_rng(1)
    scores = rng.random(len(x))
    ids = np.array([f"q{i:03d}" for i in rng.permutation(len(x))])
    lab_x = x[:3] + 0.01
    emb = (x, lab_x)
    for pick, beta, seed in (("cluster", 1.0, 0), ("cluster-power", 2.0, 7)):
        kw = dict(pick=pick, beta=beta, seed=seed, embedding=emb)
        order = pick_order(scores, ids, np.zeros(len(x), int), 7, **kw)
        # the reference: the clusters of candidates + labelled, each ranked by top or power
        allx = np.concatenate([x, lab_x])
        labelled = np.arange(len(allx)) >= len(x)
        clusters = tc.kmeans_labels(allx, tc.n_clusters_for(3, 7, len(allx)), tc.kmeans_seed(seed))
        keys = scores if pick == "cluster" else power_keys(scores, beta, gumbel_noise(len(x), seed))
        pos = np.empty(len(x))
        pos[rank_by_score(keys, ids)] = np.arange(len(x))
        ref = slow_quota_order(clusters, labelled, np.concatenate([-pos, np.zeros(3)]), 7)
        assert order.tolist() == ref
        again = pick_order(scores, ids, np.zeros(len(x), int), 7, **kw)
        assert np.array_equal(order, again)


def test_cluster_pick_without_embedding_is_refused():
    from cryoal.errors import OptionError

    with pytest.raises(OptionError, match="cryoal pretrain"):
        pick_order(np.ones(3), np.array(["a", "b", "c"]), np.zeros(3, int), 2, pick="cluster")
