"""Data-parallel training pieces, in real 2-process gloo jobs (torch.distributed.run on CPU).

One global batch, split over ranks, with BatchNorm over the global batch (GlobalBatchNorm) and
DDP's gradient average, must give the same outputs, gradients and running statistics as one
process on the whole batch (to float rounding).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoal.learn.distributed import DistContext, rank_slice, shard, shard_batches

REPO = Path(__file__).resolve().parents[1]

EQUIVALENCE = r"""
import copy, json, sys
import torch
import torch.nn.functional as F
from cryoal.learn.ddp import loss_for_global_mean, unwrap_trained, wrap_for_training
from cryoal.learn.distributed import init_distributed, rank_slice, shutdown
from cryoal.models import build_model

ctx = init_distributed("cpu")
torch.manual_seed(0)
ref = build_model("resnet3d", (8, 8, 8), 3, width=4, dropout=0.0, spatial_dropout=0.0).train()
model = copy.deepcopy(ref)
x, y = torch.randn(11, 1, 8, 8, 8), torch.randint(0, 3, (11,))
out = ref(x)  # the single-process reference: the whole batch in one process
F.cross_entropy(out, y).backward()

net = wrap_for_training(model, ctx, torch.device("cpu"))
part = rank_slice(11, ctx)
mine = net(x[part])
loss_for_global_mean(F.cross_entropy(mine, y[part], reduction="none"), 11, ctx).backward()

def rel(a, b):
    return float((a - b).abs().max() / (b.abs().max() + 1e-12))

grad = max(rel(p.grad, q.grad) for p, q in zip(net.module.parameters(), ref.parameters(), strict=True))
plain = unwrap_trained(net)
result = {
    "rank": ctx.rank, "n_local": int(mine.shape[0]),
    "out": rel(mine.detach(), out[part].detach()),
    "grad": grad,
    "state": max(rel(a.float(), b.float())
                 for a, b in zip(plain.state_dict().values(), ref.state_dict().values(), strict=True)),
    "bn_classes": sorted({type(m).__name__ for m in plain.modules() if "Norm" in type(m).__name__}),
    "same_state_keys": list(plain.state_dict()) == list(ref.state_dict()),
}
open(sys.argv[1] + f".{ctx.rank}", "w").write(json.dumps(result))
shutdown(ctx)
"""


def torchrun(args: list[str], nproc: int = 2, env_extra: dict | None = None, timeout: int = 300):
    """Launch `args` (a script or `-m cryoal ...`) as an `nproc`-rank gloo job on this CPU."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_sharding_helpers_cover_everything_once():
    batches = [np.arange(s, min(s + 4, 30)) for s in range(0, 30, 4)]  # 8 batches
    for world in (1, 2, 3, 5):
        ctxs = [DistContext(rank=r, world_size=world) for r in range(world)]
        joined = [b for c in ctxs for b in shard_batches(batches, c)]
        assert [b.tolist() for b in joined] == [b.tolist() for b in batches]  # whole batches, in order
        assert np.array_equal(np.concatenate([shard(np.arange(30), c) for c in ctxs]), np.arange(30))
        for n in (1, 7, 16):
            parts = [range(n)[rank_slice(n, c)] for c in ctxs]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_global_batchnorm_matches_one_process_on_the_whole_batch(tmp_path):
    script = tmp_path / "equivalence.py"
    script.write_text(EQUIVALENCE)
    res = torchrun([str(script), str(tmp_path / "out")])
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    results = [json.loads((tmp_path / f"out.{r}").read_text()) for r in (0, 1)]
    assert [r["n_local"] for r in results] == [5, 6]  # each rank had its share of the 11 samples
    for r in results:
        assert r["out"] < 1e-5, r        # logits of the rank's samples
        assert r["grad"] < 1e-4, r       # DDP-averaged gradients = whole-batch gradients
        assert r["state"] < 1e-5, r      # BatchNorm running statistics, weights
        assert r["bn_classes"] == ["BatchNorm3d"] and r["same_state_keys"]


@pytest.mark.parametrize("world", [2, 3])
def test_loss_scaling_gives_the_global_mean(world):
    import torch

    from cryoal.learn.ddp import loss_for_global_mean

    per_sample = torch.arange(7, dtype=torch.float64)
    ctxs = [DistContext(rank=r, world_size=world) for r in range(world)]
    # DDP averages the per-rank gradients, i.e. divides the sum of the per-rank losses by world
    total = sum(loss_for_global_mean(per_sample[rank_slice(7, c)], 7, c) for c in ctxs) / world
    assert float(total) == pytest.approx(float(per_sample.mean()))
