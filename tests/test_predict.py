"""`cryoal predict` and the inference helpers: CSV contract, values against a per-sample model call,
streaming, atomic output, and model/pool mismatches."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cryoal.predict as predict_mod
from cryoal.cli import app
from cryoal.io.pool import Pool, PoolWriter, open_pool
from cryoal.learn.checkpoint import save_checkpoint
from cryoal.learn.inference import predict_proba
from cryoal.models import build_model
from cryoal.models.input import to_model_input

NAMES = ["ribosome", "proteasome", "membrane"]
BOX = 10

pytestmark = pytest.mark.usefixtures("one_omp_thread")


def make_pool(path: Path, n: int, box: int = BOX, mode: str = "subtomogram") -> None:
    rng = np.random.default_rng(0)
    shape = (box,) * 3 if mode == "subtomogram" else (box, box)
    with PoolWriter(path, mode=mode, shape=shape, class_names=NAMES) as w:
        # particles of very different contrast and offset, so that a random model's outputs vary
        vols = rng.normal(size=(n, *shape)) * rng.uniform(0.1, 5, (n,) + (1,) * len(shape))
        vols += rng.uniform(-2, 2, (n,) + (1,) * len(shape))
        w.add(vols.astype(np.float32), [f"id{i:04d}" for i in range(n)],
              [f"s{i}.mrc" for i in range(n)], labels=[i % 3 if i < 6 else -1 for i in range(n)])


def make_model(path: Path, box: int = BOX, pool: Path | None = None) -> torch.nn.Module:
    """A random model with non-trivial BN statistics; centred on `pool` so its argmax varies."""
    torch.manual_seed(0)
    model = build_model("resnet3d", (box,) * 3, 3, width=4).eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        if pool is not None:  # a fresh model favours one class everywhere: remove the common offset
            with open_pool(pool) as p:
                vols = torch.from_numpy(p.read(np.arange(len(p))))[:, None]
            model.head.bias.sub_(model(vols).mean(dim=0))
    save_checkpoint(path, model, {"mode": "subtomogram", "class_names": NAMES, "input_shape": [box] * 3})
    return model.eval()


def run(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def test_predict_csv_equals_a_direct_model_call(tmp_path) -> None:
    pool, ckpt, out = tmp_path / "pool.h5", tmp_path / "m.pt", tmp_path / "pred.csv"
    make_pool(pool, 23)
    model = make_model(ckpt, pool=pool)
    r = run(pool, "-m", ckpt, "-o", out, "--batch-size", "5", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    header, rows = read_csv(out)
    assert header == ["particle_id", "predicted_label", "confidence", *(f"p_{c}" for c in NAMES)]
    assert header[3:] == ["p_ribosome", "p_proteasome", "p_membrane"]
    with open_pool(pool) as p:
        ids, vols = list(p.particle_ids), p.read(np.arange(len(p)))
    assert [row[0] for row in rows] == ids  # every particle, in pool order, labelled ones too
    # slow obvious reference: one particle at a time, softmax written out by hand
    for row, vol in zip(rows, vols, strict=True):
        with torch.no_grad():
            logits = model(torch.from_numpy(vol)[None, None]).double()[0]
        prob = (logits.exp() / logits.exp().sum()).numpy()
        got = np.array(row[3:], dtype=float)
        np.testing.assert_allclose(got, prob, rtol=1e-5, atol=1e-6)
        assert row[1] == NAMES[int(prob.argmax())]
        assert float(row[2]) == pytest.approx(prob.max(), rel=1e-5)
    assert len({row[1] for row in rows}) > 1  # the model is not constant, so the check has teeth
    counts = {name: sum(row[1] == name for row in rows) for name in NAMES}
    assert r.stdout.strip() == f"wrote 23 predictions to {out} (" + ", ".join(
        f"{k} {v}" for k, v in counts.items()) + ")"

    again = tmp_path / "again.csv"
    r2 = run(pool, "-m", ckpt, "-o", again, "--batch-size", "64", "--json")
    assert r2.exit_code == 0, r2.stderr
    assert json.loads(r2.stdout)["counts"] == counts
    np.testing.assert_allclose(
        np.array([row[2:] for row in read_csv(again)[1]], float), np.array([row[2:] for row in rows], float),
        rtol=1e-5, atol=1e-6,
    )


def test_predict_streams_in_batches(tmp_path, monkeypatch) -> None:
    pool, ckpt, out = tmp_path / "pool.h5", tmp_path / "m.pt", tmp_path / "pred.csv"
    make_pool(pool, 30)
    make_model(ckpt)
    sizes: list[int] = []
    import cryoal.io.prefetch as reader

    real_read = reader.read_rows

    def spy(ds, indices):
        sizes.append(len(indices))
        return real_read(ds, indices)

    monkeypatch.setattr(reader, "read_rows", spy)
    monkeypatch.setattr(Pool, "read", lambda *a, **k: pytest.fail("whole-pool read"))
    predict_mod.predict_pool(pool, ckpt, out, batch_size=8, device="cpu")
    assert sizes == [8, 8, 8, 6]  # volumes are only ever read one batch at a time


def test_predict_output_is_atomic(tmp_path, monkeypatch) -> None:
    pool, ckpt, out = tmp_path / "pool.h5", tmp_path / "m.pt", tmp_path / "pred.csv"
    make_pool(pool, 20)
    make_model(ckpt)
    out.write_text("old\n")
    calls = {"n": 0}
    import cryoal.learn.inference as inference

    real = inference.predict_proba

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(inference, "predict_proba", failing)
    r = run(pool, "-m", ckpt, "-o", out, "--batch-size", "8")
    assert r.exit_code == 130
    assert out.read_text() == "old\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.mark.parametrize("case", ["box", "mode", "corrupt", "missing_model", "no_dir", "missing_pool"])
def test_predict_bad_input(tmp_path, case) -> None:
    pool, ckpt, out = tmp_path / "pool.h5", tmp_path / "m.pt", tmp_path / "pred.csv"
    make_model(ckpt)
    make_pool(pool, 4, box=12 if case == "box" else BOX, mode="image" if case == "mode" else "subtomogram")
    want = {
        "box": "trained on particles of shape (10, 10, 10)",
        "mode": "trained in subtomogram mode",
        "corrupt": "m.pt: truncated or not a cryoal checkpoint",
        "missing_model": "model file not found",
        "no_dir": "does not exist",
        "missing_pool": "pool file not found",
    }[case]
    if case == "corrupt":
        ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    if case == "missing_model":
        ckpt.unlink()
    if case == "no_dir":
        out = tmp_path / "nope" / "pred.csv"
    if case == "missing_pool":
        pool.unlink()
    r = run(pool, "-m", ckpt, "-o", out)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0], lines
    assert not out.exists()


def test_predict_proba_and_input_shapes() -> None:
    torch.manual_seed(0)
    model = build_model("rb3d", (8, 8, 8), 4, width=8).eval()
    vols = np.random.default_rng(0).normal(size=(3, 8, 8, 8)).astype(np.float32)
    assert to_model_input(model, vols, "cpu").shape == (3, 1, 8, 8, 8)
    assert to_model_input(model, torch.from_numpy(vols)[:, None], "cpu").shape == (3, 1, 8, 8, 8)
    p = predict_proba(model, vols, "cpu")
    assert p.shape == (3, 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(vols)[:, None]), 1).numpy()
    np.testing.assert_allclose(p, ref, rtol=1e-6, atol=1e-7)
    model.train()
    predict_proba(model, vols, "cpu")
    assert not model.training  # inference always runs in eval mode
