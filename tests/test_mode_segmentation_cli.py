"""Segmentation mode end to end through the CLI on simulated membranes: ingest images + masks,
label (mask import), train a U-Net, select with every scheme (entropy = a per-sample reference
loop), predict masks (NPY and MRC) + mean-confidence CSV, benchmark in mIoU, and the bad inputs."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import torch
from cli_helpers import SCHEMES, assert_one_error, cli
from PIL import Image
from script_helpers import load_benchmark_script

from cryoal import load_model, score
from cryoal.io.images import read_mask
from cryoal.io.masks import mask_labels
from cryoal.io.pool import open_pool
from cryoal.io.tables import read_table
from cryoal.simulate.membranes import simulate_membranes

pytestmark = pytest.mark.usefixtures("one_omp_thread")


@pytest.fixture(scope="module")
def mem(tmp_path_factory):
    """40 simulated 32x32 membrane images, masks for the first 16, ingested; a U-Net trained."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    root = tmp_path_factory.mktemp("mem")
    r = cli("simulate", root / "mem", "--membranes", "40", "--box", "32", "--snr", "1", "--seed-labels", "16")
    assert r.exit_code == 0, r.output
    pool, model = root / "seg.h5", root / "seg.pt"
    r = cli("ingest", root / "mem" / "images.csv", "-o", pool, "--mode", "segmentation",
            "--classes", "background,membrane")
    assert r.exit_code == 0, r.output
    r = cli("train", pool, "-o", model, "--epochs", "4", "--batch-size", "8", "--device", "cpu",
            "--val-fraction", "0.25")
    assert r.exit_code == 0, r.output
    mp.undo()
    return {"root": root, "dir": root / "mem", "pool": pool, "model": model}


def test_ingest_reads_images_and_masks(mem):
    manifest = read_table(mem["dir"] / "images.csv")
    with open_pool(mem["pool"]) as p:
        assert p.mode == "segmentation" and p.shape == (32, 32) and len(p) == 40
        assert p.class_names == ["background", "membrane"]
        masks = p.read(slice(None), dataset="masks")
        for i in (0, 15):
            np.testing.assert_array_equal(masks[i], read_mask(mem["dir"] / manifest["mask_path"][i]))
        assert (masks[16:] == -1).all()
        np.testing.assert_array_equal(p.labels, mask_labels(masks))
        assert int((p.labels >= 0).sum()) == 16
    _, meta = load_model(mem["model"])
    assert meta["mode"] == "segmentation" and meta["arch"] == "unet"
    assert meta["metrics"]["mean_iou"] is not None


def test_ingest_masks_dir_ignore_index_and_3d_patches(tmp_path):
    img, masks = simulate_membranes(3, 16, 3, snr=2.0, seed=0)
    (tmp_path / "im").mkdir()
    (tmp_path / "mk").mkdir()
    for i in range(3):
        np.save(tmp_path / "im" / f"v{i}.npy", img[i])
    m = masks[0].astype(np.int16)
    m[0] = 9  # 9 = unlabelled here
    np.save(tmp_path / "mk" / "v0_mask.npy", m)
    with mrcfile.new(tmp_path / "mk" / "v2.mrc") as f:
        f.set_data(masks[2].astype(np.int8))
    pool = tmp_path / "p3.h5"
    r = cli("ingest", tmp_path / "im", "-o", pool, "--mode", "segmentation", "--masks", tmp_path / "mk",
            "--ignore-index", "9", "--box", "12")
    assert r.exit_code == 0, r.output
    with open_pool(pool) as p:
        assert p.shape == (12, 12, 12) and list(p.particle_ids) == ["v0", "v1", "v2"]
        got = p.read(slice(None), dataset="masks")
        want0 = np.where(m == 9, -1, m)[2:14, 2:14, 2:14]
        np.testing.assert_array_equal(got[0], want0)
        assert (got[1] == -1).all() and p.labels[1] == -1
        np.testing.assert_array_equal(got[2], masks[2][2:14, 2:14, 2:14])


