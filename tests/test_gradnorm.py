"""The gradient-norm engine against the per-sample reference loop (the definition)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from model_helpers import randomise_batchnorm
from torch import nn

import cryoal.scoring.layers as layers
from cryoal.scoring.gradnorm import gradnorm_scores, zero_sum_basis
from cryoal.scoring.gram import per_sample_gram
from cryoal.scoring.reference import reference_scores, reference_scores_by_norm

RTOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Scale(nn.Module):
    """A layer type the engine does not know, with its own parameter."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.3))

    def forward(self, x):
        return x * self.a


class TwiceConv(nn.Module):
    """One conv applied twice: its per-sample gradient is the sum of both calls' gradients."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 3, 3, padding=1)
        self.stem = nn.Conv3d(1, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        y = self.conv(torch.tanh(self.conv(self.stem(x))))
        return self.head(y.mean((2, 3, 4)))


class DirectUse(nn.Module):
    """A conv weight also used outside the module call: the engine must notice and fall back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv(x) + nn.functional.conv3d(x, self.conv.weight)
        return self.head(torch.tanh(y).mean((2, 3, 4)))


class Tied(nn.Module):
    """Two Linear layers sharing one weight tensor."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 2, 3, stride=2)
        self.a = nn.Linear(54, 16)
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 16)
        self.c.weight = self.b.weight
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.tanh(self.a(self.stem(x).flatten(1)))
        return self.head(torch.tanh(self.c(torch.tanh(self.b(h)))))


def plain_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2),
        nn.Conv3d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(2), nn.Flatten(),
        nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 4),
    )


def bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU(inplace=True), nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1, bias=False), nn.BatchNorm3d(8), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def dropout_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ELU(), nn.Dropout3d(0.3), nn.AvgPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1), nn.BatchNorm3d(8), nn.SiLU(), nn.Dropout3d(0.2),
        nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(8, 3),
    )


def fallback_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3), nn.PReLU(4), Scale(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3),
    )


def exotic_net() -> nn.Module:
    """'same' and reflect padding, grouped, strided, dilated and transposed convs, GroupNorm,
    InstanceNorm, LayerNorm, a 1x1x1 conv."""
    return nn.Sequential(
        nn.Conv3d(1, 4, 4, padding="same"), nn.GroupNorm(2, 4), nn.Tanh(),
        nn.Conv3d(4, 6, 3, groups=2, stride=2, padding=1, padding_mode="reflect"),
        nn.InstanceNorm3d(6, affine=True), nn.SiLU(),
        nn.ConvTranspose3d(6, 4, 3, stride=2, output_padding=1, groups=2), nn.Tanh(),
        nn.Conv3d(4, 4, 2, dilation=2, padding="same"), nn.Conv3d(4, 6, 1),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.LayerNorm(6), nn.Linear(6, 4),
    )


def ghost_net() -> nn.Module:
    """Wide convs on a small grid: the engine picks the ghost (Gram) form there."""
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool3d(4),
        nn.Conv3d(8, 32, 3, padding=1), nn.Tanh(), nn.Conv3d(32, 32, 3, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(32, 4),
    )


def coupled_bn_net() -> nn.Module:
    """BatchNorm without running statistics uses batch statistics even in eval: samples couple."""
    return nn.Sequential(
        nn.Conv3d(1, 4, 3), nn.BatchNorm3d(4, track_running_stats=False), nn.Tanh(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3),
    )


ARCHS = {
    "plain": plain_net, "batchnorm": bn_net, "dropout3d": dropout_net, "fallback": fallback_net,
    "exotic": exotic_net, "ghost": ghost_net, "coupled": coupled_bn_net,
    "twice": TwiceConv, "direct": DirectUse, "tied": Tied,
}


def _make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_batchnorm(ARCHS[name](), torch.Generator().manual_seed(seed + 1))


def _batch(n: int = 5, box: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, box, box, box, generator=torch.Generator().manual_seed(seed))


def _assert_close(got: dict, ref: dict) -> None:
    for k in ref:
        rel = np.abs(got[k] - ref[k]) / np.abs(ref[k])
        assert rel.max() <= RTOL, f"{k}: max relative error {rel.max():.2e}"


@pytest.mark.parametrize("name", list(ARCHS))
def test_engine_matches_reference_loop(name):
    model = _make(name)
    x = _batch()
    refs = reference_scores_by_norm(model, x)
    for norm, ref in refs.items():
        _assert_close(gradnorm_scores(model, x, norm=norm).scores, ref)
        assert np.all(ref["expected"] > 0) and np.all(ref["entropy"] > 0)
    res = gradnorm_scores(model, x)
    with torch.no_grad():  # one sample at a time: the definition, also for the coupled net
        p = torch.softmax(torch.cat([model.eval()(x[i : i + 1]) for i in range(len(x))]).double(), 1)
    np.testing.assert_allclose(res.probs, p.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["batchnorm", "fallback", "exotic"])
def test_entropy_alone_uses_one_seed_and_matches(name):
    model = _make(name)
    x = _batch()
    ref = reference_scores(model, x, schemes=("entropy",))
    res = gradnorm_scores(model, x, schemes=("entropy",))
    assert set(res.scores) == {"entropy"}
    _assert_close(res.scores, ref)


@pytest.mark.parametrize("arch,kw,box", [("dsrf3d", {"width": 4, "fc": 16}, 12), ("rb3d", {"width": 8}, 12),
                                         ("resnet3d", {"width": 4}, 12),
                                         ("dsrf3d", {}, 8), ("rb3d", {}, 8), ("resnet3d", {}, 8)])
def test_registry_models_match_reference(arch, kw, box):
    """The real registry models (default widths at the smallest box they take, and slimmed ones
    at 12^3, where the engine picks other per-layer plans) against the loop, both norms."""
    from cryoal.models import build_model

    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(arch, (box,) * 3, 4, **kw), torch.Generator().manual_seed(3))
    x = _batch(3, box=box)
    for norm, ref in reference_scores_by_norm(model, x).items():
        _assert_close(gradnorm_scores(model, x, norm=norm).scores, ref)


def test_every_conv_plan_is_exercised(monkeypatch):
    """ghost, unfold and grouped are each chosen on one of the nets checked against the loop above."""
    seen: set[str] = set()
    choose = layers.ConvHandler._choose_plan

    def spy(self, n_seeds):
        plan = choose(self, n_seeds)
        seen.add(plan)
        return plan

    monkeypatch.setattr(layers.ConvHandler, "_choose_plan", spy)
    for name in ("ghost", "exotic", "batchnorm"):
        gradnorm_scores(_make(name), _batch())
    assert {"ghost", "unfold", "grouped"} <= seen


def test_small_blocks_give_the_same_scores(monkeypatch):
    """Cutting the per-sample weight gradients and Gram sums into small blocks changes nothing."""
    model, x = _make("batchnorm"), _batch()
    full = gradnorm_scores(model, x).scores
    monkeypatch.setattr(layers, "MATERIALISE_BLOCK_ELEMS", 1)
    monkeypatch.setattr(layers, "GRAM_BLOCK", 7)
    blocked = gradnorm_scores(model, x).scores
    for k in full:
        np.testing.assert_allclose(blocked[k], full[k], rtol=1e-6)


def test_batched_forwards_only():
    """No loop over samples: on CPU one forward for the first chunk of 2 (which measures the
    activations) and one for the other 4 (small activations: they fit one chunk)."""
    model, x = _make("batchnorm"), _batch(6)
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    gradnorm_scores(model, x)
    assert calls == [2, 4]


def test_cpu_chunks_give_the_same_scores(monkeypatch):
    """On CPU the engine scores in cache-sized chunks (>= 2 samples each): same scores, one forward
    per chunk, never one per sample."""
    import cryoal.scoring.gradnorm as gn

    model, x = _make("batchnorm"), _batch(7)
    with gn.largest_conv_output(model) as sizes, torch.no_grad():
        model.eval()(x[:1])
    assert max(sizes) == 4 * 8**3  # the first conv's output: 4 channels on the 8^3 grid
    assert gn.chunk_size(max(sizes)) >= 7
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    full = gradnorm_scores(model, x, norm="tensor-sum")
    monkeypatch.setattr(gn, "CPU_CHUNK_BYTES", 4 * 3 * 4 * 8**3)  # 3 samples' first-conv output
    chunked = gradnorm_scores(model, x, norm="tensor-sum")
    hook.remove()
    assert calls == [2, 5, 2, 3, 2]  # first chunk of 2 measures, then the rest in chunks
    for k in full.scores:
        np.testing.assert_allclose(chunked.scores[k], full.scores[k], rtol=1e-5)
    np.testing.assert_allclose(chunked.probs, full.probs, rtol=1e-6)


def test_model_mode_and_grads_are_left_alone():
    model = _make("dropout3d").train()
    before = copy.deepcopy(model.state_dict())
    gradnorm_scores(model, _batch())
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_float64_model_is_exact_to_float64_precision():
    model = _make("plain").double()
    x = _batch(3).double()
    ref = reference_scores(model, x)
    got = gradnorm_scores(model, x).scores
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-9)


def test_zero_sum_basis_is_orthonormal():
    for c in (2, 3, 7):
        u = zero_sum_basis(c)
        assert u.shape == (c, c - 1)
        torch.testing.assert_close(u.T @ u, torch.eye(c - 1, dtype=torch.float64))
        torch.testing.assert_close(u.sum(0), torch.zeros(c - 1, dtype=torch.float64))


def test_generic_seeds_on_a_dense_output():
    """The engine core takes any per-sample seeds on any output shape (e.g. per-pixel logits)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, 3, 1))
    randomise_batchnorm(model, torch.Generator().manual_seed(0))
    model.eval()
    x = torch.randn(3, 1, 6, 6)
    seeds = torch.randn(3, 2, 3, 6, 6)
    res = per_sample_gram(model, x, lambda out: seeds, per_tensor=True)
    params = [p for p in model.parameters()]
    for i in range(3):
        grads = []
        for s in range(2):
            out = model(x[i : i + 1])
            g = torch.autograd.grad((out[0] * seeds[i, s]).sum(), params)
            grads.append(torch.cat([t.flatten() for t in g]).double())
        want = torch.stack([torch.stack([a @ b for b in grads]) for a in grads])
        torch.testing.assert_close(res.total[i], want, rtol=1e-5, atol=1e-8)
    assert set(res.per_tensor) == {n for n, _ in model.named_parameters()}
