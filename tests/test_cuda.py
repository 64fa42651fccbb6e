"""The CUDA paths: gradient-norm scoring, `select`, `train --device auto` (AMP), `predict` and NCCL.

Every test here is marked `cuda` and skipped without a GPU, so CI skips them; on a GPU machine run
`pytest -m cuda`. `CRYOAL_CUDA_TESTS_ON_CPU=1` runs the same tests with the CPU standing in for
the GPU, to check their logic where there is none: then only what is CUDA by nature (the AMP
dtype, the NCCL backend) is not asserted.

Reference points: the float64 per-sample loop (`cryoal.scoring.reference`) on a float64 CPU copy
of the model, and the same command run with `--device cpu`.
"""

from __future__ import annotations

import copy
import csv
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli
from model_helpers import randomise_batchnorm
from test_distributed_select import make_pool as make_select_pool

from cryoal.models import ARCHS, build_model

ON_CPU = os.environ.get("CRYOAL_CUDA_TESTS_ON_CPU", "") == "1"
REAL = torch.cuda.is_available() and not ON_CPU  # the GPU itself, not the CPU standing in for it
DEV = "cuda" if REAL else "cpu"
REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-4  # engine on the device vs the float64 loop (or twice the float32 loop's own error)
TIE = 1e-5  # `select` on the device may order two particles differently only when their scores tie

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (REAL or ON_CPU),
                       reason="needs CUDA (CRYOAL_CUDA_TESTS_ON_CPU=1 runs the logic on the CPU)"),
]


def _learn(name: str):
    """A training-side module of `cryoal.learn` by name (`train`, `checkpoint`, `calibration`, ...)."""
    return importlib.import_module(f"cryoal.learn.{name}")