def test_label_imports_masks(mem, tmp_path):
    pool = tmp_path / "seg.h5"
    pool.write_bytes(mem["pool"].read_bytes())
    truth = read_table(mem["dir"] / "truth_masks.csv")
    rows = "".join(f"{truth['particle_id'][i]},{mem['dir'] / truth['mask_path'][i]}\n" for i in (20, 21, 22))
    (tmp_path / "m.csv").write_text("particle_id,mask_path\n" + rows)
    r = cli("label", pool, tmp_path / "m.csv")
    assert r.exit_code == 0, r.output
    assert "masks for 3 images" in r.stdout
    with open_pool(pool) as p:
        got = p.read([20, 21, 22], dataset="masks")
        for k, i in enumerate((20, 21, 22)):
            np.testing.assert_array_equal(got[k], read_mask(mem["dir"] / truth["mask_path"][i]))
        assert int((p.labels >= 0).sum()) == 19 and set(p.label_rounds[[20, 21, 22]]) == {1}


def _entropy_reference(model, x) -> np.ndarray:
    """Per sample: one backward of the mean pixel entropy, the global L2 norm of its gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i : i + 1]).double(), dim=1)
        h = -(logp.exp() * logp).sum(1).mean()
        grads = torch.autograd.grad(h, params)
        out.append(float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads))))
    return np.asarray(out)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_select_every_scheme_in_segmentation_mode(mem, scheme, tmp_path):
    out = tmp_path / "sel.csv"
    r = cli("select", mem["pool"], "-m", mem["model"], "--scheme", scheme, "-n", "6", "-o", out,
            "--device", "cpu", "--mc-passes", "3", "--samples", "4")
    assert r.exit_code == 0, r.output
    t = read_table(out)
    assert len(t["rank"]) == 6 and len(set(t["particle_id"])) == 6
    assert all(int(pid[3:]) > 16 for pid in t["particle_id"])  # unannotated images only
    conf = np.asarray(t["confidence"], float)
    assert ((conf >= 0.5) & (conf <= 1.0)).all()  # mean top-class probability of 2 classes
    if scheme in ("entropy", "max-entropy", "margin", "least-confidence"):
        model, _ = load_model(mem["model"])
        with open_pool(mem["pool"]) as p:
            batch = p.read(p.index_of(t["particle_id"]))
        got = np.asarray(t["score"], float)
        np.testing.assert_allclose(got, score(model, batch, scheme), rtol=1e-4)
        if scheme == "entropy":
            np.testing.assert_allclose(got, _entropy_reference(model, torch.from_numpy(batch)[:, None]),
                                       rtol=1e-4)
        if scheme == "max-entropy":  # the pixel mean of the per-pixel entropy, by a plain loop
            with torch.no_grad():
                p = torch.softmax(model(torch.from_numpy(batch)[:, None]).double(), dim=1).numpy()
            want = [np.mean([-(p[b, :, i, j] * np.log(p[b, :, i, j])).sum() for i in range(32)
                             for j in range(32)]) for b in range(len(p))]
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sampled_expected_is_reproducible_and_depends_on_samples(mem, tmp_path):
    files = []
    for k, samples in enumerate(("8", "8", "2")):
        out = tmp_path / f"e{k}.csv"
        r = cli("select", mem["pool"], "-m", mem["model"], "-n", "0", "-o", out, "--device", "cpu",
                "--samples", samples)
        assert r.exit_code == 0, r.output
        files.append(out.read_text())
    assert files[0] == files[1] and files[0] != files[2]
    assert_one_error(cli("select", mem["pool"], "-m", mem["model"], "-n", "1", "-o", tmp_path / "x.csv",
                         "--samples", "0"), "--samples must be at least 1", code=2)


@pytest.mark.parametrize("suffix", [".npy", ".mrc"])
def test_predict_writes_masks_and_mean_confidence(mem, tmp_path, suffix):
    out, masks = tmp_path / "pred.csv", tmp_path / f"masks{suffix}"
    r = cli("predict", mem["pool"], "-m", mem["model"], "-o", out, "--masks", masks, "--device", "cpu")
    assert r.exit_code == 0, r.output
    got = np.load(masks) if suffix == ".npy" else mrcfile.read(masks)
    model, _ = load_model(mem["model"])
    with open_pool(mem["pool"]) as p:
        x = torch.from_numpy(p.read(slice(None)))[:, None]
        ids = list(p.particle_ids)
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), dim=1).numpy()
    np.testing.assert_array_equal(got, probs.argmax(1))
    t = read_table(out)
    assert t["particle_id"] == ids and list(t)[:2] == ["particle_id", "mean_confidence"]
    np.testing.assert_allclose(np.asarray(t["mean_confidence"], float), probs.max(1).mean((1, 2)), rtol=1e-5)


def test_benchmark_reports_mean_iou(mem, tmp_path):
    out = tmp_path / "bench"
    r = cli("benchmark", mem["pool"], "--truth", mem["dir"] / "truth_masks.csv", "-o", out,
            "--schemes", "entropy,random", "--seeds", "1", "--initial", "8", "--budget", "6", "--cycles", "2",
            "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--test-fraction", "0.3")
    assert r.exit_code == 0, r.output
    assert "mean IoU" in r.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["metric"] == "mean_iou" and run["options"]["arch"] == "unet"
    curves = read_table(out / "curves.csv")
    assert len(curves["scheme"]) == 4 and all(0 <= float(a) <= 1 for a in curves["accuracy"])


def test_unet_on_membranes_beats_all_background():
    # the procedure of the documented figure (benchmarks/image_modes.py): 32 train, 40 test images
    unet, background = load_benchmark_script("image_modes").unet_miou(1.0)
    assert unet > background + 0.2, (unet, background)
    assert unet > 0.6


def test_bad_segmentation_inputs(mem, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    np.save(d / "a.npy", np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32))
    Image.fromarray(np.zeros((16, 12), np.uint8)).save(d / "a_mask.png")
    (d / "m.csv").write_text("particle_id,path,mask_path\na,a.npy,a_mask.png\n")
    # mask shape differs from its image
    r = cli("ingest", d / "m.csv", "-o", tmp_path / "x.h5", "--mode", "segmentation")
    assert_one_error(r, "a_mask.png", "differs from its image")
    assert not (tmp_path / "x.h5").exists()
    # class id out of range of --classes
    Image.fromarray(np.full((16, 16), 2, np.uint8)).save(d / "a_mask.png")
    r = cli("ingest", d / "m.csv", "-o", tmp_path / "x.h5", "--mode", "segmentation", "--classes", "bg,fg")
    assert_one_error(r, "a_mask.png", "class id 2", "out of range")
    assert not (tmp_path / "x.h5").exists()
    # label: out-of-range class id and a wrong shape leave the pool unchanged
    pool = tmp_path / "seg.h5"
    pool.write_bytes(mem["pool"].read_bytes())
    before = pool.read_bytes()
    Image.fromarray(np.full((32, 32), 3, np.uint8)).save(d / "m3.png")
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(d / "small.png")
    cases = (("m3.png", ("class id 3", "out of range")), ("small.png", ("differs from its image",)))
    for name, words in cases:
        (d / "l.csv").write_text(f"particle_id,mask_path\nmem0030,{name}\n")
        assert_one_error(cli("label", pool, d / "l.csv"), name, *words)
        assert pool.read_bytes() == before
    # 2D and 3D data in one pool, and 3D patches given to the 2D U-Net
    np.save(d / "v.npy", np.zeros((16, 16, 16), np.float32))
    r = cli("ingest", d / "a.npy", d / "v.npy", "-o", tmp_path / "y.h5", "--mode", "segmentation")
    assert_one_error(r, "v.npy", "3D item", "2D")
    assert not (tmp_path / "y.h5").exists()
    img, _ = simulate_membranes(2, 32, 3, snr=1.0, seed=0)
    for i in range(2):
        np.save(d / f"p{i}.npy", img[i])
    r = cli("ingest", d / "p0.npy", d / "p1.npy", "-o", tmp_path / "3d.h5", "--mode", "segmentation")
    assert r.exit_code == 0, r.output
    for args in (("predict", tmp_path / "3d.h5", "-m", mem["model"], "-o", tmp_path / "o.csv"),
                 ("select", tmp_path / "3d.h5", "-m", mem["model"], "-n", "1", "-o", tmp_path / "o.csv")):
        assert_one_error(cli(*args), "2D model", "3D data")
        assert not (tmp_path / "o.csv").exists() and not (tmp_path / "o_masks.npy").exists()


def test_python_score_api_on_a_unet_every_scheme():
    from cryoal.models.unet import build_segmentation_model
    from cryoal.scoring.segmentation import dense_gradnorm_scores

    torch.manual_seed(0)
    model = build_segmentation_model("unet", (16, 16), 2).eval()
    x = torch.randn(5, 16, 16)
    for scheme in SCHEMES:
        s = score(model, x, scheme, samples=4, mc_passes=3)
        assert s.shape == (5,) and np.isfinite(s).all(), scheme
    np.testing.assert_array_equal(score(model, x, "expected", seed=1), score(model, x, "expected", seed=1))
    want = dense_gradnorm_scores(model, x[:, None], ("entropy",))[0]["entropy"]
    np.testing.assert_allclose(score(model, x, "entropy"), want, rtol=1e-6)
