"""Which pick spreads a batch best in an embedding: a linear-probe AL loop on a pool's embedding.

Usage: python benchmarks/embedding_picks.py POOL TRUTH_CSV [--seeds 5] [--initial 10] [--batch 10]
       [--cycles 4]

The learner is a logistic regression on the pool's `embedding` (from `cryoal pretrain`); a pool
without one gets rotation-invariant stand-in features computed here (log radial power spectrum and
radial intensity profile, standardised, PCA 16), which cluster by class on `cryoal simulate`
pools. Each seed holds out 30 % as the test split, starts from `--initial` random labels (or
TypiClust's, for the `typiclust` row), and runs `--cycles` rounds of `--batch` picks; the score is
the probe's entropy (`max-entropy`), drawn by each pick of `cryoal.scoring.picks` (the code
`select --pick` runs). Prints, per variant, the mean test accuracy over the cycles (an area under
the budget curve) and the final one, each as mean and paired difference from `random` over seeds.

This measures the picks' batch design on a fixed embedding, cheaply; the CNN study
(`cryoal benchmark`) is what decides the project's defaults.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

from cryoal.io.pool import open_pool
from cryoal.scoring.picks import pick_order
from cryoal.scoring.typiclust import typiclust_order
from cryoal.scoring.uncertainty import entropy

VARIANTS = ("random", "typiclust", "top", "power-balanced", "cluster", "cluster-power")


def stand_in_features(volumes: np.ndarray, dims: int = 16) -> np.ndarray:
    """Rotation-invariant features per volume: shell means of the log power spectrum and of the
    intensities (shells of integer radius about the box centre), standardised, PCA to `dims`."""
    from sklearn.decomposition import PCA

    v = volumes.astype(np.float64)
    v = (v - v.mean(axis=(1, 2, 3), keepdims=True)) / v.std(axis=(1, 2, 3), keepdims=True)
    box = v.shape[1]
    axis = np.arange(box) - box / 2
    radius = np.sqrt(sum(a**2 for a in np.meshgrid(axis, axis, axis, indexing="ij"))).astype(int).ravel()
    keep = radius < box // 2
    counts = np.bincount(radius[keep])
    power = np.abs(np.fft.fftshift(np.fft.fftn(v, axes=(1, 2, 3)), axes=(1, 2, 3))) ** 2

    def shells(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(len(a), -1)[:, keep]
        return np.stack([np.bincount(radius[keep], weights=row) / counts for row in flat])

    feats = np.hstack([np.log(shells(power) + 1e-6), shells(v)])
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-12)
    return PCA(dims, random_state=0).fit_transform(feats)


def load(pool_path: str, truth_csv: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(embedding, truth class index, particle ids, where the embedding came from)."""
    with open_pool(pool_path) as pool:
        ids = np.asarray(pool.particle_ids).astype(str)
        if "embedding" in pool.h5:
            from cryoal.io.embedding import read_embeddings

            x, source = read_embeddings(pool).values.astype(np.float64), "the pool's embedding"
        else:
            x, source = stand_in_features(pool.read(np.arange(len(pool)))), "spectral stand-in features"
    with open(truth_csv, newline="") as fh:
        truth = {r["particle_id"]: r["label"] for r in csv.DictReader(fh)}
    names = sorted(set(truth.values()))
    y = np.array([names.index(truth[i]) for i in ids])
    return x, y, ids, source


def probe(x: np.ndarray, y: np.ndarray, labelled: np.ndarray, n_classes: int):
    """A logistic regression on the labelled rows; returns probabilities (N, C) for every row."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=2000).fit(x[labelled], y[labelled])
    probs = np.zeros((len(x), n_classes))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def run_variant(variant: str, x: np.ndarray, y: np.ndarray, ids: np.ndarray, seed: int,
                args: argparse.Namespace) -> list[float]:
    """Test accuracy after the initial labels and after each cycle, for one variant and seed."""
    rng = np.random.default_rng(seed)
    n_classes = int(y.max()) + 1
    order = rng.permutation(len(x))
    test, pool = order[: int(0.3 * len(x))], np.sort(order[int(0.3 * len(x)) :])
    if variant == "typiclust":
        first, _ = typiclust_order(x[pool], np.zeros(pool.size, bool), args.initial, seed=seed)
        labelled = pool[first]
    else:
        labelled = rng.choice(pool, args.initial, replace=False)
    accs = []
    for cycle in range(args.cycles + 1):
        probs = probe(x, y, labelled, n_classes)
        accs.append(float((probs[test].argmax(1) == y[test]).mean()))
        if cycle == args.cycles:
            break
        cand = np.setdiff1d(pool, labelled)
        picked = _pick(variant, x, probs, cand, labelled, ids, seed + 97 * cycle, args.batch)
        labelled = np.concatenate([labelled, cand[picked]])
    return accs


def _pick(variant: str, x, probs, cand, labelled, ids, seed: int, n: int) -> np.ndarray:
    if variant == "random":
        return np.random.default_rng(seed).choice(cand.size, n, replace=False)
    if variant == "typiclust":
        feats = np.concatenate([x[cand], x[labelled]])
        return typiclust_order(feats, np.arange(len(feats)) >= cand.size, n, seed=seed)[0]
    scores = entropy(probs[cand])
    return pick_order(scores, ids[cand], probs[cand].argmax(1), n, pick=variant, seed=seed,
                      embedding=(x[cand], x[labelled]))


def main(argv: list[str]) -> None:
    """Run every variant for every seed and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pool")
    ap.add_argument("truth")
    for name, default in (("seeds", 5), ("initial", 10), ("batch", 10), ("cycles", 4)):
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args(argv)
    x, y, ids, source = load(args.pool, args.truth)
    print(f"{len(x)} particles, {int(y.max()) + 1} classes, {x.shape[1]}-d {source}; "
          f"{args.initial} + {args.cycles} x {args.batch} labels, {args.seeds} seeds")
    res = {v: np.array([run_variant(v, x, y, ids, s, args) for s in range(args.seeds)]) for v in VARIANTS}
    base_aubc, base_final = res["random"].mean(1), res["random"][:, -1]
    diff = "- random [95% CI]"
    print(f"{'variant':16s} {'mean acc':>9s} {diff:>26s} {'final':>7s} {diff:>26s}")
    for v, acc in res.items():
        aubc, final = acc.mean(1), acc[:, -1]
        print(f"{v:16s} {aubc.mean():9.3f} {paired(aubc - base_aubc):>26s} {final.mean():7.3f} "
              f"{paired(final - base_final):>26s}")


def paired(diff: np.ndarray) -> str:
    """'mean [low, high]': the paired difference's mean and its 95 % t interval over seeds."""
    from scipy.stats import t

    if len(diff) < 2 or not diff.any():
        return f"{diff.mean():+.3f}"
    half = t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    return f"{diff.mean():+.3f} [{diff.mean() - half:+.3f}, {diff.mean() + half:+.3f}]"


if __name__ == "__main__":
    main(sys.argv[1:])
