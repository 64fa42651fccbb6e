"""The fused conv -> BatchNorm -> ReLU -> max-pool backward (cryoal/scoring/fused.py).

Where it applies, scores must equal the per-sample reference loop and the unfused engine; where
the chain is not exactly that (overlapping windows, another activation, a second consumer) the
engine must not fuse, and must still be right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorm
from torch import nn

import cryoal.scoring.fused as fused
import cryoal.scoring.gram as gram
from cryoal.scoring.gradnorm import gradnorm_scores, zero_sum_basis
from cryoal.scoring.reference import reference_scores_by_norm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StemNet(nn.Module):
    """conv -> BN -> activation -> pool, then a conv, BN, global pool and a linear head."""

    def __init__(self, act: nn.Module, pool: nn.Module, conv_bias: bool = True, skip: bool = False):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1, bias=conv_bias)
        self.bn = nn.BatchNorm3d(4)
        self.act, self.pool, self.skip = act, pool, skip
        self.conv2 = nn.Conv3d(4, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm3d(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        z = self.conv(x)
        y = self.pool(self.act(self.bn(z)))
        if self.skip:  # the conv output has a second consumer
            y = y + nn.functional.avg_pool3d(z, 2)
        y = torch.relu(self.bn2(self.conv2(y)))
        return self.head(y.mean((2, 3, 4)))


class FunctionalPool(nn.Module):
    """F.max_pool3d with the stride left out (autograd saves it as empty: it means the kernel)."""

    def forward(self, x):
        return nn.functional.max_pool3d(x, 2)


def _model(**kw) -> nn.Module:
    torch.manual_seed(0)
    kw.setdefault("act", nn.ReLU(inplace=True))
    kw.setdefault("pool", nn.MaxPool3d(2))
    model = randomise_batchnorm(StemNet(**kw), torch.Generator().manual_seed(3))
    return model.eval()


def _batch(n: int = 4, box: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, box, box, box, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def chains_found(monkeypatch) -> list[int]:
    """How many chains each engine call fused."""
    counts: list[int] = []
    find = fused.find_stem_chains

    def spy(*args):
        found = find(*args)
        counts.append(len(found))
        return found

    monkeypatch.setattr(gram, "find_stem_chains", spy)
    return counts


def _assert_matches_reference(model: nn.Module, x: torch.Tensor) -> None:
    for norm, ref in reference_scores_by_norm(model, x).items():
        got = gradnorm_scores(model, x, norm=norm).scores
        for k in ref:
            rel = np.abs(got[k] - ref[k]) / np.abs(ref[k])
            assert rel.max() <= 1e-4, f"{norm} {k}: max relative error {rel.max():.2e}"


@pytest.mark.parametrize("kw", [{}, {"conv_bias": False}, {"pool": FunctionalPool()}, {"act": nn.ReLU()}],
                         ids=["bias", "no-bias", "functional-pool", "relu-not-inplace"])
def test_fused_stem_matches_reference_loop(chains_found, kw):
    _assert_matches_reference(_model(**kw), _batch())
    assert chains_found and all(n == 1 for n in chains_found)


def test_fused_equals_unfused_per_parameter(chains_found, monkeypatch):
    """Every parameter's per-sample Gram, fused vs the engine's ordinary per-layer path."""
    model, x = _model(), _batch()

    def seeds(out):
        return zero_sum_basis(out.shape[1], out.dtype).T.unsqueeze(0).expand(out.shape[0], -1, -1)

    fast = gram.per_sample_gram(model, x, seeds, per_tensor=True)
    monkeypatch.setattr(gram, "FUSE_STEMS", False)
    slow = gram.per_sample_gram(model, x, seeds, per_tensor=True)
    assert chains_found == [1]
    assert fast.per_tensor.keys() == slow.per_tensor.keys()
    for name, ref in slow.per_tensor.items():
        torch.testing.assert_close(fast.per_tensor[name], ref, rtol=1e-5, atol=1e-9, msg=name)
    assert slow.per_tensor["conv.weight"].abs().max() > 0


def test_ties_and_dead_windows(chains_found):
    """Constant blocks make every pool window a tie and negative ones kill the ReLU there: the
    fused path must use the forward's own argmax and mask."""
    x = _batch()
    x[:, :, :4, :4, :4] = 0.0
    x[:, :, 4:, 4:, :4] = -3.0
    _assert_matches_reference(_model(), x)
    assert chains_found and all(n == 1 for n in chains_found)


def test_small_blocks_give_the_same_scores(monkeypatch):
    model, x = _model(), _batch()
    full = gradnorm_scores(model, x).scores
    monkeypatch.setattr(fused, "MATERIALISE_BLOCK_ELEMS", 1)  # one sample per gathered block
    blocked = gradnorm_scores(model, x).scores
    for k in full:
        np.testing.assert_allclose(blocked[k], full[k], rtol=1e-6)


@pytest.mark.parametrize("kw", [
    {"pool": nn.MaxPool3d(3, stride=2, padding=1)},  # overlapping windows
    {"pool": nn.MaxPool3d(2, padding=1)},            # padded windows
    {"act": nn.LeakyReLU(0.1)},                      # not a ReLU
    {"pool": nn.AvgPool3d(2)},                       # not a max-pool
    {"skip": True},                                  # the conv output has a second consumer
], ids=["overlapping", "padded", "leaky", "avgpool", "skip"])
def test_not_fused_where_inexact(chains_found, kw):
    _assert_matches_reference(_model(**kw), _batch())
    assert chains_found and all(n == 0 for n in chains_found)


def test_rb3d_stem_is_fused(chains_found):
    from cryoal.models import build_model

    torch.manual_seed(0)
    model = build_model("rb3d", (8, 8, 8), 4).eval()
    gradnorm_scores(model, _batch(2))
    assert chains_found == [1]