@pytest.fixture(params=["tf32-default", "tf32-off"])
def tf32(request):
    """Run once with torch's default TF32 settings (what a user gets) and once with TF32 off, so
    that a precision failure on the GPU says by itself whether TF32 convolutions explain it."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if request.param == "tf32-off":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    yield f"{request.param} (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, " \
          f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32})"
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _fitted_temperature(model64: torch.nn.Module, box: int) -> float:
    """A temperature fitted as `train` fits it (NLL of held-out labels), here on the model's logits
    for random inputs, with labels drawn from softmax(z / 2.5): a T well away from 1."""
    calibration = _learn("calibration")
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        z = model64.eval()(torch.randn(40, 1, box, box, box, generator=gen, dtype=torch.float64)).numpy()
    z = np.tile(z, (10, 1))
    p = np.exp(calibration.log_softmax(z / 2.5))
    rng = np.random.default_rng(5)
    y = (rng.random((len(z), 1)) > np.cumsum(p, axis=1)).sum(1).clip(0, z.shape[1] - 1)
    t = calibration.fit_temperature(z, y)
    assert 0.06 < t < 19 and abs(t - 1.0) > 0.2, t  # fitted, not clipped at a bound, not 1
    return t


@pytest.mark.parametrize("fitted", [False, True], ids=["T=1", "T=fitted"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_gradnorm_on_device_matches_the_float64_loop(arch, fitted, tf32):
    """`expected` and `entropy`, both norms, one engine pass on the device, against the per-sample
    loop in float64: relative error <= 1e-4, at T = 1 and at a fitted T."""
    from cryoal.scoring.gradnorm import gradnorm_scores
    from cryoal.scoring.reference import reference_scores_by_norm

    box, n_classes = 16, 5
    torch.manual_seed(0)
    model = randomise_batchnorm(build_model(arch, (box,) * 3, n_classes), torch.Generator().manual_seed(3))
    model64 = copy.deepcopy(model).double().eval()
    t = _fitted_temperature(model64, box) if fitted else 1.0
    x = torch.randn(4, 1, box, box, box, generator=torch.Generator().manual_seed(1))
    refs = reference_scores_by_norm(model64, x.double(), temperature=t)
    # float32 itself limits the agreement: on some nets (dsrf3d at 16^3) the float32 loop on the CPU is
    # already 1e-4 to 2e-4 away from the float64 one, so the bar is 1e-4 or twice that floor.
    refs32 = reference_scores_by_norm(model.eval(), x, temperature=t)
    model.to(DEV)
    for norm, ref in refs.items():
        res = gradnorm_scores(model, x.to(DEV), norm=norm, temperature=t)
        for scheme in ("expected", "entropy"):
            assert np.all(ref[scheme] > 0)
            floor = float(np.max(np.abs(refs32[norm][scheme] - ref[scheme]) / ref[scheme]))
            rel = np.abs(res.scores[scheme] - ref[scheme]) / ref[scheme]
            assert rel.max() <= max(RTOL, 2 * floor), \
                f"{arch} {scheme} {norm} T={t:.3f} on {DEV}, {tf32}: max relative error {rel.max():.2e} " \
                f"(float32 loop on the CPU: {floor:.2e})"
    with torch.no_grad():
        p = torch.softmax(model64(x.double()) / t, dim=1).numpy()
    np.testing.assert_allclose(res.probs, p, rtol=1e-4, atol=1e-5, err_msg=tf32)


# -- select ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def select_setup(tmp_path_factory):
    """The torchrun tests' pool (90 particles, 12 labelled, 8^3) and two calibrated models:
    rb3d (its stem takes the engine's fused path) and a slim resnet3d."""
    checkpoint, calibration = _learn("checkpoint"), _learn("calibration")
    d = tmp_path_factory.mktemp("select")
    make_select_pool(d / "pool.h5")
    for arch, kw in (("rb3d", {}), ("resnet3d", {"width": 4})):
        torch.manual_seed(0)
        model = randomise_batchnorm(build_model(arch, (8,) * 3, 3, **kw), torch.Generator().manual_seed(2))
        calibration.set_temperature(model, 1.6)
        checkpoint.save_checkpoint(d / f"{arch}.pt", model, {
            "mode": "subtomogram", "class_names": ["a", "b", "c"], "input_shape": [8] * 3, "box": 8,
            "voxel_size": 10.0})
    return d


def _ranked(path: Path) -> list[tuple[str, float]]:
    with open(path, newline="") as fh:
        return [(row["particle_id"], float(row["score"])) for row in csv.DictReader(fh)]


def assert_same_ranking(cpu: list[tuple[str, float]], dev: list[tuple[str, float]], what: str) -> None:
    """Same particles in the same order, except where two particles' CPU scores tie within TIE
    (relative); the device's scores agree with the CPU's to 1e-4."""
    assert sorted(p for p, _ in cpu) == sorted(p for p, _ in dev), what
    cpu_score = dict(cpu)
    for k, ((p_cpu, s_cpu), (p_dev, _)) in enumerate(zip(cpu, dev, strict=True)):
        if p_cpu != p_dev:
            gap = abs(s_cpu - cpu_score[p_dev])
            assert gap <= TIE * max(abs(s_cpu), 1e-12), \
                f"{what}: rank {k + 1} is {p_dev} on {DEV}, {p_cpu} on cpu; CPU scores differ by {gap:.2e}"
    for p, s in dev:
        assert abs(s - cpu_score[p]) <= 1e-4 * max(abs(cpu_score[p]), 1e-12), (what, p, s, cpu_score[p])


@pytest.mark.parametrize("arch", ["rb3d", "resnet3d"])
def test_select_on_device_ranks_as_on_cpu(select_setup, tmp_path, arch, tf32):
    """`select --device cuda` and `--device cpu`, every unlabelled particle ranked, calibrated (T=1.6)."""
    d = select_setup
    for scheme in ("expected", "entropy", "margin", "least-confidence", "max-entropy", "random"):
        out = {}
        for device in ("cpu", DEV):
            out[device] = tmp_path / f"{scheme}-{device}.csv"
            res = cli("select", d / "pool.h5", "-m", d / f"{arch}.pt", "--scheme", scheme, "-n", "0",
                      "--batch-size", "32", "--device", device, "-o", out[device])
            assert res.exit_code == 0, res.output
        assert_same_ranking(_ranked(out["cpu"]), _ranked(out[DEV]), f"{arch} {scheme}, {tf32}")


# -- train and predict -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_pool(tmp_path_factory) -> Path:
    """3 classes x 30 simulated subtomograms (16^3, wedge, SNR 1), every one labelled."""
    from cryoal.io.pool import PoolWriter
    from cryoal.simulate.particles import simulate_particles

    vols, labels, names = simulate_particles(30, classes=3, snr=1.0, box=16, voxel_size=20.0, seed=0)
    vols = (vols - vols.mean(axis=(1, 2, 3), keepdims=True)) / vols.std(axis=(1, 2, 3), keepdims=True)
    path = tmp_path_factory.mktemp("sim") / "pool.h5"
    with PoolWriter(path, shape=(16,) * 3, class_names=names, voxel_size=20.0) as w:
        w.add(vols.astype(np.float32), [f"p{i:03d}" for i in range(len(vols))],
              [f"s{i}.mrc" for i in range(len(vols))], labels=labels)
    return path


@pytest.fixture(scope="module")
def trained(simulated_pool, tmp_path_factory) -> tuple[Path, dict]:
    """`cryoal train --device auto` on the simulated pool: (checkpoint, printed metrics)."""
    out = tmp_path_factory.mktemp("model") / "model.pt"
    res = cli("train", simulated_pool, "-o", out, "--device", "auto", "--epochs", "12", "--batch-size", "16",
              "--json")
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_train_auto_picks_the_gpu_with_amp_and_beats_chance(trained):
    _, metrics = trained
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert torch.device(metrics["device"]).type == want, metrics["device"]
    if want == "cuda":
        amp = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        assert metrics["amp"] == amp, metrics["amp"]
    else:
        assert metrics["amp"] is None
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in metrics["history"])
    # 18 validation particles of 3 classes: chance is 1/3, and 12 right by luck has p < 0.001
    assert metrics["n_val"] == 18 and metrics["val_accuracy"] >= 12 / 18, metrics["history"]


