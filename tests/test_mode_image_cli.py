"""Image mode end to end through the CLI, on real data with real labels: scikit-learn's bundled
handwritten digits (1,797 8x8 images). ingest (NPY stack + manifest, PNG, TIFF, MRC stacks),
label, train on 200 labels (>= 90% on the other 1,597), predict, select with every scheme, benchmark."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch
from cli_helpers import SCHEMES, assert_one_error, cli
from PIL import Image

from cryoal import load_model, score
from cryoal.io.pool import open_pool
from cryoal.io.tables import read_table

pytestmark = pytest.mark.usefixtures("one_omp_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Digits as an NPY stack named by a manifest, ingested; 20 labels per class imported;
    a 2D CNN trained on those 200 and its predictions for the whole pool."""
    from sklearn.datasets import load_digits

    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    d = load_digits()
    root = tmp_path_factory.mktemp("digits")
    np.save(root / "digits.npy", d.images.astype(np.float32))
    ids = [f"d{i:04d}" for i in range(len(d.target))]
    (root / "digits.csv").write_text(
        "particle_id,path\n" + "".join(f"{pid},{i + 1}@digits.npy\n" for i, pid in enumerate(ids))
    )
    (root / "truth.csv").write_text(
        "particle_id,label\n" + "".join(f"{pid},{t}\n" for pid, t in zip(ids, d.target, strict=True))
    )
    rng = np.random.default_rng(0)
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(d.target == c), 20, replace=False)
                                     for c in range(10)]))
    (root / "seed.csv").write_text(
        "particle_id,label\n" + "".join(f"{ids[i]},{d.target[i]}\n" for i in chosen)
    )
    pool, model = root / "img.h5", root / "img.pt"
    r = cli("ingest", root / "digits.csv", "-o", pool, "--mode", "image")
    assert r.exit_code == 0, r.output
    r = cli("label", pool, root / "seed.csv")
    assert r.exit_code == 0, r.output
    # mirrored digits are other digits: no augmentation; all 200 labels train (no validation split)
    r = cli("train", pool, "-o", model, "--epochs", "15", "--batch-size", "16", "--val-fraction", "0",
            "--no-augment", "--device", "cpu", "--seed", "0")
    assert r.exit_code == 0, r.output
    r = cli("predict", pool, "-m", model, "-o", root / "pred.csv", "--device", "cpu")
    assert r.exit_code == 0, r.output
    mp.undo()
    return {"root": root, "pool": pool, "model": model, "ids": ids, "target": d.target, "chosen": chosen,
            "images": d.images}


def test_ingest_npy_manifest_makes_an_image_pool(digits):
    with open_pool(digits["pool"]) as p:
        assert p.mode == "image" and p.shape == (8, 8) and len(p) == 1797
        assert list(p.particle_ids[:2]) == ["d0000", "d0001"]
        v = digits["images"][5].astype(np.float64)
        np.testing.assert_allclose(p.read([5])[0], (v - v.mean()) / v.std(), atol=1e-5)
        assert int((p.labels >= 0).sum()) == 200


def test_digits_200_labels_reach_90_percent_on_the_rest(digits):
    pred = read_table(digits["root"] / "pred.csv")
    assert pred["particle_id"] == digits["ids"]
    rest = np.setdiff1d(np.arange(len(digits["ids"])), digits["chosen"])
    got = np.asarray(pred["predicted_label"])[rest].astype(int)
    accuracy = float((got == digits["target"][rest]).mean())
    assert accuracy >= 0.90, accuracy
    _, meta = load_model(digits["model"])
    assert meta["mode"] == "image" and meta["arch"] == "cnn2d" and meta["input_shape"] == [8, 8]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_select_every_scheme_in_image_mode(digits, scheme, tmp_path):
    out = tmp_path / "sel.csv"
    ranked = scheme in ("expected", "entropy", "max-entropy", "margin", "least-confidence")
    r = cli("select", digits["pool"], "-m", digits["model"], "--scheme", scheme, "-n", "8", "-o", out,
            "--pool-subset", "64", "--device", "cpu", "--mc-passes", "4",
            *(("--pick", "top") if ranked else ()))  # top: the scores come out high to low
    assert r.exit_code == 0, r.output
    t = read_table(out)
    assert list(t) == ["rank", "particle_id", "score", "predicted_label", "confidence", "source", "tomo",
                       "x", "y", "z", "label"]
    assert t["rank"] == [str(i) for i in range(1, 9)] and len(set(t["particle_id"])) == 8
    labelled = {digits["ids"][i] for i in digits["chosen"]}
    assert not labelled & set(t["particle_id"])
    if ranked:
        # the written scores are what the Python API gives for those images, ranked high to low
        model, _ = load_model(digits["model"])
        with open_pool(digits["pool"]) as p:
            batch = p.read(p.index_of(t["particle_id"]))
        want = score(model, batch, scheme)
        np.testing.assert_allclose([float(s) for s in t["score"]], want, rtol=1e-4)
        assert np.all(np.diff(want) <= 1e-9)


