"""The README's image-mode and segmentation-mode figures, reproduced (one thread, CPU):

    .venv/bin/python benchmarks/image_modes.py            # digits (5 seed sets) and the U-Net
    .venv/bin/python benchmarks/image_modes.py --only digits

digits: scikit-learn's 1,797 handwritten digits (8x8) as an image pool, 20 labels per digit drawn
with `numpy.random.default_rng(s)` (s = 0 is the README's example and the image-mode test's set,
s = 1..4 the "four other random seed sets"), `cryoal ingest --mode image`, `label`, `train
--epochs 15 --batch-size 16 --val-fraction 0 --no-augment --seed 0`, `predict`; accuracy of the
200-label model on the other 1,597 digits. The commands run through cryoal's CLI in this process.

U-Net: 72 simulated 32x32 membrane images (`simulate_membranes(72, 32, 2, snr, seed=1)`), a U-Net
fitted on the first 32 (6 epochs, batch 8, lr 3e-3, seed 0, as the segmentation test does), mean
IoU of its predicted masks on the other 40 against the all-background prediction, at SNR 1 and 0.5.

Needs scikit-learn (the digits). Prints one table per part and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run_cli(*args: object) -> None:
    """`cryoal ARGS` in this process; exits with its output on failure."""
    from typer.testing import CliRunner

    from cryoal.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    if res.exit_code != 0:
        sys.exit(f"error: cryoal {' '.join(map(str, args))} failed:\n{res.output}")


def digits_accuracy(root: Path, seed_set: int) -> float:
    """Accuracy on the 1,597 unlabelled digits of a cnn2d trained on 20 labels per digit."""
    from sklearn.datasets import load_digits

    from cryoal.io.tables import read_table

    d = load_digits()
    work = root / f"digits_{seed_set}"
    work.mkdir()
    np.save(work / "digits.npy", d.images.astype(np.float32))
    ids = [f"d{i:04d}" for i in range(len(d.target))]
    (work / "digits.csv").write_text(
        "particle_id,path\n" + "".join(f"{p},{i + 1}@digits.npy\n" for i, p in enumerate(ids)))
    rng = np.random.default_rng(seed_set)
    chosen = np.concatenate([rng.choice(np.flatnonzero(d.target == c), 20, replace=False) for c in range(10)])
    (work / "seed.csv").write_text(
        "particle_id,label\n" + "".join(f"{ids[i]},{d.target[i]}\n" for i in sorted(chosen)))
    pool, model, pred = work / "digits.h5", work / "digits.pt", work / "pred.csv"
    run_cli("ingest", work / "digits.csv", "-o", pool, "--mode", "image")
    run_cli("label", pool, work / "seed.csv")
    run_cli("train", pool, "-o", model, "--epochs", "15", "--batch-size", "16", "--val-fraction", "0",
            "--no-augment", "--device", "cpu", "--seed", "0")
    run_cli("predict", pool, "-m", model, "-o", pred, "--device", "cpu")
    got = np.asarray(read_table(pred)["predicted_label"]).astype(int)
    rest = np.setdiff1d(np.arange(len(ids)), chosen)
    return float((got[rest] == d.target[rest]).mean())


def unet_miou(snr: float) -> tuple[float, float]:
    """(U-Net mIoU, all-background mIoU) on 40 test membrane images, trained on 32."""
    from cryoal.io.preprocess import zscore
    from cryoal.learn.inference import predict_proba
    from cryoal.learn.metrics import confusion_matrix, mean_iou
    from cryoal.learn.train import fit
    from cryoal.simulate.membranes import simulate_membranes

    img, masks = simulate_membranes(72, 32, 2, snr=snr, seed=1)
    x = np.stack([zscore(i) for i in img])
    model, _ = fit(x[:32], masks[:32], None, None, n_classes=2, mode="segmentation", epochs=6,
                   batch_size=8, lr=3e-3, device="cpu", seed=0)
    pred = predict_proba(model, x[32:], "cpu").argmax(1)
    unet = mean_iou(confusion_matrix(masks[32:], pred, 2))
    background = mean_iou(confusion_matrix(masks[32:], np.zeros_like(pred), 2))
    return float(unet), float(background)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["digits", "unet"], help="run one part")
    ap.add_argument("--seed-sets", type=int, default=5, help="digits label sets (rng seeds 0..K-1)")
    args = ap.parse_args()
    # one thread, as in the tests: cryoal's commands read OMP_NUM_THREADS, fit() uses torch's setting
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    out: dict = {}
    if args.only in (None, "digits"):
        print("digits: 200 labels (20 per digit), accuracy on the other 1,597")
        print(f"{'seed set':>8} {'accuracy':>9} {'seconds':>8}")
        out["digits"] = {}
        with tempfile.TemporaryDirectory(prefix="cryoal-digits-") as tmp:
            for s in range(args.seed_sets):
                t0 = time.perf_counter()
                acc = digits_accuracy(Path(tmp), s)
                out["digits"][s] = acc
                print(f"{s:>8} {acc:>9.2%} {time.perf_counter() - t0:>8.1f}", flush=True)
    if args.only in (None, "unet"):
        print("U-Net on simulated membranes: 32 train, 40 test images, 32x32")
        print(f"{'SNR':>5} {'U-Net mIoU':>11} {'all-background':>15} {'seconds':>8}")
        out["unet"] = {}
        for snr in (1.0, 0.5):
            t0 = time.perf_counter()
            unet, background = unet_miou(snr)
            out["unet"][snr] = {"unet": unet, "background": background}
            print(f"{snr:>5} {unet:>11.3f} {background:>15.3f} {time.perf_counter() - t0:>8.1f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
