"""Segmentation gradient-norm scores against per-sample reference loops, the sampled `expected`
converging to the exact sum over label maps, and the U-Net / loss / metric contracts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cryoal.errors import CryoalError
from cryoal.io.masks import mask_labels
from cryoal.learn.metrics import confusion_matrix, iou_per_class, mean_iou
from cryoal.models.unet import build_segmentation_model
from cryoal.modes.segmentation import augment_pairs, pixel_mean_cross_entropy
from cryoal.scoring.segmentation import dense_gradnorm_scores, expected_exact, pixel_mean


def _grad_norm(loss, params, norm="l2") -> float:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    sq = [g.double().pow(2).sum() for g in grads if g is not None]
    if norm == "l2":
        return float(torch.stack(sq).sum().sqrt())
    return float(torch.stack(sq).sqrt().sum())


def _reference(model, x, norm="l2"):
    """The obvious loops: per sample, one backward for the mean pixel entropy, and one backward
    for EVERY label map (C^L of them), weighted by its posterior probability."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    ent, exp = [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        logp = torch.log_softmax(model(xi), dim=1)
        ent.append(_grad_norm(-(logp.exp() * logp).sum(1).mean(), params, norm))
        with torch.no_grad():
            p = torch.softmax(model(xi).double(), dim=1)[0].reshape(model_classes(model, xi), -1)
        c, n = p.shape
        total = 0.0
        for y in itertools.product(range(c), repeat=n):
            weight = float(np.prod([float(p[y[j], j]) for j in range(n)]))
            target = torch.tensor(y).reshape(1, *xi.shape[2:])
            total += weight * _grad_norm(F.cross_entropy(model(xi), target), params, norm)
        exp.append(total)
    return np.array(ent), np.array(exp)


def model_classes(model, x) -> int:
    with torch.no_grad():
        return model(x).shape[1]


def _tiny_net(n_classes=2):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout2d(0.2),
        nn.Conv2d(4, n_classes, 1),
    )
    with torch.no_grad():  # non-trivial running statistics
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("norm", ["l2", "tensor-sum"])
def test_entropy_and_exact_expected_equal_reference_loop(norm):
    net = _tiny_net()
    x = torch.randn(3, 1, 2, 2)  # 2 classes x 4 pixels: 16 label maps
    ref_ent, ref_exp = _reference(net, x, norm)
    scores, probs = dense_gradnorm_scores(net, x, schemes=("entropy",), norm=norm)
    np.testing.assert_allclose(scores["entropy"], ref_ent, rtol=1e-4)
    np.testing.assert_allclose(expected_exact(net, x, norm=norm), ref_exp, rtol=1e-4)
    assert probs.shape == (3, 2, 2, 2)


def test_entropy_on_a_real_unet_equals_reference_loop():
    torch.manual_seed(1)
    model = build_segmentation_model("unet", (8, 8), 3, width=4).eval()
    x = torch.randn(2, 1, 8, 8)
    params = [p for p in model.parameters() if p.requires_grad]
    ref = []
    for i in range(2):
        logp = torch.log_softmax(model(x[i : i + 1]), dim=1)
        ref.append(_grad_norm(-(logp.exp() * logp).sum(1).mean(), params))
    scores, _ = dense_gradnorm_scores(model, x, schemes=("entropy",))
    np.testing.assert_allclose(scores["entropy"], ref, rtol=1e-4)


def test_sampled_expected_converges_to_exact():
    net = _tiny_net()
    x = torch.randn(4, 1, 2, 2)
    exact = expected_exact(net, x)
    errors = []
    for samples in (4, 64, 2048):
        gen = torch.Generator().manual_seed(123)
        est, _ = dense_gradnorm_scores(net, x, schemes=("expected",), samples=samples, generator=gen)
        errors.append(np.abs(est["expected"] - exact).max() / exact.max())
    assert errors[-1] < 0.02  # standard error ~ 1/sqrt(2048) of the spread
    assert errors[-1] < errors[0]


def test_sampled_expected_is_reproducible_and_matches_single_sample_loop():
    """Each sampled map's norm is a per-sample backward: check the estimator with S=3 maps."""
    net = _tiny_net(3)
    x = torch.randn(2, 1, 3, 2)
    gen = torch.Generator().manual_seed(5)
    a, _ = dense_gradnorm_scores(net, x, schemes=("expected", "entropy"), samples=3, generator=gen)
    gen = torch.Generator().manual_seed(5)
    b, _ = dense_gradnorm_scores(net, x, schemes=("expected", "entropy"), samples=3, generator=gen)
    np.testing.assert_array_equal(a["expected"], b["expected"])
    # reproduce the 3 drawn maps with the same generator and take the norms one by one
    from cryoal.scoring.segmentation import pixel_log_probs, sample_label_maps

    with torch.no_grad():
        p = pixel_log_probs(net(x)).exp()
    maps = sample_label_maps(p, 3, torch.Generator().manual_seed(5))
    params = list(net.parameters())
    for i in range(2):
        norms = [
            _grad_norm(F.cross_entropy(net(x[i : i + 1]), maps[i, s].reshape(1, 3, 2)), params)
            for s in range(3)
        ]
        assert a["expected"][i] == pytest.approx(np.mean(norms), rel=1e-4)


