"""Compare the three 3D CNNs on simulated low-SNR subtomograms: validation accuracy and CPU cost.

Each arch is trained with the product's own `cryoal.learn.train.fit` on the same simulated split
(5 classes, 32^3, 10 A voxels, +-60 deg wedge, CTF at 5 um defocus, `--snr`), for a fixed number of
epochs (no early stopping, so every arch gets the same budget). Reported per arch: best and
final validation accuracy, training seconds per epoch, batched eval-mode inference samples/s, and
parameter count. Timings are measured in this one run and compared as ratios (the CPU may be
shared). Runs that ask for several seeds report the mean and the spread.

    OMP_NUM_THREADS=1 python benchmarks/arch_compare.py --epochs 6 --first-seed 0   # one seed, 3 archs
    # measured: 46 min wall for one seed, 1 thread, on a 2-core CPU shared with other jobs
    # (dsrf3d ~300 s/epoch, rb3d ~60, resnet3d ~45); seeds run in parallel as separate processes
    python benchmarks/arch_compare.py --quick                           # smoke test, ~2 min
    python benchmarks/arch_compare.py --device cuda --train-per-class 200 --epochs 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from cryoal.learn.train import fit, stratified_split
from cryoal.models import ARCHS, DEFAULT_ARCH, build_model
from cryoal.simulate import simulate_particles


def zscore(vols: np.ndarray) -> np.ndarray:
    """Per-particle mean 0, std 1, as `cryoal ingest` stores particles."""
    mean = vols.mean(axis=(1, 2, 3), keepdims=True)
    std = vols.std(axis=(1, 2, 3), keepdims=True)
    return ((vols - mean) / std).astype(np.float32)


def inference_rate(arch: str, box: int, classes: int, device: torch.device, batch: int = 32,
                   repeats: int = 3) -> float:
    """Best-of-`repeats` eval-mode samples/s for one batch (the floor of a scoring pass)."""
    torch.manual_seed(0)
    model = build_model(arch, (box,) * 3, classes).to(device).eval()
    x = torch.randn(batch, 1, box, box, box, device=device)
    times = []
    with torch.no_grad():
        model(x)  # warm-up: kernel selection and allocation
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return batch / min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--train-per-class", type=int, default=30)
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.box, args.train_per_class, args.val_per_class, args.epochs = 16, 8, 4, 2
    archs = args.archs.split(",")
    device = torch.device(args.device)

    results: dict[str, dict[str, list[float]]] = {a: {"best": [], "final": [], "s_epoch": []} for a in archs}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        n_per_class = args.train_per_class + args.val_per_class
        t0 = time.perf_counter()
        vols, labels, names = simulate_particles(
            n_per_class, classes=args.classes, snr=args.snr, box=args.box, voxel_size=10.0, tilt_range=60.0,
            defocus=5.0, seed=1000 + seed,
        )
        vols = zscore(vols)
        train, val = stratified_split(labels, args.val_per_class / n_per_class, seed)
        print(f"seed {seed}: simulated {len(labels)} particles in {time.perf_counter() - t0:.1f}s "
              f"(train {train.size}, val {val.size}, SNR {args.snr})", file=sys.stderr)
        for arch in archs:  # same data, same seed for every arch
            _, m = fit(vols[train], labels[train], vols[val], labels[val], arch=arch, n_classes=args.classes,
                       epochs=args.epochs, batch_size=args.batch_size, patience=args.epochs + 1, seed=seed,
                       device=device)
            hist = m["history"]
            results[arch]["best"].append(m["val_accuracy"])
            results[arch]["final"].append(hist[-1]["val_accuracy"])
            results[arch]["s_epoch"].append(statistics.median(h["seconds"] for h in hist))
            print(f"  {arch:9s} best val acc {m['val_accuracy']:.3f} (epoch {m['best_epoch']}), final "
                  f"{hist[-1]['val_accuracy']:.3f}, {results[arch]['s_epoch'][-1]:.1f} s/epoch, threads "
                  f"{m['cpu_threads']}", file=sys.stderr)

    rates = {a: inference_rate(a, args.box, args.classes, device) for a in archs}
    ref = results[DEFAULT_ARCH]["s_epoch"] if DEFAULT_ARCH in results else results[archs[0]]["s_epoch"]
    chance = 1.0 / args.classes

    def mean_sd(v: list[float]) -> str:
        return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")

    print(f"\n{args.classes} classes, box {args.box}, SNR {args.snr}, CTF 5 um, wedge ±60°; "
          f"{args.train_per_class} train + {args.val_per_class} val per class; {args.epochs} epochs, "
          f"{args.seeds} seed(s); device {device}, torch threads {torch.get_num_threads()}; "
          f"chance {chance:.2f}\n")
    print("| arch | params | best val acc | final val acc | s/epoch | epoch time vs "
          f"{DEFAULT_ARCH} | inference samples/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for a in archs:
        params = sum(p.numel() for p in build_model(a, (args.box,) * 3, args.classes).parameters())
        s = statistics.mean(results[a]["s_epoch"])
        print(f"| {a} | {params:,} | {mean_sd(results[a]['best'])} | {mean_sd(results[a]['final'])} | "
              f"{s:.1f} | {s / statistics.mean(ref):.2f}× | {rates[a]:.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results, "inference_rate": rates}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
