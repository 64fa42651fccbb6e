"""Scaling of `select` and `train` over torchrun ranks on CPU (gloo): 1 process vs N ranks, one run.

    .venv/bin/python benchmarks/scaling.py                    # 4,000 particles at 32^3, ranks 1 and 2
    .venv/bin/python benchmarks/scaling.py --n 1000 --ranks 1,2 --schemes entropy

For each scheme it times `cryoal select` as one process (torch's default threads, all cores) and
as `torchrun --nproc-per-node R` (one thread per rank, torchrun's default), alternating the
launches `--repeats` times and keeping the best of each. It also runs a single process with
`OMP_NUM_THREADS=1` and checks that its CSV is byte-identical to every multi-rank CSV (identity
needs the same threads per process, see docs/commands.md, "torchrun"). Then the same for
`cryoal train` (seconds per epoch). Throughput is particles/s over the pool; speed-up is against
the 1-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_pool(path: Path, n: int, box: int, n_classes: int, n_labelled: int) -> None:
    """A pool of blobs (one size per class) in noise, with `n_labelled` labels, round-robin classes."""
    from cryoal.io.pool import PoolWriter

    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, box, dtype=np.float32),) * 3, indexing="ij")
    r2 = x**2 + y**2 + z**2
    labels = np.full(n, -1, np.int32)
    labels[:n_labelled] = np.arange(n_labelled) % n_classes
    truth = np.arange(n) % n_classes
    with PoolWriter(path, shape=(box,) * 3, class_names=[f"c{k}" for k in range(n_classes)],
                    voxel_size=10.0, compression=None) as w:
        for s in range(0, n, 500):
            k = truth[s : s + 500]
            width = 0.1 + 0.1 * k[:, None, None, None]
            vols = np.exp(-r2[None] / width) + rng.standard_normal((len(k), box, box, box), dtype=np.float32)
            vols = (vols - vols.mean(axis=(1, 2, 3), keepdims=True)) / vols.std(axis=(1, 2, 3), keepdims=True)
            w.add(vols.astype(np.float32), [f"p{i:06d}" for i in range(s, s + len(k))], ["sim"] * len(k),
                  labels=labels[s : s + 500])


def launch(ranks: int, args: list[str], threads: int | None) -> float:
    """Run `cryoal ARGS` as one process (ranks 1) or under torchrun; returns wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if ranks == 1:
        cmd = [sys.executable, "-m", "cryoal", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "cryoal", *args]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--schemes", default="entropy,expected")
    ap.add_argument("--labelled", type=int, default=400, help="labelled particles (training set)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cryoal-scaling-") as tmp:
        tmp = Path(tmp)
        pool = tmp / "pool.h5"
        make_pool(pool, args.n, args.box, 5, args.labelled)
        model = tmp / "model.pt"
        launch(1, ["train", str(pool), "-o", str(model), "--epochs", "1", "--device", "cpu"], None)
        n_scored = args.n - args.labelled
        for scheme in args.schemes.split(","):
            sel = ["select", str(pool), "-m", str(model), "--scheme", scheme, "-n", "0",
                   "--batch-size", str(args.batch_size), "--device", "cpu"]
            best = {r: float("inf") for r in ranks}
            for _ in range(args.repeats):
                for r in ranks:
                    best[r] = min(best[r], launch(r, [*sel, "-o", str(tmp / f"{scheme}-{r}.csv")], None))
            launch(1, [*sel, "-o", str(tmp / f"{scheme}-1t.csv")], threads=1)
            ref = (tmp / f"{scheme}-1t.csv").read_bytes()
            for r in ranks:
                same = (tmp / f"{scheme}-{r}.csv").read_bytes() == ref if r > 1 else None
                rows.append({"command": f"select {scheme}", "ranks": r, "seconds": best[r],
                             "per_s": n_scored / best[r], "speedup": best[ranks[0]] / best[r],
                             "identical_to_1_thread_process": same})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # partial results as they come
        if not args.skip_train:
            tr = ["train", str(pool), "--epochs", str(args.epochs), "--device", "cpu", "--batch-size", "16",
                  "--patience", str(args.epochs)]
            best = {r: float("inf") for r in ranks}
            for _ in range(args.repeats):
                for r in ranks:
                    best[r] = min(best[r], launch(r, [*tr, "-o", str(tmp / f"m{r}.pt")], None))
            for r in ranks:
                rows.append({"command": f"train {args.epochs} epochs", "ranks": r, "seconds": best[r],
                             "per_s": args.labelled * args.epochs / best[r],
                             "speedup": best[ranks[0]] / best[r], "identical_to_1_thread_process": None})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    cores = len(os.sched_getaffinity(0))
    print(f"\nscaling on CPU (gloo), {args.n} particles at {args.box}^3, {cores} cores, "
          f"best of {args.repeats}; wall time includes start-up")
    print("| command | ranks | seconds | particles/s | speed-up | CSV identical to 1 process |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        same = {None: "", True: "yes", False: "NO"}[r["identical_to_1_thread_process"]]
        print(f"| {r['command']} | {r['ranks']} | {r['seconds']:.1f} | {r['per_s']:.1f} | "
              f"{r['speedup']:.2f} | {same} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
