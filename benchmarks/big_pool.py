"""A big pool end to end: ingest, `select --scheme entropy` and plain inference (`predict`), with
wall time, throughput and peak RSS of each command measured in its own process.

    .venv/bin/python benchmarks/big_pool.py                        # 100,000 particles at 32^3
    .venv/bin/python benchmarks/big_pool.py --n 20000 --score 4000 # what fits a busy 2-core CPU
    bash benchmarks/big_pool.sh                                    # the run in docs/commands.md

Steps, in a scratch directory that is deleted at the end (`--keep` keeps it):
1. write N single-particle MRC files (float32, 10 Å voxels; not timed as part of cryoal);
2. `cryoal ingest DIR -o pool.h5` with ingest's default compression (`none`, chosen on purpose by
   ingest: z-scored noisy volumes do not shrink, lzf/gzip save < 10% on noise, see
   benchmarks/ingest_speed.py, so compression would only cost CPU on every read); the script
   reports the compression the pool actually has; the MRC files are deleted right after;
3. a checkpoint of the default architecture (random weights: speed does not depend on them);
4. `cryoal predict` (plain batched inference over the scored particles) and
   `cryoal select --scheme entropy -n 100`, on the whole pool, or with `--score K` on a random
   K of it (`--pool-subset K`; predict then reads a pool of those K particles copied out, so both
   commands process the same particles);
5. a table and a JSON line: seconds, particles/s, peak RSS (VmHWM of the command's process), and
   select throughput as a fraction of plain-inference throughput.

Disk: N x box^3 x 4 bytes twice at the peak (the MRC files and the pool): 26 GB for 100k at 32^3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def write_mrc_files(directory: Path, n: int, box: int, seed: int = 0) -> float:
    """N float32 MRC files, fast: one header (from mrcfile), data from a bank of random volumes."""
    import mrcfile

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((256, box, box, box), dtype=np.float32)
    probe = directory / ".probe.mrc"
    with mrcfile.new(probe, overwrite=True) as m:
        m.set_data(bank[0])
        m.voxel_size = 10.0
    header = probe.read_bytes()[:1024]
    probe.unlink()
    t0 = time.perf_counter()
    for i in range(n):
        # shift and scale each copy so no two files are the same bytes
        vol = bank[i % len(bank)] * np.float32(1 + (i % 97) / 97) + np.float32(i % 13)
        sub = directory / f"{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(exist_ok=True)
        with open(sub / f"p{i:07d}.mrc", "wb") as fh:
            fh.write(header)
            fh.write(vol.tobytes())
    return time.perf_counter() - t0


def run_cli(args: list[str], workdir: Path, env_extra: dict | None = None) -> dict:
    """Run `cryoal ARGS` in a fresh process; returns seconds, peak RSS (MiB) and the output."""
    from peak_rss import run_cryoal  # benchmarks/peak_rss.py, beside this script

    res = run_cryoal(args, env_extra)
    if res.returncode != 0 or res.peak_mib is None:
        raise SystemExit(f"cryoal {' '.join(args)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
    return {"seconds": res.seconds, "peak_rss_mib": res.peak_mib, "stdout": res.stdout}


def make_checkpoint(path: Path, box: int, n_classes: int, arch: str | None) -> str:
    """A randomly initialised default-architecture model for `box`^3 particles."""
    import torch

    from cryoal.learn.checkpoint import save_checkpoint
    from cryoal.models import DEFAULT_ARCH, build_model

    arch = arch or DEFAULT_ARCH
    torch.manual_seed(0)
    model = build_model(arch, (box,) * 3, n_classes)
    names = [f"class{k}" for k in range(n_classes)]
    save_checkpoint(path, model, {"mode": "subtomogram", "class_names": names, "input_shape": [box] * 3,
                                  "box": box, "voxel_size": 10.0, "arch": arch})
    return arch


def subset_pool(pool_path: Path, out: Path, k: int, seed: int) -> None:
    """Copy the particles `select --pool-subset k --seed seed` scores into a pool of their own."""
    from cryoal.io.pool import PoolWriter, open_pool
    from cryoal.io.prefetch import BatchReader

    with open_pool(pool_path) as pool:
        idx = np.sort(np.random.default_rng(seed).choice(len(pool), size=k, replace=False))
        with PoolWriter(out, shape=pool.shape, voxel_size=pool.voxel_size, compression=None) as w:
            for b, vols in BatchReader(pool, idx, 512):
                w.add(vols, list(pool.particle_ids[b]), list(pool.sources[b]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="particles in the pool")
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--score", type=int, default=0, help="score a random K of the pool (0: all)")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--arch", default=None, help="model architecture (default: cryoal's default)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--repeats", type=int, default=1,
                    help="alternate predict and select this many times; report medians (shared CPUs)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="cryoal-bigpool-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "n": args.n, "box": args.box, "score": args.score or args.n, "batch_size": args.batch_size,
        "device": args.device, "cpus": len(os.sched_getaffinity(0)),
    }
    try:
        mrc_dir = work / "mrc"
        report["write_mrc_s"] = write_mrc_files(mrc_dir, args.n, args.box)
        print(f"wrote {args.n} MRC files in {report['write_mrc_s']:.0f} s", file=sys.stderr)
        pool = work / "pool.h5"
        ing = run_cli(["ingest", str(mrc_dir), "-o", str(pool)], work)  # ingest's default compression
        shutil.rmtree(mrc_dir)
        report["ingest"] = {"seconds": ing["seconds"], "per_s": args.n / ing["seconds"],
                            "peak_rss_mib": ing["peak_rss_mib"], "pool_gb": pool.stat().st_size / 1e9}
        import h5py

        with h5py.File(pool, "r") as h5:
            report["compression"] = h5["volumes"].compression or "none"
        print(f"ingest: {ing['seconds']:.0f} s, pool {report['ingest']['pool_gb']:.1f} GB", file=sys.stderr)

        model = work / "model.pt"
        report["arch"] = make_checkpoint(model, args.box, args.classes, args.arch)
        common = ["-m", str(model), "--batch-size", str(args.batch_size), "--device", args.device]
        scored = args.score or args.n
        predict_pool = pool
        subset = []
        if args.score:
            predict_pool = work / "subset.h5"
            subset_pool(pool, predict_pool, args.score, seed=0)
            subset = ["--pool-subset", str(args.score), "--seed", "0"]
        runs: dict[str, list[dict]] = {"predict": [], "select_entropy": []}
        for _ in range(max(args.repeats, 1)):  # interleaved: both see the same machine load
            runs["predict"].append(
                run_cli(["predict", str(predict_pool), *common, "-o", str(work / "pred.csv")], work))
            runs["select_entropy"].append(
                run_cli(["select", str(pool), *common, "--scheme", "entropy", "-n", "100", *subset,
                         "-o", str(work / "sel.csv")], work))
        ratios = [scored / s["seconds"] / (scored / p["seconds"])
                  for p, s in zip(runs["predict"], runs["select_entropy"], strict=True)]
        for name, res in runs.items():
            secs = float(np.median([r["seconds"] for r in res]))
            report[name] = {"seconds": secs, "per_s": scored / secs,
                            "all_seconds": [r["seconds"] for r in res],
                            "peak_rss_mib": max(r["peak_rss_mib"] for r in res)}
        report["select_over_inference"] = float(np.median(ratios))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    gb = report["ingest"]["pool_gb"]
    comp = report["compression"]
    print(f"\nbig pool: {args.n} particles at {args.box}^3 ({gb:.1f} GB, compression {comp}), "
          f"scored {report['score']}, arch {report['arch']}, batch {args.batch_size}, {args.device}, "
          f"{report['cpus']} CPUs")
    print(f"{'step':<16} {'seconds':>9} {'particles/s':>12} {'peak RSS MiB':>13}")
    for name in ("ingest", "predict", "select_entropy"):
        r = report[name]
        print(f"{name:<16} {r['seconds']:>9.1f} {r['per_s']:>12.1f} {r['peak_rss_mib']:>13.0f}")
    print(f"select --scheme entropy throughput = {report['select_over_inference']:.3f} x plain inference "
          f"(median of {max(args.repeats, 1)} interleaved pairs)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
