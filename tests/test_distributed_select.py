"""`torchrun -m cryoal select|train` on CPU (gloo, 2 ranks) against one process.

Identity needs the same number of threads per process (see docs/commands.md, "torchrun"): the single-process
references run with OMP_NUM_THREADS=1, which torchrun also gives each rank.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cryoal.io.logjson import read_events
from cryoal.io.pool import PoolWriter, open_pool

REPO = Path(__file__).resolve().parents[1]
N, BOX, N_LABELLED = 90, 8, 12
SCHEMES = ("expected", "entropy", "random", "max-entropy", "margin", "least-confidence", "bald",
           "coreset", "badge")
SAMPLED_PICKS = ("power", "softrank", "power-balanced", "classnorm")

# Every scheme through the Python API in ONE launch (a torchrun start-up costs seconds).
ALL_SCHEMES = r"""
import sys
from cryoal.learn.distributed import init_distributed, shutdown
from cryoal.select import select_pool
pool, model, out = sys.argv[1:4]
ctx = init_distributed("cpu")
for scheme in sys.argv[4].split(","):
    for subset in (None, 50):
        tag = f"{scheme}-{subset or 'all'}"
        select_pool(pool, model, f"{out}/{tag}.csv", scheme=scheme, n=0 if subset else 30, batch_size=7,
                    device="cpu", seed=3, pool_subset=subset, mc_passes=4, dist=ctx)
for pick in ("power", "softrank", "power-balanced", "classnorm"):  # the sampled picks: same seed, same draw
    select_pool(pool, model, f"{out}/expected-{pick}.csv", scheme="expected", n=20, batch_size=7,
                device="cpu", seed=3, pick=pick, beta=2.0, dist=ctx)
