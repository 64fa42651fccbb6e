"""The few lines a demo ends with: how each training went, what was picked, how good the last model is.

    python scripts/demo_summary.py --models cycle0.pt model.pt --selection to_label.csv \
        --predictions predictions.csv --truth truth.csv

Per checkpoint (one per cycle, in order): labels trained on, epochs run (training stops early on
validation accuracy), the validation accuracy and the fitted softmax temperature T. With `--truth`
(a `particle_id,label` table, known only for simulated data): the selection's picks per true class
and the predictions' accuracy. The README quotes these lines.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import torch


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as dicts."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def training_line(cycle: int, checkpoint: dict) -> str:
    """One line for one training: labels, epochs run (best epoch), validation accuracy, T."""
    m = checkpoint.get("metrics", {})
    n_labels = int(m.get("n_train", 0)) + int(m.get("n_val", 0))
    val = m.get("val_accuracy")
    val_text = "no validation split" if val is None else f"validation accuracy {val:.3f} on {m['n_val']}"
    t = float(checkpoint.get("temperature", 1.0))
    return (f"cycle {cycle}: {n_labels} labels, {m.get('epochs_run', '?')} epochs "
            f"(best {m.get('best_epoch', '?')}), {val_text}, T = {t:.3f}")


def picks_line(selection: list[dict[str, str]], truth: dict[str, str], classes: list[str]) -> str:
    """How many of the selected particles are truly of each class, every class named (0 included)."""
    counts = Counter(truth.get(r["particle_id"], "?") for r in selection)
    order = sorted(classes, key=lambda c: (-counts[c], classes.index(c)))
    parts = [f"{c} {counts[c]}" for c in order] + ([f"unknown {counts['?']}"] if counts["?"] else [])
    return f"picked {len(selection)} to label, by true class: " + ", ".join(parts)


def accuracy_line(predictions: list[dict[str, str]], truth: dict[str, str], n_classes: int) -> str:
    """Share of particles whose predicted label is the true one, with chance (1 / classes)."""
    hits = sum(truth.get(r["particle_id"]) == r["predicted_label"] for r in predictions)
    n = len(predictions)
    return (f"final model: right on {hits} of {n} particles ({hits / max(n, 1):.3f}; "
            f"chance {1 / max(n_classes, 1):.3f})")


def summary_lines(models: list[Path], selection: Path | None, predictions: Path | None,
                  truth: Path | None) -> list[str]:
    """Every line of the summary, in print order."""
    checkpoints = [torch.load(p, map_location="cpu", weights_only=True) for p in models]
    lines = [training_line(k, ck) for k, ck in enumerate(checkpoints)]
    if truth is None:
        return lines
    true = {r["particle_id"]: r["label"] for r in read_rows(truth)}
    classes = list(checkpoints[-1]["class_names"]) if checkpoints else sorted(set(true.values()))
    if selection is not None:
        lines.append(picks_line(read_rows(selection), true, classes))
    if predictions is not None:
        lines.append(accuracy_line(read_rows(predictions), true, len(classes)))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", required=True,
                    help="one checkpoint per cycle, in order")
    ap.add_argument("--selection", type=Path, help="select's CSV")
    ap.add_argument("--predictions", type=Path, help="predict's CSV")
    ap.add_argument("--truth", type=Path, help="particle_id,label of every particle, if known")
    args = ap.parse_args()
    print("\n".join(summary_lines(args.models, args.selection, args.predictions, args.truth)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
