"""Why does plain gradient-norm selection lose to random in the SNR study? Look at the cycle-0 model.

    python benchmarks/al_diagnose.py RESULTS/snr_0.1 [--seeds 3] [--top 25] [-o diagnose.md]
    python benchmarks/al_diagnose.py RESULTS/snr_0.1 --calibration-only   # calibration columns only

For each seed of a finished `cryoal benchmark` directory (the study's run.json gives the pool, the
truth table and every option), this rebuilds the seed's test split and initial labelled set and
retrains the cycle-0 model exactly as the benchmark did (same code, same training seed; the test
accuracy printed next to the one in curves.csv checks that), or loads the benchmark's own cached
copy from RESULTS/snr_x/state/ while a study still keeps it there. It then measures, on the first
selection round's candidates:

- calibration on the test split: mean confidence vs accuracy, expected calibration error (10
  equal-width bins) and the negative log-likelihood, of the raw softmax and of the softmax at the
  temperature `cryoal train` fitted on the model's own validation split (T; 1 when the run used
  no validation split). Only the test split is read, nothing is tuned on it.
- what the model predicts: the share of the candidates given the most-predicted class.
- what `expected` picks (the top `--top`, the benchmark's budget): the share of the most common
  TRUE class among them, and the share predicted as the model's most-predicted class.
- what drives the score: Spearman correlations of the `expected` score with the predictive
  entropy and with the norm of the penultimate features (the last layer's gradient for class c is
  (p - e_c) times those features, so their norm multiplies the uncertainty), and the ratio of the
  largest to the smallest per-true-class mean feature norm, and the Spearman correlation, over the
  true classes, between how often `expected` picked a class and the class's mean feature norm.
- the overlap (Jaccard) between the top picks of `expected` and of `max-entropy`.

Nothing here is used by cryoal; it is the evidence behind docs/studies.md's explanation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width confidence bins of |acc - conf| x bin share."""
    from cryoal.learn.calibration import confidence_ece

    return confidence_ece(confidence, correct, bins)


def top_share(labels: np.ndarray) -> float:
    """Share of the most common value."""
    return float(np.bincount(labels).max() / labels.size) if labels.size else float("nan")


def scores_and_features(model, data, rows: np.ndarray, batch: int = 32, with_scores: bool = True):
    """(raw probabilities, expected scores, penultimate feature norms) of the given pool rows
    (scores empty when `with_scores` is False: calibration needs only the probabilities). The
    scores are what `select` computes (at the model's fitted temperature)."""
    import torch

    from cryoal.scoring import as_model_input, score
    from cryoal.scoring.diversity import penultimate
    from cryoal.scoring.gram import eval_mode

    probs, expected, feat_norm = [], [], []
    for start in range(0, rows.size, batch):
        x = as_model_input(model, data.read(rows[start : start + batch]))
        with torch.no_grad(), eval_mode(model):
            logits, feats = penultimate(model, x)
        probs.append(torch.softmax(logits.double(), dim=1).numpy())
        feat_norm.append(feats.double().norm(dim=1).numpy())
        if with_scores:
            expected.append(score(model, x, "expected"))
    return (np.concatenate(probs), np.concatenate(expected) if expected else np.empty(0),
            np.concatenate(feat_norm))


def cycle0_model(data, config, seed: int, split, state_dir: Path | None):
    """The seed's cycle-0 model: the benchmark's own cached copy (OUT/state/cycle0-seed<k>.pt, kept
    while a study runs) when it was trained on this initial set, else retrained exactly as the
    benchmark trains it."""
    import torch

    from cryoal.benchmark.steps import train_model
    from cryoal.learn.calibration import set_temperature

    path = state_dir / f"cycle0-seed{seed}.pt" if state_dir is not None else None
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("initial_ids") == [str(i) for i in data.particle_ids[split.initial]]:
            model = train_model(data, split.initial, config, seed, 0, build_only=True)
            model.load_state_dict(blob["state_dict"])
            return set_temperature(model, float(blob.get("temperature", 1.0)))
    return train_model(data, split.initial, config, seed, 0)


