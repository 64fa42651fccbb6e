"""Batch acquisition (`cryoal.scoring.picks`) against obvious references and target probabilities.

The sampled picks are tested statistically with fixed seeds: over many seeds, the empirical
frequencies of what is drawn must match the probabilities the pick promises (a chi-square test at
a small significance level, so a correct implementation fails with probability ~1e-4 at most, and
never here since the seeds are fixed).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from cryoal.errors import CryoalError
from cryoal.scoring.picks import (
    EMBEDDING_PICKS,
    PICKS,
    class_normalised,
    interleave_by_class,
    pick_order,
    rank_by_score,
    resolve_pick,
)

DRAWS = 6000
ALPHA = 1e-4


def _ids(n: int) -> np.ndarray:
    return np.asarray([f"p{i:03d}" for i in range(n)])


def _first_pick_counts(scores, pick, beta=1.0, predicted=None, draws=DRAWS, n=1) -> np.ndarray:
    ids = _ids(len(scores))
    predicted = np.zeros(len(scores), dtype=np.int64) if predicted is None else predicted
    counts = np.zeros(len(scores))
    for seed in range(draws):
        counts[pick_order(scores, ids, predicted, n, pick=pick, beta=beta, seed=seed)[0]] += 1
    return counts


def _chi2_ok(counts: np.ndarray, probs: np.ndarray) -> bool:
    expected = probs * counts.sum()
    return stats.chisquare(counts, expected).pvalue > ALPHA


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
def test_power_first_pick_is_proportional_to_score_to_the_beta(beta):
    scores = np.array([0.1, 0.5, 1.0, 2.0, 0.05, 0.8])
    counts = _first_pick_counts(scores, "power", beta)
    target = scores**beta / (scores**beta).sum()
    assert _chi2_ok(counts, target)
    # and the test has power: the uniform or plain-score distribution is rejected where they differ
    if beta != 1.0:
        assert not _chi2_ok(counts, scores / scores.sum())


def test_power_pairs_follow_sampling_without_replacement():
    """P(i first, j second) = w_i / W * w_j / (W - w_i): the slow, obvious enumeration."""
    scores = np.array([0.3, 1.0, 2.0, 0.6])
    ids = _ids(4)
    w = scores / scores.sum()
    pairs = list(itertools.permutations(range(4), 2))
    target = np.array([w[i] * w[j] / (1 - w[i]) for i, j in pairs])
    counts = np.zeros(len(pairs))
    where = {p: k for k, p in enumerate(pairs)}
    for seed in range(DRAWS):
        i, j = pick_order(scores, ids, np.zeros(4, int), 2, pick="power", seed=seed)
        counts[where[(int(i), int(j))]] += 1
    assert _chi2_ok(counts, target)


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_softrank_first_pick_is_proportional_to_rank_to_the_minus_beta(beta):
    scores = np.array([-0.5, 3.0, 0.0, 1.0, 2.0])  # negative and zero scores are fine for ranks
    ranks = np.empty(5)
    ranks[np.argsort(-scores)] = np.arange(1, 6)
    target = ranks**-beta / (ranks**-beta).sum()
    assert _chi2_ok(_first_pick_counts(scores, "softrank", beta), target)


def test_power_balanced_draws_within_each_class_and_goes_round_robin():
    scores = np.array([0.2, 1.0, 3.0, 0.5, 0.5, 2.0, 0.1])
    predicted = np.array([0, 0, 0, 1, 1, 1, 2])
    ids = _ids(7)
    counts = {c: np.zeros(7) for c in range(3)}
    for seed in range(DRAWS):
        order = pick_order(scores, ids, predicted, 0, pick="power-balanced", seed=seed)
        # round robin: the first three picks cover the three classes, the next two the two left
        assert sorted(predicted[order[:3]]) == [0, 1, 2]
        assert sorted(predicted[order[3:5]]) == [0, 1]
        for c in range(3):
            counts[c][order[np.flatnonzero(predicted[order] == c)[0]]] += 1
    for c in (0, 1):
        m = predicted == c
        target = np.where(m, scores, 0) / scores[m].sum()
        assert _chi2_ok(counts[c][m], target[m])


def test_power_balanced_is_the_power_order_taken_round_robin():
    rng = np.random.default_rng(0)
    scores, predicted, ids = rng.random(40), rng.integers(0, 4, 40), _ids(40)
    power = pick_order(scores, ids, predicted, 0, pick="power", seed=5)
    assert np.array_equal(pick_order(scores, ids, predicted, 0, pick="power-balanced", seed=5),
                          interleave_by_class(power, predicted))


def test_classnorm_is_the_power_draw_on_class_normalised_scores():
    rng = np.random.default_rng(1)
    scores, predicted, ids = rng.random(30) * 5, rng.integers(0, 3, 30), _ids(30)
    slow = np.empty(30)  # the obvious loop: each score over its class's mean
    for i in range(30):
        slow[i] = scores[i] / np.mean([scores[j] for j in range(30) if predicted[j] == predicted[i]])
    assert np.allclose(class_normalised(scores, predicted), slow)
    assert np.array_equal(pick_order(scores, ids, predicted, 10, pick="classnorm", seed=2),
                          pick_order(slow, ids, predicted, 10, pick="power", seed=2))


def test_classnorm_removes_a_per_class_scale():
    """Class 1's scores are class 0's times 100: after normalisation both classes are drawn alike."""
    base = np.linspace(0.5, 1.5, 10)
    scores = np.concatenate([base, 100 * base])
    predicted = np.repeat([0, 1], 10)
    class1 = 0
    for seed in range(2000):
        class1 += int(predicted[pick_order(scores, _ids(20), predicted, 1, pick="classnorm", seed=seed)[0]])
    assert stats.binomtest(class1, 2000, 0.5).pvalue > ALPHA
    top = pick_order(scores, _ids(20), predicted, 10, pick="top")
    assert set(predicted[top]) == {1}  # while the plain top 10 all come from the loud class


def test_balanced_matches_a_plain_round_robin_loop():
    rng = np.random.default_rng(2)
    scores, predicted, ids = rng.random(50), rng.integers(0, 5, 50), _ids(50)
    order = pick_order(scores, ids, predicted, 0, pick="balanced")
    # reference: per class, its members best first; then take one from each class in turn,
    # a round's classes ordered by their candidate's score
    queues = {c: sorted(np.flatnonzero(predicted == c), key=lambda i: -scores[i]) for c in set(predicted)}
    ref = []
    while any(queues.values()):
        heads = [q.pop(0) for q in queues.values() if q]
        ref += sorted(heads, key=lambda i: -scores[i])
    assert order.tolist() == ref


def test_top_ties_are_broken_by_particle_id():
    scores = np.array([1.0, 2.0, 1.0, 2.0, np.nan, 1.0])
    ids = np.asarray(["f", "d", "b", "a", "c", "e"])
    order = pick_order(scores, ids, np.zeros(6, int), 0, pick="top")
    assert ids[order].tolist() == ["a", "d", "b", "e", "f", "c"]
    assert np.array_equal(order, rank_by_score(scores, ids))


@pytest.mark.parametrize("pick", [p for p in PICKS if p not in EMBEDDING_PICKS])  # those: test_typiclust
def test_every_pick_is_deterministic_under_its_seed(pick):
    rng = np.random.default_rng(3)
    scores, predicted, ids = rng.random(60), rng.integers(0, 3, 60), _ids(60)
    a = pick_order(scores, ids, predicted, 20, pick=pick, seed=11)
    b = pick_order(scores, ids, predicted, 20, pick=pick, seed=11)
    assert np.array_equal(a, b) and np.unique(a).size == 20
    if pick in ("power", "softrank", "power-balanced", "classnorm"):
        c = pick_order(scores, ids, predicted, 20, pick=pick, seed=12)
        assert not np.array_equal(a, c)  # the seed matters


def test_zero_scores_come_after_every_positive_one_under_power():
    scores = np.array([0.0, 0.2, 0.0, 1.0])
    for seed in range(50):
        order = pick_order(scores, _ids(4), np.zeros(4, int), 0, pick="power", seed=seed)
        assert set(order[:2].tolist()) == {1, 3}


@pytest.mark.parametrize("pick,beta,message", [
    ("best", 1.0, "unknown pick"), ("power", 0.0, "--beta 0.0"), ("power", -1.0, "--beta -1.0"),
    ("power", float("nan"), "--beta nan"),
])
def test_bad_pick_or_beta(pick, beta, message):
    with pytest.raises(CryoalError, match=message):
        pick_order(np.ones(3), _ids(3), np.zeros(3, int), 1, pick=pick, beta=beta)


@pytest.mark.parametrize("pick", ["power", "power-balanced", "classnorm"])
def test_power_refuses_negative_scores(pick):
    with pytest.raises(CryoalError, match="negative; use --pick softrank"):
        pick_order(np.array([0.5, -0.1]), _ids(2), np.zeros(2, int), 1, pick=pick)
    with pytest.raises(CryoalError, match="can be negative"):
        resolve_pick("signed", False, pick, nonnegative=False)
    assert resolve_pick("signed", False, "softrank", nonnegative=False) == "softrank"


def test_resolve_pick_rules():
    assert resolve_pick("expected", False, None) == "power-balanced"  # the default since the SNR study
    assert resolve_pick("random", False, None) == "top"  # plain random sampling stays the reference
    assert resolve_pick("expected", False, None, nonnegative=False) == "softrank"
    assert resolve_pick("expected", False, "top") == "top"
    assert resolve_pick("expected", False, None, balance=True) == "balanced"
    assert resolve_pick("badge", True, None) is None
    for bad in ({"pick": "power"}, {"pick": None, "balance": True}):
        with pytest.raises(CryoalError, match="badge already builds a batch"):
            resolve_pick("badge", True, bad["pick"], bad.get("balance", False))
    with pytest.raises(CryoalError, match="cannot be combined"):
        resolve_pick("expected", False, "power", balance=True)