def test_benchmark_in_image_mode(digits, tmp_path):
    out = tmp_path / "bench"
    r = cli("benchmark", digits["pool"], "--truth", digits["root"] / "truth.csv", "-o", out,
            "--schemes", "expected,coreset", "--seeds", "1", "--initial", "40", "--budget", "20",
            "--cycles", "2", "--epochs", "2", "--device", "cpu", "--test-fraction", "0.5")
    assert r.exit_code == 0, r.output
    curves = read_table(out / "curves.csv")
    assert sorted(zip(curves["scheme"], curves["cycle"], strict=True)) == [
        ("coreset", "0"), ("coreset", "1"), ("expected", "0"), ("expected", "1")]
    assert curves["n_labeled"].count("60") == 2
    assert all(0.0 <= float(a) <= 1.0 for a in curves["accuracy"])
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["arch"] == "cnn2d" and run["metric"] == "accuracy"
    picks = read_table(out / "selections.csv")
    assert len(picks["particle_id"]) == 40


def test_png_tiff_and_mrc_stack_ingest(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, size=(5, 12, 10)).astype(np.uint8)
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        Image.fromarray(imgs[i]).save(d / f"p{i}.png")
    Image.fromarray(imgs[2]).save(d / "t.tif", save_all=True,
                                  append_images=[Image.fromarray(imgs[3])])
    with mrcfile.new(d / "s.mrcs") as m:
        m.set_data(imgs[4:5].astype(np.float32))
    pool = tmp_path / "p.h5"
    r = cli("ingest", d, "-o", pool, "--mode", "image")
    assert r.exit_code == 0, r.output
    with open_pool(pool) as p:
        assert p.shape == (12, 10) and list(p.particle_ids) == ["p0", "p1", "s", "t#1", "t#2"]
        for row, k in enumerate([0, 1, 4, 2, 3]):
            v = imgs[k].astype(np.float64)
            np.testing.assert_allclose(p.read([row])[0], (v - v.mean()) / v.std(), atol=1e-5)


def test_bad_image_inputs_one_line_nothing_written(tmp_path, digits):
    np.save(tmp_path / "vols.npy", np.zeros((2, 4, 8, 8), np.float32))
    r = cli("ingest", tmp_path / "vols.npy", "-o", tmp_path / "a.h5", "--mode", "image")
    assert_one_error(r, "vols.npy", "2D images")
    assert not (tmp_path / "a.h5").exists()
    # a 2D image model given a 3D (subtomogram) pool
    vol = tmp_path / "v.mrc"
    with mrcfile.new(vol) as m:
        m.set_data(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32))
    r = cli("ingest", vol, "-o", tmp_path / "sub.h5")
    assert r.exit_code == 0, r.output
    for args in (("select", tmp_path / "sub.h5", "-m", digits["model"], "-n", "1", "-o", tmp_path / "s.csv"),
                 ("predict", tmp_path / "sub.h5", "-m", digits["model"], "-o", tmp_path / "s.csv")):
        assert_one_error(cli(*args), "image mode", "subtomogram")
        assert not (tmp_path / "s.csv").exists()


def test_image_augmentation_is_a_turn_mirror_and_small_roll():
    from cryoal.modes.image import augment_images, shift_for

    assert shift_for((8, 8)) == 0 and shift_for((32, 40)) == 2 and shift_for((16, 64)) == 1
    gen = torch.Generator().manual_seed(0)
    for size, most in ((32, 2), (8, 0)):
        x = torch.randn(6, 1, size, size)
        out = augment_images(x, gen)
        shifts = [(dy, dx) for dy in range(-most, most + 1) for dx in range(-most, most + 1)]
        for i in range(6):
            turned = [torch.rot90(x[i], k, (-2, -1)) for k in range(4)]
            dihedral = turned + [torch.flip(t, (-1,)) for t in turned]
            candidates = [torch.roll(t, s, (-2, -1)) for t in dihedral for s in shifts]
            assert any(torch.equal(out[i], c) for c in candidates)
