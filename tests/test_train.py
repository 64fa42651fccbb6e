"""Training: stratified split, metrics, BatchNorm recalibration, wedge-safe augmentation,
learning on easy data, determinism, best-epoch keeping, early stopping and `cryoal train`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import cryoal.learn.train as train_mod
from cryoal.cli import app
from cryoal.errors import CryoalError
from cryoal.io.pool import PoolWriter
from cryoal.learn.checkpoint import load_model
from cryoal.learn.metrics import confusion_matrix, per_class_accuracy
from cryoal.learn.train import fit, recalibrate_batchnorm, stratified_split
from cryoal.models import DEFAULT_ARCH
from cryoal.modes import get_mode
from cryoal.modes.augment import augment_subtomograms

NAMES = ["ball", "pair"]

pytestmark = pytest.mark.usefixtures("one_omp_thread")


def blobs(n: int, box: int = 16, seed: int = 0, noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Two easy classes: one Gaussian ball, or two smaller balls side by side along x; plus noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:box, :box, :box] - box / 2 + 0.5
    ball = np.exp(-(x**2 + y**2 + z**2) / (2 * 2.5**2))
    pair = sum(np.exp(-((x - s) ** 2 + y**2 + z**2) / (2 * 1.5**2)) for s in (-3, 3))
    labels = np.arange(n) % 2
    vols = np.stack([(ball, pair)[c] + rng.normal(0, noise, ball.shape) for c in labels])
    vols = (vols - vols.mean(axis=(1, 2, 3), keepdims=True)) / vols.std(axis=(1, 2, 3), keepdims=True)
    return vols.astype(np.float32), labels


def make_pool(path: Path, labels: list[int] | np.ndarray, box: int = 12, names=NAMES) -> None:
    n = len(labels)
    x, _ = blobs(n, box=box)
    with PoolWriter(path, shape=(box,) * 3, class_names=names) as w:
        w.add(x, [f"p{i:03d}" for i in range(n)], [f"s{i}.mrc" for i in range(n)], labels=labels)


def run(*args):
    return CliRunner().invoke(app, ["train", *map(str, args)])


# -- split and metrics -------------------------------------------------------------------------


def test_stratified_split_small_class_rule() -> None:
    counts = {0: 10, 1: 2, 2: 1, 3: 5, 4: 3}
    labels = np.random.default_rng(1).permutation(np.repeat(list(counts), list(counts.values())))
    train, val = stratified_split(labels, 0.2, seed=0)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(labels.size))
    for c, n in counts.items():  # the documented rule, written out per class
        want_val = 0 if n < 2 else min(n - 1, max(1, round(0.2 * n)))
        assert (labels[val] == c).sum() == want_val, c
        assert (labels[train] == c).sum() == n - want_val
    again = stratified_split(labels, 0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again, strict=True))
    other = stratified_split(labels, 0.2, seed=5)
    assert not np.array_equal(val, other[1])
    t0, v0 = stratified_split(labels, 0.0, seed=0)
    assert v0.size == 0 and np.array_equal(t0, np.arange(labels.size))
    with pytest.raises(CryoalError, match="--val-fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_confusion_matrix_against_loop() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    ref = np.zeros((4, 4), int)
    for a, b in zip(y, p, strict=True):
        ref[a, b] += 1
    cm = confusion_matrix(y, p, 4)
    assert np.array_equal(cm, ref)
    acc = per_class_accuracy(cm)
    assert acc == pytest.approx([ref[i, i] / ref[i].sum() for i in range(4)])
    assert per_class_accuracy(np.array([[0, 0], [1, 1]])) == [None, 0.5]


def test_cpu_threads_follow_the_cores_unless_told(monkeypatch) -> None:
    from cryoal.learn.device import available_cpus, use_all_cpu_cores

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert use_all_cpu_cores() == available_cpus() == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert use_all_cpu_cores() == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_recalibrate_batchnorm_gives_exact_statistics() -> None:
    torch.manual_seed(0)
    mode = get_mode("subtomogram")
    model = mode.build_model("resnet3d", (8, 8, 8), 2, width=4)
    x = np.random.default_rng(0).normal(2.0, 3.0, (6, 8, 8, 8)).astype(np.float32)
    recalibrate_batchnorm(model, x, mode, torch.device("cpu"), batch_size=6, amp_dtype=None)
    conv, bn = model.trunk[0][0], model.trunk[0][1]
    with torch.no_grad():
        act = conv(torch.from_numpy(x).unsqueeze(1))  # slow reference: the first BN's input
    torch.testing.assert_close(bn.running_mean, act.mean(dim=(0, 2, 3, 4)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, act.var(dim=(0, 2, 3, 4), unbiased=True), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training and not bn.training


# -- augmentation ------------------------------------------------------------------------------


def _cone_energy(vol: torch.Tensor, tilt: float = 60.0) -> float:
    """Fourier energy where |kz| exceeds both |kx|·tan and |ky|·tan: missing for either tilt axis."""
    box = vol.shape[-1]
    k = torch.fft.fftfreq(box)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    t = np.tan(np.radians(tilt))
    cone = (kz.abs() > kx.abs() * t) & (kz.abs() > ky.abs() * t)
    return float((torch.fft.fftn(vol).abs() ** 2)[cone].sum() / (torch.fft.fftn(vol).abs() ** 2).sum())


def test_augmentation_keeps_the_missing_wedge_on_the_beam_axis() -> None:
    box = 16
    k = torch.fft.fftfreq(box)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    sampled = kz.abs() <= kx.abs() * np.tan(np.radians(60))  # tilt axis y (conventions)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(8, 1, box, box, box, generator=gen)
    wedged = torch.fft.ifftn(torch.fft.fftn(noise) * sampled).real
    assert _cone_energy(wedged[0, 0]) < 1e-10
    out = augment_subtomograms(wedged, torch.Generator().manual_seed(1))
    assert out.shape == wedged.shape
    for i in range(8):  # rotations/flips/shifts permute voxels and keep the kz cone empty
        assert torch.equal(out[i].flatten().sort().values, wedged[i].flatten().sort().values)
        assert _cone_energy(out[i, 0]) < 1e-10
    # the test can fail: a 90-degree turn about x tilts the wedge off the beam axis
    assert _cone_energy(torch.rot90(wedged[0, 0], 1, dims=(0, 1))) > 0.05


def test_augmentation_is_a_proper_rotation_plus_shift() -> None:
    """Every output is one of the 8 rotations that keep the z axis (4 about z, times a 180-degree
    turn about x), rolled by at most 2 voxels; never a mirror image."""
    box = 8
    x = torch.randn(24, 1, box, box, box, generator=torch.Generator().manual_seed(0))
    out = augment_subtomograms(x, torch.Generator().manual_seed(3))
    seen = set()
    for i in range(24):
        matches = []
        for k in range(4):
            for flip in (False, True):
                v = torch.rot90(x[i, 0], k, dims=(1, 2))
                v = torch.flip(v, dims=(0, 1)) if flip else v
                for s in np.ndindex(5, 5, 5):
                    shift = tuple(int(a) - 2 for a in s)
                    if torch.equal(torch.roll(v, shift, dims=(0, 1, 2)), out[i, 0]):
                        matches.append((k, flip))
        assert matches, f"sample {i} is not a rotation about z / flip about x plus a shift"
        seen.update(matches)
    assert len(seen) >= 6  # the random draws cover the group
    again = augment_subtomograms(x, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


# -- fitting -------------------------------------------------------------------------------------


def test_fit_beats_chance_on_easy_data() -> None:
    x, y = blobs(64, seed=0)
    xv, yv = blobs(32, seed=1)
    model, metrics = fit(x, y, xv, yv, arch=DEFAULT_ARCH, n_classes=2, epochs=6, batch_size=16,
                         seed=0, device="cpu", class_names=NAMES)
    assert metrics["val_accuracy"] >= 0.85, metrics["history"]
    # the reported accuracy is that of the returned model, recomputed sample by sample
    with torch.no_grad():
        pred = np.array([int(model(torch.from_numpy(v)[None, None]).argmax()) for v in xv])
    assert (pred == yv).mean() == pytest.approx(metrics["val_accuracy"])
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum() == 32 and np.trace(cm) == round(metrics["val_accuracy"] * 32)
    assert metrics["n_train_per_class"] == [32, 32] and metrics["n_val_per_class"] == [16, 16]
    best = metrics["history"][metrics["best_epoch"] - 1]
    assert best["val_accuracy"] == metrics["val_accuracy"]
    assert metrics["val_accuracy"] == max(h["val_accuracy"] for h in metrics["history"])


def _tiny_fit(seed: int, **kw):
    x, y = blobs(12, box=8, seed=0)
    xv, yv = blobs(6, box=8, seed=1)
    return fit(x, y, xv, yv, arch="rb3d", n_classes=2, epochs=2, batch_size=4, seed=seed, device="cpu",
               arch_kwargs={"width": 8}, **kw)


def test_fit_is_reproducible_under_seed() -> None:
    (a, ma), (b, mb), (c, _) = _tiny_fit(0), _tiny_fit(0), _tiny_fit(1)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    assert [h["train_loss"] for h in ma["history"]] == [h["train_loss"] for h in mb["history"]]
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values(),
                                                         strict=True))


def test_early_stopping_keeps_the_best_epoch(monkeypatch) -> None:
    """Validation accuracies 0.5, 0.8, 0.6, 0.7 with patience 2: stop after epoch 4, keep epoch 2."""
    script = iter([0.5, 0.8, 0.6, 0.7])
    snapshots: list[dict] = []
    real_eval = train_mod._evaluate

    def fake_eval(model, x, y, *args):
        loss, _ = real_eval(model, x, y, *args)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        acc = next(script, None)
        if acc is None:  # the final evaluation of the kept weights
            acc = 0.8
        pred = np.array(y).copy()
        pred[: round(len(y) * (1 - acc))] = 1 - pred[: round(len(y) * (1 - acc))]
        return loss, pred

    monkeypatch.setattr(train_mod, "_evaluate", fake_eval)
    x, y = blobs(10, box=8, seed=0)
    xv, yv = blobs(10, box=8, seed=1)
    model, metrics = fit(x, y, xv, yv, arch="rb3d", n_classes=2, epochs=20, batch_size=5, patience=2,
                         seed=0, device="cpu", arch_kwargs={"width": 8})
    assert metrics["epochs_run"] == 4 and metrics["stopped_early"] and metrics["best_epoch"] == 2
    assert [h["val_accuracy"] for h in metrics["history"]] == [0.5, 0.8, 0.6, 0.7]
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k]), k


def test_no_validation_keeps_the_last_epoch() -> None:
    x, y = blobs(8, box=8)
    model, metrics = fit(x, y, None, None, arch="rb3d", n_classes=2, epochs=3, batch_size=4, seed=0,
                         device="cpu", arch_kwargs={"width": 8})
    assert metrics["val_accuracy"] is None and metrics["evaluated_on"] == "training"
    assert metrics["epochs_run"] == 3 and metrics["best_epoch"] == 3 and not metrics["stopped_early"]
    assert np.array(metrics["confusion_matrix"]).sum() == 8


def test_fine_tuning_starts_from_the_given_model() -> None:
    first, _ = _tiny_fit(0)
    start = {k: v.clone() for k, v in first.state_dict().items()}
    tuned, metrics = _tiny_fit(0, init_model=first, lr=1e-9)
    assert tuned is first and metrics["arch"] == "rb3d"
    conv = "trunk.0.0.weight"
    assert torch.allclose(tuned.state_dict()[conv], start[conv], atol=1e-6)


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_train_json_and_checkpoint(tmp_path) -> None:
    pool = tmp_path / "pool.h5"
    make_pool(pool, [0, 1] * 8 + [-1] * 4)
    out = tmp_path / "model.pt"
    r = run(pool, "-o", out, "--epochs", "2", "--batch-size", "8", "--json", "--log-json", tmp_path / "log")
    assert r.exit_code == 0, r.stderr
    metrics = json.loads(r.stdout)
    assert metrics["output"] == str(out) and metrics["n_train"] == 12 and metrics["n_val"] == 4
    assert metrics["class_names"] == NAMES and len(metrics["history"]) == metrics["epochs_run"]
    assert "epoch   1/2" in r.stderr
    model, meta = load_model(out)
    assert meta["arch"] == DEFAULT_ARCH and meta["class_names"] == NAMES and meta["box"] == 12
    assert meta["input_shape"] == [12, 12, 12] and meta["mode"] == "subtomogram"
    assert meta["metrics"]["val_accuracy"] == metrics["val_accuracy"]
    assert sorted(meta["val_ids"] + meta["train_ids"]) == [f"p{i:03d}" for i in range(16)]
    events = [json.loads(line)["event"] for line in (tmp_path / "log").read_text().splitlines()]
    assert events == ["epoch"] * metrics["epochs_run"] + ["done"]
    # --seed: a second CPU run gives the same weights (the checkpoint differs only in timings)
    again = tmp_path / "again.pt"
    assert run(pool, "-o", again, "--epochs", "2", "--batch-size", "8").exit_code == 0
    w1 = torch.load(out, weights_only=True)["state_dict"]
    w2 = torch.load(again, weights_only=True)["state_dict"]
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)

    table = run(pool, "-o", out, "--epochs", "1", "--arch", "rb3d", "--val-fraction", "0")
    assert table.exit_code == 0, table.stderr
    assert "confusion matrix (training set" in table.stdout and "kept the last epoch" in table.stdout
    assert load_model(out)[1]["arch"] == "rb3d"


@pytest.mark.parametrize(
    ("labels", "extra", "message", "code"),
    [  # the pool's labels are the data's fault (exit 1); a bad option value is a usage error (2)
        ([-1] * 6, [], "no labelled particles", 1),
        ([1, 1, 1, -1, -1, -1], [], "needs at least 2 classes with labels, found only 'pair'", 1),
        ([0, 1, -1, -1, -1, -1], [], "too few labels for a validation split.*--val-fraction 0", 1),
        ([0, 1, 0, 1, 0, 1], ["--arch", "vgg"], "--arch: unknown architecture 'vgg'", 2),
        ([0, 1, 0, 1, 0, 1], ["--device", "tpu"], "--device must be one of auto, cpu, cuda.*got 'tpu'", 2),
    ],
)
def test_cli_bad_input(tmp_path, labels, extra, message, code) -> None:
    pool = tmp_path / "pool.h5"
    make_pool(pool, labels)
    r = run(pool, "-o", tmp_path / "m.pt", "--epochs", "1", *extra)
    assert r.exit_code == code
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "m.pt").exists()


def test_cli_output_dir_missing_fails_before_training(tmp_path) -> None:
    pool = tmp_path / "pool.h5"
    make_pool(pool, [0, 1] * 4)
    r = run(pool, "-o", tmp_path / "no" / "m.pt")
    assert r.exit_code == 1 and "does not exist" in r.stderr and "epoch" not in r.stderr


def test_cli_one_label_per_class_trains_with_val_fraction_zero(tmp_path) -> None:
    pool = tmp_path / "pool.h5"
    make_pool(pool, [0, 1, -1, -1])
    r = run(pool, "-o", tmp_path / "m.pt", "--epochs", "1", "--val-fraction", "0", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["n_train"] == 2


# -- devices, mixed precision, batch size ---------------------------------------------------------


def test_resolve_device_and_amp_settings(monkeypatch) -> None:
    from cryoal.learn.device import resolve_device

    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device("CPU") == torch.device("cpu")
    assert train_mod._amp_settings(torch.device("cpu")) == (None, False)  # CPU trains in float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train_mod._amp_settings(torch.device("cuda")) == (torch.bfloat16, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert train_mod._amp_settings(torch.device("cuda")) == (torch.float16, True)  # fp16 needs a GradScaler
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CryoalError, match="CUDA is not available"):
        resolve_device("cuda")


def test_mixed_precision_path_trains(monkeypatch) -> None:
    """The autocast branch of `fit` (what CUDA runs) end to end, here with CPU float16 autocast:
    training, BatchNorm recalibration and evaluation under autocast give finite float32 metrics.

    float16, not bfloat16: torch 2.13's CPU bfloat16 kernels are not deterministic even on one
    thread, and under load gave NaN losses in about 1 run in 18 (a CPU kernel issue; cryoal trains
    in float32 on CPU, so only this test would ever autocast there). CPU float16 was
    deterministic in every run. (The GradScaler it asks for is CUDA-only: `fit` leaves it off here.)"""
    monkeypatch.setattr(train_mod, "_amp_settings", lambda dev: (torch.float16, True))
    x, y = blobs(16, box=8, seed=0)
    xv, yv = blobs(8, box=8, seed=1)
    model, metrics = fit(x, y, xv, yv, arch="rb3d", n_classes=2, epochs=2, batch_size=8, seed=0,
                         device="cpu", arch_kwargs={"width": 8})
    assert metrics["amp"] == "float16" and metrics["epochs_run"] == 2
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in metrics["history"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves weights float32


def test_batch_size_below_two_is_refused(tmp_path) -> None:
    x, y = blobs(8, box=8)
    with pytest.raises(CryoalError, match="--batch-size 1: must be at least 2"):
        fit(x, y, None, None, arch="rb3d", n_classes=2, epochs=1, batch_size=1, device="cpu")
    pool = tmp_path / "pool.h5"
    make_pool(pool, [0, 1] * 4)
    r = run(pool, "-o", tmp_path / "m.pt", "--batch-size", "1")
    assert r.exit_code == 2 and not (tmp_path / "m.pt").exists()  # a usage error, caught by the parser


def test_cli_epoch_line_shows_the_val_loss_that_breaks_ties(tmp_path) -> None:
    """The best epoch can move while val accuracy is flat (ties go to the lower val loss): each
    epoch's line shows that loss, and --help says how ties are broken."""
    pool = tmp_path / "pool.h5"
    make_pool(pool, [0, 1] * 8)
    r = run(pool, "-o", tmp_path / "m.pt", "--epochs", "3", "--batch-size", "8", "--json")
    assert r.exit_code == 0, r.stderr
    history = json.loads(r.stdout)["history"]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == len(history) == 3
    for line, h in zip(lines, history, strict=True):
        assert f"val loss {h['val_loss']:.4f}  val acc {h['val_accuracy']:.3f}" in line, line
        assert f"best epoch {h['best_epoch']} " in line
    help_text = " ".join(run("--help").stdout.split())
    assert "ties go to the lower validation loss" in help_text