def test_pixel_mean_of_a_baseline_equals_loop():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(2, 4, 5)).transpose(0, 3, 1, 2)  # (B, C, H, W)

    def max_entropy(p):
        return -(p * np.log(p)).sum(1)

    want = [np.mean([max_entropy(probs[b, :, i, j][None])[0] for i in range(4) for j in range(5)])
            for b in range(2)]
    np.testing.assert_allclose(pixel_mean(max_entropy, probs), want)
    flat = probs[:, :, 0, 0]
    np.testing.assert_allclose(pixel_mean(max_entropy, flat), max_entropy(flat))


def test_unet_contract_2d_and_3d():
    torch.manual_seed(0)
    for shape in ((8, 8), (20, 12), (8, 12, 16)):
        model = build_segmentation_model("unet", shape, 3).eval()
        x = torch.randn(2, 1, *shape)
        out = model(x)
        assert out.shape == (2, 3, *shape)
        assert model.features(x).shape == (2, model.arch_kwargs["width"])
        assert any(isinstance(m, (nn.Dropout2d, nn.Dropout3d)) for m in model.modules())
    with pytest.raises(CryoalError, match="unet3d: a 3D model was given 2D data"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(CryoalError, match="too small"):
        build_segmentation_model("unet", (4, 4), 2)


def test_pixel_mean_cross_entropy_ignores_unlabelled():
    logits = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    y[0, :2] = -1
    y[1] = -1
    got = pixel_mean_cross_entropy(logits, y)
    want0 = F.cross_entropy(logits[0:1, :, 2:], y[0:1, 2:])
    assert got[0].item() == pytest.approx(want0.item(), rel=1e-6)
    assert got[1].item() == 0.0


def test_augment_pairs_moves_mask_with_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    y = x[:, 0].long()  # the mask is a copy of the image: it must stay one
    xa, ya = augment_pairs(x, y, gen)
    torch.testing.assert_close(xa[:, 0].long(), ya)
    x3 = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 1, 3, 4, 4)
    xa, ya = augment_pairs(x3, x3[:, 0].long(), gen)
    torch.testing.assert_close(xa[:, 0].long(), ya)


def test_iou_and_mask_labels_against_loops():
    rng = np.random.default_rng(0)
    t = rng.integers(-1, 3, size=(5, 6, 6))
    p = rng.integers(0, 3, size=(5, 6, 6))
    cm = confusion_matrix(t, p, 3)
    for c in range(3):
        inter = np.sum((t == c) & (p == c))
        union = np.sum(((t == c) | (p == c)) & (t >= 0))
        assert iou_per_class(cm)[c] == pytest.approx(inter / union)
    assert mean_iou(cm) == pytest.approx(np.mean(iou_per_class(cm)))
    masks = np.full((3, 2, 2), -1)
    masks[1, 0, 0] = 0
    masks[2, 1, 1] = 2
    np.testing.assert_array_equal(mask_labels(masks), [-1, 0, 2])


def test_mean_iou_by_hand():
    # class 0: 3 right, 1 taken for 1, 2 of class 1 taken for 0 -> IoU 3 / 6; class 1: 4 / 7;
    # class 2 is neither present nor predicted and stays out of the mean
    cm = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
    assert iou_per_class(cm) == pytest.approx([0.5, 4 / 7, None])
    assert mean_iou(cm) == pytest.approx((0.5 + 4 / 7) / 2)
    assert np.isnan(mean_iou(np.zeros((2, 2), int)))


def test_trained_segmenter_reports_the_mean_iou_of_its_predictions(one_torch_thread):
    """The `mean_iou` training reports is that of the kept model's predictions on the validation
    set, counted pixel by pixel here (unlabelled pixels left out)."""
    from cryoal.learn.train import fit
    from cryoal.simulate.membranes import simulate_membranes

    images, masks = simulate_membranes(12, 16, 2, snr=2.0, seed=1)
    masks = masks.astype(np.int64)
    masks[:, 0, :] = -1  # an unlabelled row in every mask
    model, metrics = fit(images[:8], masks[:8], images[8:], masks[8:], n_classes=2, mode="segmentation",
                         epochs=2, batch_size=4, device="cpu", seed=0)
    with torch.no_grad():
        pred = model(torch.from_numpy(images[8:, None])).argmax(1).numpy()
    truth = masks[8:]
    ious = []
    for c in range(2):
        inter = np.sum((truth == c) & (pred == c))
        union = np.sum((truth == c) | ((pred == c) & (truth >= 0)))
        if union:
            ious.append(inter / union)
    assert metrics["mean_iou"] == pytest.approx(np.mean(ious))
    assert metrics["evaluated_on"] == "validation"
