"""Baseline schemes against obvious implementations (explicit loops, materialised embeddings,
full distance matrices), and `cryoal.score` for every scheme."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import cryoal
from cryoal.errors import CryoalError
from cryoal.scoring import SCHEMES, diversity, uncertainty

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _probs(n=12, c=4, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    p[0] = np.eye(c)[1]  # a one-hot row: 0 log 0 must count as 0
    return p


# -- softmax scores ---------------------------------------------------------------------------


def test_softmax_scores_match_loops():
    p = _probs()
    for i, row in enumerate(p):
        h = -sum(v * math.log(v) for v in row if v > 0)
        top = sorted(row, reverse=True)
        assert uncertainty.entropy(p)[i] == pytest.approx(h, abs=1e-12)
        assert uncertainty.margin(p)[i] == pytest.approx(1 - (top[0] - top[1]), abs=1e-12)
        assert uncertainty.least_confidence(p)[i] == pytest.approx(1 - top[0], abs=1e-12)


def test_bald_from_probs_matches_loop():
    mc = np.stack([_probs(seed=s) for s in range(5)])  # (T, B, C)
    got = uncertainty.bald_from_probs(mc)
    for i in range(mc.shape[1]):
        mean = [sum(mc[t, i, c] for t in range(5)) / 5 for c in range(mc.shape[2])]
        h_mean = -sum(v * math.log(v) for v in mean if v > 0)
        mean_h = sum(-sum(v * math.log(v) for v in mc[t, i] if v > 0) for t in range(5)) / 5
        assert got[i] == pytest.approx(h_mean - mean_h, abs=1e-12)
    assert np.all(got >= 0)


# -- MC dropout -------------------------------------------------------------------------------


def _dropout_model(p3d=0.3, p=0.5):
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout3d(p3d),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(p), nn.Linear(4, 3),
    )
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m


def test_mc_dropout_uses_dropout_only_and_restores_modes():
    model = _dropout_model().train()
    x = torch.randn(6, 1, 8, 8, 8)
    stats = model[1].running_mean.clone()
    mc = uncertainty.mc_dropout_probs(model, x, passes=4, seed=1)
    assert mc.shape == (4, 6, 3)
    assert not np.allclose(mc[0], mc[1])  # dropout is active
    assert torch.equal(model[1].running_mean, stats)  # BatchNorm stayed in eval: no stats update
    assert all(m.training for m in model.modules())  # modes restored
    np.testing.assert_array_equal(mc, uncertainty.mc_dropout_probs(model, x, passes=4, seed=1))


def test_mc_dropout_with_zero_rate_is_the_eval_model():
    """With p = 0 every pass equals the eval-mode model (BatchNorm in eval), so BALD is 0."""
    model = _dropout_model(0.0, 0.0)
    x = torch.randn(5, 1, 8, 8, 8)
    mc = uncertainty.mc_dropout_probs(model, x, passes=3)
    with torch.no_grad():
        want = torch.softmax(model.eval()(x).double(), 1).numpy()
    for t in range(3):
        np.testing.assert_allclose(mc[t], want, rtol=1e-6)
    np.testing.assert_allclose(uncertainty.bald_from_probs(mc), 0, atol=1e-9)


def test_mc_dropout_only_dropout3d():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 8, 3), nn.Dropout3d(0.5), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(8, 3))
    s = cryoal.score(model, torch.randn(4, 1, 8, 8, 8), "bald", mc_passes=6)
    assert s.shape == (4,) and np.all(s > 0)


def test_bald_score_matches_explicit_mc_loop():
    """cryoal.score(..., 'bald') against T explicit forwards with only Dropout3d/Dropout in train
    mode (BatchNorm in eval) and the mutual information written out per sample."""
    model = _dropout_model()
    x = torch.randn(5, 1, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    got = cryoal.score(model, x, "bald", mc_passes=6, seed=3)
    torch.manual_seed(3)
    model.eval()
    model[3].train()  # Dropout3d
    model[6].train()  # Dropout
    with torch.no_grad():
        passes = [torch.softmax(model(x).double(), 1).numpy() for _ in range(6)]
    model.eval()
    for i in range(5):
        mean = np.mean([p[i] for p in passes], axis=0)
        h_mean = -sum(v * math.log(v) for v in mean if v > 0)
        mean_h = np.mean([-sum(v * math.log(v) for v in p[i] if v > 0) for p in passes])
        assert got[i] == pytest.approx(h_mean - mean_h, rel=1e-9, abs=1e-12)
    assert np.all(got > 0)


def test_bald_without_dropout_is_refused():
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(CryoalError, match="dropout"):
        cryoal.score(model, torch.randn(2, 1, 8, 8, 8), "bald")


# -- coreset ----------------------------------------------------------------------------------


def _kcenter_obvious(x, n, centres=None):
    """Full N x N distance matrix and explicit loops."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    chosen, gains = [], []
    if centres is not None:
        dc = np.sqrt(((x[:, None, :] - centres[None, :, :]) ** 2).sum(-1))
        mind = [min(dc[i]) for i in range(len(x))]
    else:
        mean = x.mean(0)
        dm = [math.sqrt(((x[i] - mean) ** 2).sum()) for i in range(len(x))]
        first = max(range(len(x)), key=lambda i: (dm[i], -i))
        chosen, gains = [first], [dm[first]]
        mind = [d[i, first] for i in range(len(x))]
    while len(chosen) < n:
        best = max((i for i in range(len(x)) if i not in chosen), key=lambda i: (mind[i], -i))
        chosen.append(best)
        gains.append(mind[best])
        mind = [min(mind[i], d[i, best]) for i in range(len(x))]
    return np.array(chosen), np.array(gains)


