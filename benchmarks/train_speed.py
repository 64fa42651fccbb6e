"""Training throughput: samples/s per architecture, mixed precision (AMP) against float32.

    python benchmarks/train_speed.py --device cuda                 # every arch, 32^3, batch 32, AMP and fp32
    python benchmarks/train_speed.py --device cpu --box 16 --steps 4 --arch rb3d

Each configuration trains with `cryoal`'s own training loop (`fit`: AdamW, autocast with the dtype
it picks for the device, GradScaler where fp16 needs one, the same augmentation) on random data:
one epoch of `--steps` batches to warm up (allocator, cuDNN kernel choice), then a timed epoch.
The time runs from the end of the timed epoch's first batch to the end of its last, so it holds
`steps - 1` whole training steps and nothing else (no validation, no BatchNorm recalibration).
`fit` reads the loss of every batch back to the host, so each step ends synchronised.
"fp32" runs the same loop with autocast off; "amp" is what `cryoal train` does on that device
(on a CPU that is float32 too: the dtype column says which ran).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryoal.models import ARCHS, DEFAULT_ARCH  # noqa: E402


def training_module():
    """The module holding `fit` and `_amp_settings`."""
    return importlib.import_module("cryoal.learn.train")


def measure(arch: str, precision: str, args, device: torch.device) -> dict:
    """Samples/s of the timed epoch for one architecture and precision."""
    train = training_module()
    n = args.batch * args.steps
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, *(args.box,) * 3)).astype(np.float32)
    y = np.arange(n) % args.classes
    stamps: list[float] = []

    def progress(info: dict) -> None:
        if info["event"] == "batch" and info["epoch"] == 2:
            stamps.append(time.perf_counter())

    original = train._amp_settings
    if precision == "fp32":  # the same loop with autocast off
        train._amp_settings = lambda dev: (None, False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _, metrics = train.fit(x, y, None, None, arch=arch, n_classes=args.classes, epochs=2,
                               batch_size=args.batch, seed=0, device=device, progress=progress,
                               augment=args.augment)
    finally:
        train._amp_settings = original
    steps = len(stamps) - 1
    seconds = stamps[-1] - stamps[0]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"arch": arch, "precision": precision, "dtype": metrics["amp"] or "float32",
            "samples_per_s": steps * args.batch / seconds, "s_per_step": seconds / steps, "peak_bytes": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="all", help=f"one of {', '.join(ARCHS)}, or 'all' (default)")
    ap.add_argument("--box", type=int, default=32)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="batches per epoch (one warm-up epoch, one timed)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="the training augmentation (on by default, as in `cryoal train`)")
    ap.add_argument("--precision", choices=("both", "amp", "fp32"), default="both")
    args = ap.parse_args()
    if args.steps < 2 or args.batch < 2:
        ap.error("--steps and --batch must be at least 2")
    device = torch.device(args.device)
    archs = list(ARCHS) if args.arch == "all" else [args.arch]
    if any(a not in ARCHS for a in archs):
        ap.error(f"--arch {args.arch}: choose one of {', '.join(ARCHS)} or all (default: {DEFAULT_ARCH})")
    precisions = ["amp", "fp32"] if args.precision == "both" else [args.precision]
    cpu = f"{torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    print(f"# training speed: box {args.box}^3, {args.classes} classes, batch {args.batch}, "
          f"{args.steps - 1} timed steps, augment {'on' if args.augment else 'off'}, {device} ({name}), "
          f"torch {torch.__version__}, TF32 cudnn {torch.backends.cudnn.allow_tf32} "
          f"matmul {torch.backends.cuda.matmul.allow_tf32}")
    print("| arch | precision | dtype | samples/s | s/step | peak MiB |")
    print("|---|---|---|---|---|---|")
    rows = []
    for arch in archs:
        for precision in precisions:
            r = measure(arch, precision, args, device)
            rows.append(r)
            peak = f"{r['peak_bytes'] / 2**20:.0f}" if r["peak_bytes"] is not None else "-"
            print(f"| {arch} | {precision} | {r['dtype']} | {r['samples_per_s']:.1f} | {r['s_per_step']:.4f} "
                  f"| {peak} |", flush=True)
    if len(precisions) == 2:
        print()
        for arch in archs:
            by = {r["precision"]: r for r in rows if r["arch"] == arch}
            amp, fp32 = by["amp"], by["fp32"]
            ratio = amp["samples_per_s"] / fp32["samples_per_s"]
            print(f"{arch}: AMP ({amp['dtype']}) / fp32 throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