def diagnose_seed(data, config, seed: int, top: int, state_dir: Path | None = None,
                  calibration_only: bool = False) -> dict:
    """The measurements above for one seed's cycle-0 model (`calibration_only`: the test-split
    columns alone, without scoring the candidates)."""
    from scipy.stats import spearmanr

    from cryoal.benchmark.loop import make_split
    from cryoal.scoring.uncertainty import entropy

    split = make_split(data.truth, seed, config)
    model = cycle0_model(data, config, seed, split, state_dir)
    from cryoal.learn.calibration import softmax, temperature_of

    test_p, _, _ = scores_and_features(model, data, split.test, with_scores=False)
    t = temperature_of(model)
    test_p_cal = softmax(np.log(np.clip(test_p, 1e-300, None)), t)  # softmax(z / T) from softmax(z)
    truth_test = data.truth[split.test]
    pred_test = test_p.argmax(axis=1)
    conf = test_p.max(axis=1)
    correct = (pred_test == truth_test).astype(np.float64)
    row = {
        "seed": seed,
        "test_acc": float(correct.mean()),
        "mean_conf": float(conf.mean()),
        "ece": ece(conf, correct),
        "nll": _nll(test_p, truth_test),
        "temperature": t,
        "mean_conf_cal": float(test_p_cal.max(axis=1).mean()),
        "ece_cal": ece(test_p_cal.max(axis=1), (test_p_cal.argmax(axis=1) == truth_test).astype(float)),
        "nll_cal": _nll(test_p_cal, truth_test),
    }
    if calibration_only:
        return row

    candidates = np.setdiff1d(split.selectable, split.initial)
    p, expected, feat_norm = scores_and_features(model, data, candidates)
    pred = p.argmax(axis=1)
    truth = data.truth[candidates]
    # the benchmark ranks by score, ties by particle id; ties do not occur with float scores
    picks = np.argsort(-expected, kind="stable")[:top]
    ent = entropy(p)
    ent_picks = np.argsort(-ent, kind="stable")[:top]
    classes = np.unique(truth)
    class_norms = np.array([feat_norm[truth == c].mean() for c in classes])
    class_picks = np.array([np.sum(truth[picks] == c) for c in classes])
    return {
        **row,
        "pred_top_share": top_share(pred),
        "pick_true_top_share": top_share(truth[picks]),
        "pick_in_top_pred": float(np.mean(pred[picks] == np.bincount(pred).argmax())),
        "rho_entropy": float(spearmanr(expected, ent).statistic),
        "rho_featnorm": float(spearmanr(expected, feat_norm).statistic),
        "featnorm_class_ratio": float(class_norms.max() / class_norms.min()),
        "rho_class_picks_featnorm": float(spearmanr(class_picks, class_norms).statistic),
        "jaccard_maxent": float(len(set(picks) & set(ent_picks)) / len(set(picks) | set(ent_picks))),
    }


def _nll(p: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(truth.size), truth], 1e-12, None)).mean())


COLUMNS = [
    ("test_acc", "test acc"), ("mean_conf", "mean conf"), ("ece", "ECE"), ("nll", "NLL"),
    ("temperature", "T"), ("mean_conf_cal", "mean conf at T"), ("ece_cal", "ECE at T"),
    ("nll_cal", "NLL at T"),
    ("pred_top_share", "top predicted class share"), ("pick_true_top_share", "picks: top true class"),
    ("pick_in_top_pred", "picks in top predicted class"), ("rho_entropy", "ρ(score, entropy)"),
    ("rho_featnorm", "ρ(score, ‖h‖)"), ("featnorm_class_ratio", "‖h‖ class max/min"),
    ("rho_class_picks_featnorm", "ρ over classes(picks, mean ‖h‖)"),
    ("jaccard_maxent", "Jaccard with max-entropy"),
]


def main(argv: list[str] | None = None) -> None:
    """Diagnose every seed of one benchmark directory; print (and optionally write) a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path, help="a finished `cryoal benchmark` output directory")
    ap.add_argument("--seeds", type=int, default=None, help="seeds to diagnose (default: the run's)")
    ap.add_argument("--top", type=int, default=None, help="picks to inspect (default: the run's budget)")
    ap.add_argument("-o", "--output", type=Path, help="append the Markdown rows to this file")
    ap.add_argument("--calibration-only", action="store_true",
                    help="only the test-split calibration columns (no candidate scoring)")
    args = ap.parse_args(argv)

    import torch

    from cryoal.benchmark.loop import BenchmarkConfig
    from cryoal.benchmark.report import read_curves
    from cryoal.benchmark.truth import load_truth
    from cryoal.io.pool import open_pool

    torch.set_num_threads(1)
    run = json.loads((args.bench_dir / "run.json").read_text())
    options = {k: v for k, v in run["options"].items() if k in BenchmarkConfig.__dataclass_fields__}
    config = BenchmarkConfig(**options)
    top = args.top or config.budget
    recorded = {r.seed: r.accuracy for r in read_curves(args.bench_dir / "curves.csv") if r.cycle == 0}
    lines = []
    with open_pool(run["pool"]) as pool:
        data = load_truth(pool, run["truth"])
        for seed in range(args.seeds if args.seeds is not None else config.seeds):
            row = diagnose_seed(data, config, seed, top, args.bench_dir / "state", args.calibration_only)
            cells = " | ".join(f"{row[k]:.3f}" if k in row else "–" for k, _ in COLUMNS)
            acc0 = recorded.get(seed, float("nan"))
            lines.append(f"| {args.bench_dir.name} | {seed} | {acc0:.3f} | {cells} |")
            print(lines[-1], flush=True)
    if args.output:  # append, atomically: the old rows plus these, then one rename
        from cryoal.io.atomic import atomic_open

        old = args.output.read_text() if args.output.exists() else (
            "| run | seed | curves.csv acc | " + " | ".join(h for _, h in COLUMNS) + " |\n"
            "|---|---:|---:|" + "---:|" * len(COLUMNS) + "\n")
        with atomic_open(args.output) as fh:
            fh.write(old + "\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