@pytest.mark.parametrize("with_centres", [False, True])
def test_kcenter_greedy_matches_distance_matrix(with_centres):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6))
    centres = rng.normal(size=(5, 6)) if with_centres else None
    order, gains = diversity.kcenter_greedy(x, 12, centres)
    want_order, want_gains = _kcenter_obvious(x, 12, centres)
    np.testing.assert_array_equal(order, want_order)
    np.testing.assert_allclose(gains, want_gains, rtol=1e-10)


def test_kcenter_duplicates_never_picked_twice():
    x = np.zeros((5, 3))
    order, gains = diversity.kcenter_greedy(x, 5)
    assert sorted(order) == list(range(5)) and np.all(gains == 0)


def test_min_sq_dist_blocks(monkeypatch):
    monkeypatch.setattr(diversity, "CENTRE_BLOCK", 3)
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(10, 4)), rng.normal(size=(7, 4))
    want = ((x[:, None] - c[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(diversity.min_sq_dist(x, c), want, rtol=1e-10)


# -- badge ------------------------------------------------------------------------------------


def _badge_obvious(probs, feats, n, seed):
    """Materialised (N, C*F) embeddings, explicit distance updates, the same random draws."""
    g = []
    for p, h in zip(probs, feats, strict=True):
        a = p.copy()
        a[int(np.argmax(p))] -= 1.0
        g.append(np.outer(a, h).ravel())
    g = np.array(g)
    rng = np.random.default_rng(seed)
    norms = [float(v @ v) for v in g]
    first = int(np.argmax(norms))
    chosen, gains = [first], [math.sqrt(norms[first])]
    d2 = [float((g[i] - g[first]) @ (g[i] - g[first])) for i in range(len(g))]
    while len(chosen) < n:
        w = np.array([0.0 if i in chosen else d2[i] for i in range(len(g))])
        cum = np.cumsum(w)
        pick = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
        chosen.append(pick)
        gains.append(math.sqrt(d2[pick]))
        d2 = [min(d2[i], float((g[i] - g[pick]) @ (g[i] - g[pick]))) for i in range(len(g))]
    return np.array(chosen), np.array(gains)


def test_badge_matches_materialised_embeddings():
    rng = np.random.default_rng(5)
    probs = _probs(30, 4, seed=2)
    feats = np.abs(rng.normal(size=(30, 7)))
    order, gains = diversity.badge_select(probs, feats, 10, seed=11)
    want_order, want_gains = _badge_obvious(probs, feats, 10, 11)
    np.testing.assert_array_equal(order, want_order)
    np.testing.assert_allclose(gains, want_gains, rtol=1e-6, atol=1e-9)
    assert len(set(order)) == 10


def test_badge_all_zero_embeddings_still_picks_distinct():
    probs = np.tile(np.eye(3)[0], (6, 1))  # confident: a = 0, every embedding is zero
    order, gains = diversity.badge_select(probs, np.ones((6, 2)), 6, seed=0)
    assert sorted(order) == list(range(6)) and np.all(gains == 0)


# -- cryoal.score -----------------------------------------------------------------------------


class Tiny(nn.Module):
    """A conventions-style classifier: features() and a Linear head."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Dropout3d(0.2), nn.AdaptiveAvgPool3d(1),
                                   nn.Flatten(), nn.Dropout(0.3))
        self.head = nn.Linear(4, 3)

    def features(self, x):
        return self.trunk(x)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_score_every_scheme(scheme):
    torch.manual_seed(0)
    model = Tiny().eval()
    vols = np.random.default_rng(0).normal(size=(7, 8, 8, 8)).astype(np.float32)  # pool layout
    s = cryoal.score(model, vols, scheme)
    assert s.shape == (7,) and np.all(np.isfinite(s))
    np.testing.assert_array_equal(s, cryoal.score(model, torch.from_numpy(vols)[:, None], scheme))
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(vols)[:, None]).double(), 1).numpy()
        feats = model.features(torch.from_numpy(vols)[:, None]).double().numpy()
    if scheme == "max-entropy":
        np.testing.assert_allclose(s, uncertainty.entropy(p), rtol=1e-6)
    elif scheme == "margin":
        np.testing.assert_allclose(s, uncertainty.margin(p), rtol=1e-6)
    elif scheme == "least-confidence":
        np.testing.assert_allclose(s, uncertainty.least_confidence(p), rtol=1e-6)
    elif scheme == "random":
        stream = np.random.SeedSequence(0).spawn(2)[1]  # the `random` stream of seed 0
        np.testing.assert_array_equal(s, np.random.default_rng(stream).random(7))
    elif scheme == "coreset":
        order, gains = diversity.kcenter_greedy(feats, 7)
        np.testing.assert_allclose(s[order], gains, rtol=1e-6)
    elif scheme == "badge":
        order, gains = diversity.badge_select(p, feats, 7, seed=0)
        np.testing.assert_allclose(s[order], gains, rtol=1e-6)
    elif scheme == "typiclust":  # on the model's features; select reads the pool's embeddings
        from cryoal.scoring.typiclust import typiclust_order

        order, typ = typiclust_order(feats, np.zeros(7, bool), 7, seed=0)
        np.testing.assert_allclose(s[order], typ, rtol=1e-6)


def test_score_unknown_scheme():
    with pytest.raises(CryoalError, match="unknown scheme 'nope'"):
        cryoal.score(Tiny(), np.zeros((1, 8, 8, 8), np.float32), "nope")


def test_coreset_score_uses_labelled_features():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(6, 1, 8, 8, 8)
    lab = np.random.default_rng(1).normal(size=(3, 4))
    s = cryoal.score(model, x, "coreset", labelled_features=lab)
    with torch.no_grad():
        feats = model.features(x).double().numpy()
    order, gains = diversity.kcenter_greedy(feats, 6, lab)
    np.testing.assert_allclose(s[order], gains, rtol=1e-6)
