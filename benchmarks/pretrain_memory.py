"""Peak memory of `cryoal pretrain` against the pool size: 2,000 vs 20,000 particles at 32^3.

    .venv/bin/python benchmarks/pretrain_memory.py                    # 2k and 20k, 40 steps per epoch
    .venv/bin/python benchmarks/pretrain_memory.py --steps 0          # whole epochs (hours on a CPU)

Writes uncompressed pools of random volumes (content does not matter for memory; 20,000 x 32^3
float32 is 2.6 GB on disk, deleted right after its run) and runs
`cryoal pretrain POOL -o ENCODER --epochs E --device cpu` on each in a fresh process, which records
its own peak resident set size (VmHWM, `peak_rss.py`).

One epoch over 20,000 particles takes about a quarter of an hour on 2 CPU cores, so by default
the child keeps only the first `--steps` batches of each epoch (a patch of
`cryoal.learn.pretrain.epoch_batches` in that process; the batches it keeps are drawn from the whole
pool, as in a full epoch). Everything else runs as `cryoal pretrain` does: the pool is opened and
streamed, the BatchNorm statistics re-estimated, the encoder written, and then **every** particle
embedded and the embedding written into the pool (a full streaming pass over the 20,000). A training
step holds one batch whatever the pool size, so the steps left out add time, not memory.

Target (issue 26): peak RSS flat from 2k to 20k particles (here: within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# run in the child before the CLI: keep the first STEPS batches of every epoch (0: all of them)
_PATCH = """
import cryoal.learn.pretrain as _p
_steps = {steps}
if _steps:
    _full = _p.epoch_batches
    _p.epoch_batches = lambda n, b, g: _full(n, b, g)[:_steps]
"""


def main() -> None:
    from peak_rss import run_cryoal
    from select_memory import write_pool

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="batches kept per epoch (0: whole epochs)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="pretrain_memory_", dir=args.dir))
    results = []
    try:
        print(f"# pretrain peak RSS: box {args.box}^3, {args.epochs} epochs of "
              f"{args.steps or 'all'} batches (default batch size), embedding of every particle, "
              f"{os.cpu_count()} CPUs")
        print("| particles | pool on disk (MiB) | peak RSS (MiB) | seconds |")
        print("|---|---|---|---|")
        for size in args.sizes:
            pool = scratch / f"pool_{size}.h5"
            write_pool(pool, size, args.box, ["a", "b"])
            disk = pool.stat().st_size / 2**20
            res = run_cryoal(["pretrain", str(pool), "-o", str(scratch / f"enc_{size}.pt"),
                              "--epochs", str(args.epochs), "--device", "cpu"],
                             prelude=_PATCH.format(steps=args.steps))
            pool.unlink()  # 2.6 GB at 20k: not kept past its run
            if res.returncode != 0 or res.peak_mib is None:
                raise SystemExit(f"pretrain on {size} particles failed:\n{res.stderr[-2000:]}")
            results.append({"particles": size, "pool_mib": round(disk),
                            "peak_rss_mib": round(res.peak_mib, 1), "seconds": round(res.seconds, 1)})
            print(f"| {size} | {disk:.0f} | {res.peak_mib:.0f} | {res.seconds:.0f} |", flush=True)
        peaks = [r["peak_rss_mib"] for r in results]
        growth = peaks[-1] / peaks[0] - 1
        verdict = "PASS" if abs(growth) <= 0.10 else "FAIL"
        print(f"largest/smallest pool peak RSS {growth:+.1%} (target: within 10%): {verdict}")
        print(json.dumps({"box": args.box, "epochs": args.epochs, "steps": args.steps, "results": results}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
