"""Peak memory of `select` and `predict` does not grow with the pool: 2,000 vs 20,000 particles.

Each command runs in a fresh process that reports its own peak RSS (VmHWM). The 20,000-particle
pool's volumes are 300 MB more than the 2,000-particle one's; a command that held them (or a
growing share of them) would show it. What may grow is per-particle bookkeeping: ids, scores and
the CSV rows, about 0.5 KB a particle, so 18,000 more particles may add ~10 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from script_helpers import load_benchmark_script

from cryoal.io.pool import PoolWriter

run_cryoal = load_benchmark_script("peak_rss").run_cryoal

BOX = 16
ALLOWED_GROWTH_MIB = 40  # bookkeeping for 18,000 particles, with margin; the volumes are 281 MiB



def _pool(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    chunk = rng.standard_normal((1000, BOX, BOX, BOX), dtype=np.float32)  # reused: content is irrelevant
    with PoolWriter(path, shape=(BOX,) * 3, class_names=["a", "b"], compression=None) as w:
        for s in range(0, n, 1000):
            w.add(chunk, [f"p{i:06d}" for i in range(s, s + 1000)], ["sim"] * 1000,
                  labels=np.where(np.arange(s, s + 1000) < 20, np.arange(1000) % 2, -1))


def _model(path: Path) -> None:
    import torch

    from cryoal.learn.checkpoint import save_checkpoint
    from cryoal.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet3d", (BOX,) * 3, 2, width=2, dropout=0.0, spatial_dropout=0.0)
    save_checkpoint(path, model, {"mode": "subtomogram", "class_names": ["a", "b"], "input_shape": [BOX] * 3})


def _peak_mib(tmp_path: Path, args: list[str]) -> float:
    res = run_cryoal(args)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.peak_mib is not None
    return res.peak_mib


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    d = tmp_path_factory.mktemp("mem")
    _pool(d / "small.h5", 2_000)
    _pool(d / "big.h5", 20_000)
    _model(d / "model.pt")
    return d


@pytest.mark.parametrize("command", ["select", "predict"])
def test_peak_memory_is_flat_in_the_pool_size(pools, tmp_path, command):
    extra = ["--scheme", "max-entropy", "-n", "100"] if command == "select" else []
    peaks = {}
    for name in ("small", "big"):
        out = tmp_path / f"{name}.csv"
        peaks[name] = _peak_mib(tmp_path, [command, str(pools / f"{name}.h5"), "-m", str(pools / "model.pt"),
                                           *extra, "--batch-size", "256", "--device", "cpu", "-o", str(out)])
        rows = len(out.read_text().splitlines()) - 1
        assert rows == (100 if command == "select" else (2_000 if name == "small" else 20_000))
    growth = peaks["big"] - peaks["small"]
    assert growth < ALLOWED_GROWTH_MIB, f"{command}: peak RSS {peaks} grew by {growth:.0f} MiB"
