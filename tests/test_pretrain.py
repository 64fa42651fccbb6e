"""`cryoal pretrain`, `cryoal embed` and `train --init`: losses, the encoder file, the pool's embedding,
fine-tuning from the trunk, and the bad inputs that must leave everything as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_error, cli

from cryoal.errors import PoolError
from cryoal.io.embedding import ids_digest, read_embeddings
from cryoal.io.pool import PoolWriter
from cryoal.learn.encoder import encoder_digest, read_encoder
from cryoal.learn.pretrain import PretrainSettings, nt_xent, pretrain_pool, pretrain_to_file, vicreg

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_omp_thread")
BOX = 8
TINY = PretrainSettings(width=4, epochs=2, batch_size=8, device="cpu")


def make_pool(path: Path, n: int = 16, box: int = BOX, first: int = 0, append: bool = False,
              mode: str = "subtomogram", labels: bool = True) -> None:
    """Two classes: a centred blob (0) and a rod along x (1), with noise; every particle labelled."""
    g = np.random.default_rng(first)
    c = np.arange(box) - box / 2 + 0.5
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    shapes = [np.exp(-(zz**2 + yy**2 + xx**2) / 4), np.exp(-(zz**2 + yy**2) / 1.5)]
    y = np.arange(first, first + n) % 2
    vols = np.stack([shapes[k] for k in y]) + 0.3 * g.normal(size=(n, box, box, box))
    vols = ((vols - vols.mean()) / vols.std()).astype(np.float32)
    shape = (box,) * 3
    if mode == "image":
        vols, shape = vols[:, box // 2], (box, box)
    with PoolWriter(path, mode=mode, shape=shape, class_names=["blob", "rod"], append=append) as w:
        ids = range(first, first + n)
        w.add(vols, [f"p{i:03d}" for i in ids], [f"s{i}.mrc" for i in ids], labels=y if labels else None)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


# -- losses --------------------------------------------------------------------------------------


def test_nt_xent_matches_the_per_anchor_definition():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    ref = []
    for i in range(10):  # the slow, obvious form: -log softmax of the positive among the other 9
        pos = (i + 5) % 10
        logits = torch.stack([z[i] @ z[j] / 0.2 for j in range(10) if j != i])
        ref.append(-(z[i] @ z[pos] / 0.2 - torch.logsumexp(logits, 0)))
    torch.testing.assert_close(nt_xent(z1, z2, 0.2).double(), torch.stack(ref).mean(), rtol=1e-5, atol=1e-6)


def test_vicreg_is_small_for_matched_decorrelated_views_and_large_for_collapse():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(512, 8, generator=g) * 1.5
    assert float(vicreg(z, z)) < 0.5  # invariant, spread, decorrelated: only sampling noise remains
    collapsed = torch.zeros(512, 8)
    assert float(vicreg(collapsed, collapsed)) > 25 * 2 * 0.9  # the variance hinge, both branches


# -- the loop --------------------------------------------------------------------------------------


def test_ssl_loss_decreases_on_a_tiny_pool(tmp_path):
    pool = tmp_path / "pool.h5"
    make_pool(pool, 32)
    for method in ("simclr", "vicreg"):
        _, record = pretrain_pool(pool, PretrainSettings(width=4, epochs=8, batch_size=16, device="cpu",
                                                         method=method, lr=3e-3))
        losses = record["losses"]
        assert len(losses) == 8 and np.isfinite(losses).all()
        # VICReg's variance hinge dominates at first and falls slowly on 16 steps: a smaller margin
        drop = 0.05 if method == "simclr" else 0.005
        assert np.mean(losses[-2:]) < (1 - drop) * np.mean(losses[:2]), (method, losses)


def test_pretrain_writes_encoder_and_embedding_that_embed_reproduces(tmp_path):
    pool, enc = tmp_path / "pool.h5", tmp_path / "enc.pt"
    make_pool(pool, 12)
    summary = pretrain_to_file(pool, enc, TINY)
    record = read_encoder(enc)
    assert record["kind"] == "cryoal-encoder" and record["format_version"] == 1
    assert (record["arch"], record["width"], record["mode"]) == ("rb3d", 4, "subtomogram")
    assert record["input_shape"] == [BOX] * 3 and record["box"] == BOX
    assert record["embedding_dim"] == 16  # rb3d's trunk ends at 4 * width
    assert record["pool_digest"] == ids_digest(np.array([f"p{i:03d}" for i in range(12)]))
    assert record["pretrain"]["method"] == "simclr" and len(record["pretrain"]["losses"]) == 2
    assert encoder_digest(enc) == sha(enc)[:16] == summary["encoder_digest"]
    assert torch.load(enc, weights_only=True)["state_dict"].keys() == record["state_dict"].keys()
    emb = read_embeddings(pool, encoder_digest(enc))
    assert emb.values.shape == (12, 16)
    # `cryoal embed` from the file gives the embedding pretrain wrote from memory
    res = cli("embed", pool, "-m", enc, "--batch-size", "5")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(read_embeddings(pool).values, emb.values, rtol=1e-4, atol=1e-5)


def test_embed_fills_appended_particles(tmp_path):
    pool, enc = tmp_path / "pool.h5", tmp_path / "enc.pt"
    make_pool(pool, 10)
    res = cli("pretrain", pool, "-o", enc, "--width", "4", "--epochs", "1", "--batch-size", "4",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    before = read_embeddings(pool).values
    make_pool(pool, 3, first=10, append=True)
    with pytest.raises(PoolError, match="3 particle"):
        read_embeddings(pool)
    res = cli("embed", pool, "-m", enc)
    assert res.exit_code == 0, res.output
    after = read_embeddings(pool, encoder_digest(enc)).values
    assert after.shape == (13, 16)
    np.testing.assert_allclose(after[:10], before, rtol=1e-4, atol=1e-5)


# -- train --init ----------------------------------------------------------------------------------


def test_train_init_starts_from_the_trunk_and_records_the_digest(tmp_path, monkeypatch):
    import cryoal.learn.train as train_mod

    pool, enc, model_path = tmp_path / "pool.h5", tmp_path / "enc.pt", tmp_path / "m.pt"
    make_pool(pool, 12)
    pretrain_to_file(pool, enc, TINY)
    trunk = read_encoder(enc)["state_dict"]
    seen = {}
    real_fit = train_mod.fit

    def spy(*args, **kwargs):  # the weights fit starts from, before any step
        if kwargs.get("init_model") is not None:
            seen.update({k: v.clone() for k, v in kwargs["init_model"].trunk.state_dict().items()})
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_mod, "fit", spy)
    res = cli("train", pool, "-o", model_path, "--init", enc, "--epochs", "1", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert seen.keys() == trunk.keys()
    for k in trunk:
        torch.testing.assert_close(seen[k], trunk[k], rtol=0, atol=0)
    ckpt = torch.load(model_path, weights_only=True)
    assert ckpt["encoder_digest"] == encoder_digest(enc)
    assert ckpt["arch"] == "rb3d" and ckpt["arch_kwargs"]["width"] == 4
    scratch = tmp_path / "s.pt"
    res = cli("train", pool, "-o", scratch, "--epochs", "1", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "encoder_digest" not in torch.load(scratch, weights_only=True)


@pytest.mark.parametrize("case", ["arch", "box", "mode", "not-an-encoder"])
def test_train_init_mismatch_is_one_line_and_writes_nothing(tmp_path, case):
    pool, enc, model_path = tmp_path / "pool.h5", tmp_path / "enc.pt", tmp_path / "m.pt"
    make_pool(pool, 12)
    pretrain_to_file(pool, enc, TINY)
    target, extra = pool, []
    words = {"arch": "dsrf3d", "box": "shape", "mode": "image mode",
                                      "not-an-encoder": "not a cryoal encoder"}[case]
    if case == "arch":
        extra = ["--arch", "dsrf3d"]
    elif case == "box":
        target = tmp_path / "big.h5"
        make_pool(target, 12, box=12)
    elif case == "mode":
        target = tmp_path / "img.h5"
        make_pool(target, 12, mode="image")
    else:
        enc = pool  # an HDF5 file given as the encoder
    digest = sha(target)
    res = cli("train", target, "-o", model_path, "--init", enc, "--epochs", "1", "--device", "cpu", *extra)
    assert_one_error(res, str(enc), words)
    assert not model_path.exists() and sha(target) == digest and leftovers(tmp_path) == []


def test_pretrain_on_an_image_pool_is_not_supported(tmp_path):
    pool, enc = tmp_path / "img.h5", tmp_path / "enc.pt"
    make_pool(pool, 12, mode="image")
    digest = sha(pool)
    res = cli("pretrain", pool, "-o", enc, "--epochs", "1", "--width", "4", "--device", "cpu")
    assert_one_error(res, str(pool), "not supported")
    assert not enc.exists() and sha(pool) == digest


# -- interruption ----------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["epoch", "embed"])
def test_an_interrupted_pretrain_leaves_no_encoder_or_temp_and_the_pool_as_it_was(tmp_path, when):
    pool, enc = tmp_path / "pool.h5", tmp_path / "enc.pt"
    make_pool(pool, 12)
    digest = sha(pool)

    def interrupt(info):
        if info["event"] == when:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_to_file(pool, enc, TINY, progress=interrupt)
    assert sha(pool) == digest and leftovers(tmp_path) == []
    # during training: no encoder; during the embedding write the encoder is complete, the pool old
    assert enc.exists() == (when == "embed")
    if enc.exists():
        read_encoder(enc)


def test_freeze_trunk_trains_the_head_alone(tmp_path):
    pool, enc, model_path = tmp_path / "pool.h5", tmp_path / "enc.pt", tmp_path / "m.pt"
    make_pool(pool, 12)
    pretrain_to_file(pool, enc, TINY)
    res = cli("train", pool, "-o", model_path, "--init", enc, "--freeze-trunk", "--epochs", "3",
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    ckpt = torch.load(model_path, weights_only=True)
    trunk = read_encoder(enc)["state_dict"]
    for k, v in trunk.items():  # weights and BatchNorm statistics exactly as pretrained
        torch.testing.assert_close(ckpt["state_dict"][f"trunk.{k}"], v, rtol=0, atol=0)
    assert ckpt["freeze_trunk"] is True
    # without --init there is nothing to freeze: one line, nothing written
    res = cli("train", pool, "-o", tmp_path / "x.pt", "--freeze-trunk", "--epochs", "1", "--device", "cpu")
    assert_one_error(res, "--freeze-trunk")
    assert not (tmp_path / "x.pt").exists()
