"""Peak memory of `cryoal select` against the pool size: 2,000 vs 20,000 particles at 32^3.

    .venv/bin/python benchmarks/select_memory.py                          # expected, 2k and 20k
    .venv/bin/python benchmarks/select_memory.py --scheme max-entropy     # inference-only scheme
    .venv/bin/python benchmarks/select_memory.py --scheme expected --pool-subset 500   # engine peak

Writes uncompressed pools of random volumes (content does not matter for memory; 20,000 x 32^3
float32 is 2.6 GB on disk) and a checkpoint of the default architecture with random weights into
a scratch directory, then runs `cryoal select POOL -m MODEL --scheme S -n 100 -o CSV` for each
pool in a fresh process. That process records its own peak resident set size (VmHWM from
/proc/self/status, read at exit), so every figure belongs to one command alone. Each pool is
deleted right after its runs, and the scratch directory at the end unless `--keep`.

Targets (issue 3): below 2 GB, and the 20,000-particle figure within 10% of the 2,000 one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELLED = 50  # a few labelled particles, so coreset has initial centres and select skips them
CHUNK = 500  # particles written per PoolWriter.add call


def write_pool(path: Path, n: int, box: int, classes: list[str], seed: int = 0) -> None:
    """An uncompressed pool of `n` random volumes; the first LABELLED are labelled."""
    from cryoal.io.pool import PoolWriter

    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((CHUNK, box, box, box), dtype=np.float32)  # reused: content is irrelevant
    with PoolWriter(path, shape=(box,) * 3, class_names=classes, voxel_size=10.0, compression=None) as w:
        for s in range(0, n, CHUNK):
            k = min(CHUNK, n - s)
            rows = np.arange(s, s + k)
            w.add(bank[:k], [f"p{i:07d}" for i in rows], ["random"] * k,
                  labels=np.where(rows < LABELLED, rows % len(classes), -1))


def write_model(path: Path, arch: str, box: int, classes: list[str]) -> None:
    import torch

    from cryoal.learn.checkpoint import save_checkpoint
    from cryoal.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, (box,) * 3, len(classes))
    save_checkpoint(path, model, {"mode": "subtomogram", "class_names": classes, "input_shape": [box] * 3})


def peak_rss(args: list[str], scratch: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of `cryoal ARGS` in a fresh process."""
    from peak_rss import run_cryoal  # benchmarks/peak_rss.py, beside this script

    res = run_cryoal(args)
    if res.returncode != 0 or res.peak_mib is None:
        raise SystemExit(f"cryoal {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return res.peak_mib, res.seconds


def main() -> None:
    from cryoal.models import DEFAULT_ARCH

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--scheme", nargs="+", default=["expected"])
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--arch", default=DEFAULT_ARCH)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("-n", type=int, default=100, help="rows to write")
    ap.add_argument("--pool-subset", type=int, default=None,
                    help="score a random K of each pool (--pool-subset K): the pool's per-particle "
                    "bookkeeping still scales with its size, the volumes read do not")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (pools are always deleted)")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="select_memory_", dir=args.dir))
    classes = [f"c{i}" for i in range(args.classes)]
    results = []
    try:
        model = scratch / "model.pt"
        write_model(model, args.arch, args.box, classes)
        print(f"# select peak RSS: {args.arch}, box {args.box}^3, {args.classes} classes, "
              f"batch {args.batch_size}, -n {args.n}, pool subset {args.pool_subset or 'none'}, "
              f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
        print("| scheme | particles | unlabelled scored | peak RSS (MiB) | seconds |")
        print("|---|---|---|---|---|")
        for size in args.sizes:
            pool = scratch / f"pool_{size}.h5"
            write_pool(pool, size, args.box, classes)
            for scheme in args.scheme:
                mib, wall = peak_rss(
                    ["select", str(pool), "-m", str(model), "--scheme", scheme, "-n", str(args.n),
                     "-o", str(scratch / f"sel_{scheme}_{size}.csv"), "--device", "cpu",
                     "--batch-size", str(args.batch_size),
                     *(["--pool-subset", str(args.pool_subset)] if args.pool_subset else [])],
                    scratch,
                )
                results.append({"scheme": scheme, "particles": size, "peak_rss_mib": round(mib, 1),
                                "seconds": round(wall, 1)})
                scored = min(size - LABELLED, args.pool_subset or size)
                print(f"| {scheme} | {size} | {scored} | {mib:.0f} | {wall:.0f} |", flush=True)
            pool.unlink()  # the big pool is 2.6 GB: do not keep it past its run
        for scheme in args.scheme:
            peaks = [r["peak_rss_mib"] for r in results if r["scheme"] == scheme]
            growth = peaks[-1] / peaks[0] - 1
            ok = max(peaks) < 2048 and abs(growth) <= 0.10
            print(f"{scheme}: largest/smallest pool peak RSS {growth:+.1%}, max {max(peaks):.0f} MiB "
                  f"(target < 2048 MiB and within 10%): {'PASS' if ok else 'FAIL'}")
        print(json.dumps({"arch": args.arch, "box": args.box, "results": results}))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