def test_predict_on_device_matches_cpu_and_beats_chance(simulated_pool, trained, tmp_path):
    from cryoal.io.pool import open_pool

    model, _ = trained
    probs = {}
    for device in ("cpu", DEV):
        out = tmp_path / f"{device}.csv"
        res = cli("predict", simulated_pool, "-m", model, "-o", out, "--device", device, "--batch-size", "16")
        assert res.exit_code == 0, res.output
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = [c for c in rows[0] if c.startswith("p_")]
        probs[device] = np.array([[float(r[c]) for c in cols] for r in rows])
    np.testing.assert_allclose(probs[DEV], probs["cpu"], atol=1e-3)
    with open_pool(simulated_pool) as pool:
        labels = np.asarray(pool.labels)
    assert (probs[DEV].argmax(1) == labels).mean() >= 0.6  # chance: 1/3


# -- torchrun ----------------------------------------------------------------------------------

# One torchrun rank. cryoal starts no process group for a single rank, so besides the plain CLI
# run, the script joins a 1-rank group of the device's backend (NCCL on CUDA) itself and passes
# `select_pool` and `fit` a context that takes their distributed code paths (collectives, DDP,
# SyncBatchNorm) on that group.
ONE_RANK = r"""
import dataclasses, json, sys
import numpy as np
import torch
import torch.distributed as tdist
from cryoal.learn.distributed import DistContext
from cryoal.select import select_pool
pool, model, out, device, train_mod = sys.argv[1:6]
fit = __import__(train_mod, fromlist=["fit"]).fit

@dataclasses.dataclass(frozen=True)
class OneRankGroup(DistContext):
    @property
    def distributed(self):
        return True

backend = "nccl" if device == "cuda" else "gloo"
tdist.init_process_group(backend=backend)
ctx = OneRankGroup(rank=0, world_size=1, local_rank=0, backend=backend)
select_pool(pool, model, f"{out}/forced.csv", scheme="expected", n=0, batch_size=16, device=device, dist=ctx)
gen = np.random.default_rng(0)
x = gen.standard_normal((24, 8, 8, 8)).astype(np.float32)
y = np.arange(24) % 3
res = {"backend": tdist.get_backend()}
for name, d in (("plain", None), ("group", ctx)):
    _, m = fit(x[:16], y[:16], x[16:], y[16:], arch="rb3d", n_classes=3, epochs=2, batch_size=8,
               device=device, dist=d, augment=False)
    res[name] = {"loss": [h["train_loss"] for h in m["history"]], "world_size": m["world_size"]}
tdist.destroy_process_group()
json.dump(res, open(f"{out}/train.json", "w"))
"""


