"""Model registry: shapes, the forward == head(features) identity, dropout for BALD, bad arguments."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomise_batchnorm
from torch import nn

from cryoal.errors import CryoalError
from cryoal.models import ARCHS, DEFAULT_ARCH, build_model
from cryoal.modes import get_mode

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("box", [16, 32])
def test_shapes_and_head_identity(arch: str, box: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, (box, box, box), 5).eval()
    randomise_batchnorm(model, torch.Generator().manual_seed(1))
    x = torch.randn(3, 1, box, box, box)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        via_head = model.head(feats)
    assert logits.shape == (3, 5) and logits.dtype == torch.float32
    assert isinstance(model.head, nn.Linear)
    assert feats.shape == (3, model.head.in_features)
    torch.testing.assert_close(logits, via_head, rtol=0, atol=0)
    # batched forward equals per-sample forward in eval mode (BatchNorm uses running stats)
    with torch.no_grad():
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(logits, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_non_cubic_and_64_box(arch: str) -> None:
    model = build_model(arch, (12, 16, 20), 3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 12, 16, 20)).shape == (2, 3)
    if arch == DEFAULT_ARCH:  # the largest box users run; one arch keeps the test fast
        big = build_model(arch, (64, 64, 64), 4).eval()
        with torch.no_grad():
            assert big(torch.randn(1, 1, 64, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_dropout_present_and_mc_dropout_varies(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, (16, 16, 16), 4).eval()
    kinds = {type(m) for m in model.modules()}
    assert nn.Dropout3d in kinds and nn.Dropout in kinds
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ref, model(x))  # eval: deterministic
        for m in model.modules():  # BALD: only dropout in train mode
            if isinstance(m, (nn.Dropout, nn.Dropout3d)):
                m.train()
        a, b = model(x), model(x)
    assert not torch.equal(a, b)


def test_init_is_a_function_of_the_seed() -> None:
    torch.manual_seed(3)
    a = build_model("rb3d", (16, 16, 16), 3)
    torch.manual_seed(3)
    b = build_model("rb3d", (16, 16, 16), 3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_recorded_attributes() -> None:
    model = build_model("resnet3d", [16, 16, 16], 3, width=8)
    assert (model.arch, model.arch_kwargs, model.input_shape, model.n_classes) == (
        "resnet3d", {"width": 8}, [16, 16, 16], 3,
    )
    assert model.head.in_features == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("vgg", (16, 16, 16), 3), "unknown architecture 'vgg'"),
        (("rb3d", (4, 4, 4), 3), "too small"),
        (("rb3d", (16, 16), 3), "3D particle shape"),
        (("rb3d", (16, 16, 16), 1), "at least 2 classes"),
    ],
)
def test_bad_arguments(args, message: str) -> None:
    with pytest.raises(CryoalError, match=message):
        build_model(*args)


def test_subtomogram_mode() -> None:
    mode = get_mode("subtomogram")
    assert mode.default_arch == DEFAULT_ARCH and set(mode.archs) == set(ARCHS)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    targets = torch.tensor([0, 2])
    expected = torch.stack([-torch.log_softmax(logits[i], 0)[targets[i]] for i in range(2)])
    torch.testing.assert_close(mode.per_sample_loss(logits, targets), expected)
    import numpy as np

    x = mode.to_input(np.zeros((2, 8, 8, 8), np.float64))
    assert x.shape == (2, 1, 8, 8, 8) and x.dtype == torch.float32
    with pytest.raises(CryoalError, match="mode 'volume' is not supported"):
        get_mode("volume")
