"""How often `train` keeps a fitted temperature, by validation size and true miscalibration.

Synthetic validation splits whose calibrated temperature is known: logits z ~ 1.5 N(0, 1) over
C classes, labels drawn from softmax(z), and the logits handed to the decision are T_true * z
(T_true = 1: already calibrated; 2: over-confident; 0.5: under-confident). For each (n, T_true)
the share of `--trials` splits in which `cryoal.learn.calibration.decide_temperature` keeps T is
printed: at T_true = 1 that is the false-keep rate (the test's level, 5 % by design), elsewhere
its power. Also the median |log T_fitted - log T_true| of the splits where T was kept.

    python benchmarks/calibration_decision.py             # 400 trials a cell: 19 s on a shared 2-core CPU
    python benchmarks/calibration_decision.py --trials 50  # quick
"""

from __future__ import annotations

import argparse

import numpy as np

from cryoal.learn.calibration import decide_temperature, softmax


def split(n: int, true_t: float, rng: np.random.Generator, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of n particles whose calibrated temperature is `true_t`."""
    z = rng.normal(size=(n, c)) * 1.5
    cum = softmax(z).cumsum(axis=1)
    y = np.minimum((rng.random((n, 1)) > cum).sum(axis=1), c - 1)
    return z * true_t, y


def main() -> None:
    """Print the keep-rate table (markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = (10, 19, 20, 40, 100, 300)
    temps = (1.0, 1.25, 1.5, 2.0, 3.0, 0.5)
    rng = np.random.default_rng(args.seed)
    print(f"share of {args.trials} splits that keep the fitted T ({args.classes} classes); "
          "in brackets the median |log T - log T_true| where kept")
    print("| n_val | " + " | ".join(f"T_true {t:g}" for t in temps) + " |")
    print("|---" * (len(temps) + 1) + "|")
    for n in sizes:
        cells = []
        for t in temps:
            kept, errors = 0, []
            for _ in range(args.trials):
                d = decide_temperature(*split(n, t, rng, args.classes))
                if d["applied"]:
                    kept += 1
                    errors.append(abs(np.log(d["temperature"] / t)))
            err = f" ({np.median(errors):.2f})" if errors else ""
            cells.append(f"{kept / args.trials:.3f}{err}")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