def _env() -> dict:
    """The repo first on the path, after it whatever the caller's PYTHONPATH holds (carried wheels)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run(args: list[str], torchrun: bool) -> subprocess.CompletedProcess:
    pre = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"] if torchrun else []
    res = subprocess.run([sys.executable, *pre, *args], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_one_rank_torchrun_select_equals_the_plain_process(select_setup, tmp_path):
    d = select_setup
    common = ["-m", "cryoal", "select", str(d / "pool.h5"), "-m", str(d / "rb3d.pt"), "--scheme", "expected",
              "-n", "0", "--batch-size", "16", "--device", DEV]
    _run([*common, "-o", str(tmp_path / "plain.csv")], torchrun=False)
    _run([*common, "-o", str(tmp_path / "torchrun.csv")], torchrun=True)
    assert (tmp_path / "plain.csv").read_bytes() == (tmp_path / "torchrun.csv").read_bytes()

    script = tmp_path / "one_rank.py"
    script.write_text(ONE_RANK)
    _run([str(script), str(d / "pool.h5"), str(d / "rb3d.pt"), str(tmp_path), DEV, _learn("train").__name__],
         torchrun=True)
    # the distributed code path of select, on a 1-rank group, writes what the plain process wrote
    assert (tmp_path / "plain.csv").read_bytes() == (tmp_path / "forced.csv").read_bytes()
    res = json.loads((tmp_path / "train.json").read_text())
    if REAL:
        assert res["backend"] == "nccl"
    plain, group = np.array(res["plain"]["loss"]), np.array(res["group"]["loss"])
    assert np.all(np.isfinite(group)) and len(group) == len(plain) == 2
    # same data, seed and weights: DDP and SyncBatchNorm on one rank train as the plain loop does
    np.testing.assert_allclose(group, plain, rtol=0.05)


def test_pretrain_on_device_uses_amp_and_embeds_like_the_cpu(tmp_path):
    """`pretrain --device cuda` trains in mixed precision; `embed` on the device and on the CPU give
    the same 10 nearest neighbours for most particles (same encoder, float32 inference)."""
    from test_pretrain import make_pool

    from cryoal.io.embedding import read_embeddings
    from cryoal.learn.encoder import read_encoder

    pool, enc = tmp_path / "pool.h5", tmp_path / "enc.pt"
    make_pool(pool, 48, box=16)
    res = cli("pretrain", pool, "-o", enc, "--epochs", "2", "--batch-size", "16", "--width", "8",
              "--device", DEV)
    assert res.exit_code == 0, res.output
    record = read_encoder(enc)["pretrain"]
    assert record["device"].startswith(DEV)
    if REAL:
        assert record["amp"] in ("bfloat16", "float16")
    on_device = read_embeddings(pool).values
    assert cli("embed", pool, "-m", enc, "--device", "cpu").exit_code == 0
    on_cpu = read_embeddings(pool).values

    def neighbours(z: np.ndarray) -> np.ndarray:
        d = ((z[:, None] - z[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        return np.argsort(d, axis=1)[:, :10]

    a, b = neighbours(on_device), neighbours(on_cpu)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)])
    assert overlap >= 0.9, overlap