shutdown(ctx)
"""


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def single(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def make_pool(path: Path, compression=None) -> None:
    rng = np.random.default_rng(0)
    truth = np.arange(N) % 3
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, BOX),) * 3, indexing="ij")
    blobs = np.stack([np.exp(-(x**2 + y**2 + z**2) / w) for w in (0.1, 0.3, 0.6)]).astype(np.float32)
    vols = blobs[truth] + 0.5 * rng.standard_normal((N, BOX, BOX, BOX)).astype(np.float32)
    labels = np.where(np.arange(N) < N_LABELLED, truth, -1)
    coords = rng.uniform(0, 500, (N, 3)).astype(np.float32)
    with PoolWriter(path, shape=(BOX,) * 3, class_names=["a", "b", "c"], voxel_size=10.0,
                    compression=compression) as w:
        w.add(vols, [f"p{i:03d}" for i in range(N)], [f"/data/p{i:03d}.mrc" for i in range(N)],
              labels=labels, tomos=[f"t{i % 4}" for i in range(N)], coords=coords,
              meta={"rlnImageName": [f"p{i:03d}.mrc" for i in range(N)]})


def make_model(path: Path) -> None:
    import torch

    from cryoal.learn.calibration import set_temperature
    from cryoal.learn.checkpoint import save_checkpoint
    from cryoal.models import build_model

    torch.manual_seed(0)
    model = set_temperature(build_model("resnet3d", (BOX,) * 3, 3, width=4), 1.6)  # calibrated scoring too
    save_checkpoint(path, model, {"mode": "subtomogram", "class_names": ["a", "b", "c"],
                                  "input_shape": [BOX] * 3, "box": BOX, "voxel_size": 10.0})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    make_pool(d / "pool.h5")
    make_model(d / "model.pt")
    return d


def test_every_scheme_on_two_ranks_is_byte_identical_to_one_process(setup, tmp_path):
    script = tmp_path / "all_schemes.py"
    script.write_text(ALL_SCHEMES)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    args = [str(setup / "pool.h5"), str(setup / "model.pt")]
    res1 = single([str(script), *args, str(tmp_path / "one"), ",".join(SCHEMES)])
    assert res1.returncode == 0, res1.stderr[-3000:]
    res2 = torchrun([str(script), *args, str(tmp_path / "two"), ",".join(SCHEMES)])
    assert res2.returncode == 0, res2.stderr[-3000:]
    for scheme in SCHEMES:
        for tag in ("all", "50"):
            one = (tmp_path / "one" / f"{scheme}-{tag}.csv").read_bytes()
            two = (tmp_path / "two" / f"{scheme}-{tag}.csv").read_bytes()
            assert one == two, f"{scheme} ({tag}): 2-rank CSV differs from the single-process CSV"
            n_rows = len(one.decode().splitlines()) - 1
            assert n_rows == (50 if tag == "50" else 30)
    for pick in SAMPLED_PICKS:
        one = (tmp_path / "one" / f"expected-{pick}.csv").read_bytes()
        assert one == (tmp_path / "two" / f"expected-{pick}.csv").read_bytes(), pick
        assert len(one.decode().splitlines()) == 21
    # only rank 0 wrote: no stray temporary files
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        [f"{s}-{t}.csv" for s in SCHEMES for t in ("all", "50")]
        + [f"expected-{p}.csv" for p in SAMPLED_PICKS])


def test_cli_select_under_torchrun_writes_csv_star_and_one_log(setup, tmp_path):
    common = [str(setup / "pool.h5"), "-m", str(setup / "model.pt"), "--scheme", "expected", "-n", "0",
              "--batch-size", "16", "--device", "cpu", "--format", "both"]
    one = single(["-m", "cryoal", "select", *common, "-o", str(tmp_path / "one.csv"),
                  "--log-json", str(tmp_path / "one.jsonl")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(["-m", "cryoal", "select", *common, "-o", str(tmp_path / "two.csv"),
                    "--log-json", str(tmp_path / "two.jsonl")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()
    assert (tmp_path / "one.star").read_bytes() == (tmp_path / "two.star").read_bytes()
    assert two.stdout.count("wrote ") == 1  # the summary line comes from rank 0 only
    events = read_events(tmp_path / "two.jsonl")
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("done") == 1
    assert events[0]["world_size"] == 2 and events[-1]["n_scored"] == N - N_LABELLED


def test_corrupt_chunk_on_one_rank_fails_every_rank_and_writes_nothing(setup, tmp_path):
    pool = tmp_path / "pool.h5"
    make_pool(pool, compression="gzip")
    bad_row = N - 3  # in the last batch: rank 1's shard
    with h5py.File(pool, "r") as h5:
        info = h5["volumes"].id.get_chunk_info_by_coord((bad_row, 0, 0, 0))
    assert info.filter_mask == 0
    with open(pool, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    out = tmp_path / "sel.csv"
    res = torchrun(["-m", "cryoal", "select", str(pool), "-m", str(setup / "model.pt"), "--scheme", "entropy",
                    "-n", "5", "--batch-size", "16", "--device", "cpu", "-o", str(out)])
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2, res.stderr[-3000:]  # one clear line from each rank
    for line in errors:
        assert f"particle 'p{bad_row:03d}'" in line and "rank 1 failed" in line
    # no rank printed a traceback; the launcher's own ChildFailedError report is torchrun's, not ours
    assert f'File "{REPO / "cryoal"}' not in res.stderr
    assert res.stderr.count("Traceback") <= 1 and "ChildFailedError" in res.stderr.split("Traceback")[-1]
    assert not out.exists() and not list(tmp_path.glob(".sel.csv*"))


def test_train_under_torchrun_only_rank_zero_writes(setup, tmp_path):
    out = tmp_path / "model.pt"
    log = tmp_path / "train.jsonl"
    res = torchrun(["-m", "cryoal", "train", str(setup / "pool.h5"), "-o", str(out), "--epochs", "2",
                    "--batch-size", "4", "--device", "cpu", "--val-fraction", "0", "--log-json", str(log),
                    "--json"])
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = [json.loads(ln) for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(metrics) == 1 and metrics[0]["epochs_run"] == 2 and metrics[0]["n_train"] == N_LABELLED
    events = read_events(log)
    assert [e["event"] for e in events].count("epoch") == 2  # not once per rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "train.jsonl"]
    from cryoal.learn.checkpoint import load_model

    model, meta = load_model(out)
    assert meta["class_names"] == ["a", "b", "c"] and meta["metrics"]["world_size"] == 2
    with open_pool(setup / "pool.h5") as pool:
        from cryoal.learn.inference import predict_proba

        probs = predict_proba(model, pool.read(np.arange(10)), "cpu")
    assert probs.shape == (10, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
