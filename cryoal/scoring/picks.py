"""Batch acquisition: how the n rows of a selection are drawn from per-particle scores.

A score scheme gives one number per candidate; a *pick* turns those numbers into an ordered batch.
The paper's rule is `top` (the global top n). A single score ranks particles one at a time, so the
top n piles up wherever the score is largest; in this project's studies that was two or three
classes (docs/studies.md, "The SNR study"). The other picks spread the batch:

- `top`: the n largest scores (ties by particle_id).
- `power`: n drawn without replacement with probability proportional to score^beta (stochastic
  power acquisition, Kirsch et al., "Stochastic Batch Acquisition", TMLR 2023), via the
  Gumbel-top-k trick: the n largest of beta * log(score) + Gumbel noise.
- `softrank`: the same draw with probability proportional to rank^(-beta) (rank 1 = best score);
  for scores that can be zero or negative.
- `balanced`: round robin over the predicted classes, each class in score order (`select
  --balance`).
- `power-balanced`: the power draw inside each predicted class, taken round robin.
- `classnorm`: the power draw on score / (mean score of the particle's predicted class). This
  project's diagnosis found that the gradient norm's scale follows the class (the classes picked
  most are those with the largest penultimate features); dividing by the class mean removes that
  per-class scale while still letting a class with many high-scoring particles get more picks
  than `balanced` would give it. The idea is per-class score normalisation, as used in
  class-balanced acquisition (e.g. Bengar et al., "Class-Balanced Active Learning for Image
  Classification", WACV 2022), combined with Kirsch et al.'s power draw.
- `cluster`, `cluster-power` (embedding-aware; the pool needs embeddings, `cryoal pretrain`):
  k-means of the labelled particles' and the candidates' embeddings into labelled + n clusters,
  as TypiClust does; each next pick comes from the cluster with the fewest labelled-or-picked
  particles (so the uncovered clusters first, largest first), and inside it the best score
  (`cluster`) or the power draw (`cluster-power`). The batch then covers the data as TypiClust's
  does, while the score still chooses inside each region (`cryoal.scoring.typiclust`).

The default (`default_pick`) is `power-balanced`: this project's SNR study found it at least as
good as `top` at all four SNRs. It is also the default on a pool with embeddings: in the
pretraining study (CNNs from the pool's encoder, fine-tuned or on a frozen trunk, 6 seeds, SNR 0.1
and 0.05) `cluster-power` had a lower mean than `power-balanced` in all four cells, though it had
come first on a linear probe of an embedding (benchmarks/embedding_picks.py). `random` keeps
`top`: its scores are uniform draws, so `top` is plain random sampling, the reference every study
compares with.

Every pick is a pure function of (scores, particle ids, predicted classes, n, beta, seed): the
sampled ones draw their noise from `seed` alone, one number per candidate in the order given, so
a torchrun job (rank 0 gathers the scores in that order) picks exactly what one process picks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cryoal.errors import OptionError

PICKS = ("top", "power", "softrank", "balanced", "power-balanced", "classnorm", "cluster", "cluster-power")
# the picks whose probabilities read log(score): they need scores >= 0
NEEDS_NONNEGATIVE = ("power", "power-balanced", "classnorm", "cluster-power")
# the picks that read the pool's embeddings
EMBEDDING_PICKS = ("cluster", "cluster-power")
# the default on every pool: the pretraining study found no embedding pick ahead of it where the
# pool has embeddings (docs/studies.md), so the default does not depend on the pool
DEFAULT_PICK = "power-balanced"
# schemes whose default pick is not DEFAULT_PICK: `random` stays plain random sampling
SCHEME_DEFAULT_PICKS = {"random": "top"}
PICK_HELP = {
    "top": "the global top N (the paper's rule)",
    "power": "N drawn with probability proportional to score^beta (Kirsch et al. 2023)",
    "softrank": "N drawn with probability proportional to rank^-beta",
    "balanced": "round robin over predicted classes, each in score order (= --balance)",
    "power-balanced": "the power draw inside each predicted class, round robin",
    "classnorm": "the power draw on score / mean score of its predicted class",
    "cluster": "k-means of the embeddings into labelled+N clusters; the best score of each uncovered "
               "cluster, largest first (needs `cryoal pretrain`)",
    "cluster-power": "as cluster, with the power draw inside each cluster",
}
_NOISE_STREAM = 4  # SeedSequence([seed, 4]): the Gumbel noise of the sampled picks


def check_pick(pick: str, beta: float) -> None:
    """OptionError (a CryoalError) for an unknown pick or beta <= 0."""
    if pick not in PICKS:
        raise OptionError(f"--pick {pick}: unknown pick; choose one of {', '.join(PICKS)}")
    if not (beta > 0 and np.isfinite(beta)):
        raise OptionError(f"--beta {beta}: must be a finite number above 0")


def rank_by_score(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions sorted by score descending, ties (and NaN, last) broken by particle id ascending."""
    s = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    return np.lexsort((np.asarray(ids, dtype=str), -s))


def interleave_by_class(order: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Class-balanced order: the first of each predicted class in `order`, then the second, ...

    `order` lists positions best first; `predicted` holds each position's predicted class. Within
    one round the classes keep their `order` (so the first pick is still the overall first).
    """
    order = np.asarray(order)
    cls = np.asarray(predicted)[order]
    rank_in_class = np.empty(order.size, dtype=np.int64)
    for c in np.unique(cls):
        mask = cls == c
        rank_in_class[mask] = np.arange(int(mask.sum()))
    return order[np.argsort(rank_in_class, kind="stable")]


def gumbel_noise(n: int, seed: int | None) -> np.ndarray:
    """n standard Gumbel draws from `seed` (one per candidate, in the candidates' order)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _NOISE_STREAM]) if seed is not None else None)
    return rng.gumbel(size=n)


def power_keys(scores: np.ndarray, beta: float, noise: np.ndarray) -> np.ndarray:
    """beta * log(score) + Gumbel: sorting these draws without replacement proportional to score^beta.

    A zero score gets -inf (drawn only after every positive one); NaN stays NaN (last).
    """
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return beta * np.log(s) + noise


def softrank_keys(scores: np.ndarray, ids: np.ndarray, beta: float, noise: np.ndarray) -> np.ndarray:
    """-beta * log(rank) + Gumbel, rank 1 = best score (ties by particle id, NaN ranked last)."""
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[rank_by_score(scores, ids)] = np.arange(1, len(scores) + 1)
    return -beta * np.log(ranks) + noise


def class_normalised(scores: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """score / mean score of the candidates of the same predicted class (0 where that mean is 0)."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.zeros_like(s)
    for c in np.unique(predicted):
        m = predicted == c
        mean = np.nanmean(s[m]) if np.isfinite(s[m]).any() else np.nan
        out[m] = s[m] / mean if mean > 0 else 0.0
    return out


def default_pick(scheme: str, nonnegative: bool = True) -> str:
    """The pick `select --scheme SCHEME` uses when none is given (see the module docstring). On a
    scheme whose scores can be negative the power draw gives way to its rank-based kin (`softrank`)."""
    pick = SCHEME_DEFAULT_PICKS.get(scheme, DEFAULT_PICK)
    if pick in NEEDS_NONNEGATIVE and not nonnegative:
        return "softrank"
    return pick


def resolve_pick(scheme: str, is_batch: bool, pick: str | None, balance: bool = False, beta: float = 1.0,
                 nonnegative: bool = True) -> str | None:
    """The pick a selection uses: `pick`, or `balanced` for `--balance`, or `default_pick(scheme)`.

    Batch schemes (coreset, badge) build their own batch: any pick is refused, and None returned.
    OptionError (a CryoalError) on an unknown pick, beta <= 0, `--balance` with another pick, and a pick that
    reads log(score) on a scheme whose scores can be negative (`nonnegative=False`).
    """
    if is_batch:
        if pick is not None or balance:
            what = "--balance" if balance and pick is None else f"--pick {pick}"
            raise OptionError(f"{what} applies to score-based schemes; {scheme} already builds a batch")
        return None
    if balance and pick not in (None, "balanced"):
        raise OptionError(f"--balance is --pick balanced; it cannot be combined with --pick {pick}")
    chosen = pick or ("balanced" if balance else default_pick(scheme, nonnegative))
    check_pick(chosen, beta)
    if chosen in NEEDS_NONNEGATIVE and not nonnegative:
        raise OptionError(f"--pick {chosen} draws with probability proportional to score^beta, and {scheme} "
                          "scores can be negative; use --pick softrank (rank-based) instead")
    return chosen


PickFn = Callable[[np.ndarray, np.ndarray, np.ndarray, float, int | None], np.ndarray]


def _top(scores, ids, predicted, beta, seed):
    return rank_by_score(scores, ids)


def _power(scores, ids, predicted, beta, seed):
    return rank_by_score(power_keys(scores, beta, gumbel_noise(len(scores), seed)), ids)


def _softrank(scores, ids, predicted, beta, seed):
    return rank_by_score(softrank_keys(scores, ids, beta, gumbel_noise(len(scores), seed)), ids)


def _balanced(scores, ids, predicted, beta, seed):
    return interleave_by_class(rank_by_score(scores, ids), predicted)


def _power_balanced(scores, ids, predicted, beta, seed):
    return interleave_by_class(_power(scores, ids, predicted, beta, seed), predicted)


def _classnorm(scores, ids, predicted, beta, seed):
    return _power(class_normalised(scores, predicted), ids, predicted, beta, seed)


_PICK_FNS: dict[str, PickFn] = {
    "top": _top, "power": _power, "softrank": _softrank, "balanced": _balanced,
    "power-balanced": _power_balanced, "classnorm": _classnorm,
}


def _cluster(scores, ids, n, beta, seed, embedding, power):
    from cryoal.scoring.typiclust import cluster_pick_order

    # inside a cluster: the global order of `top` or `power` (ties by particle id), as ranks
    ranked = (_power if power else _top)(scores, ids, None, beta, seed)
    rank = np.empty(len(scores))
    rank[ranked] = -np.arange(len(scores), dtype=np.float64)
    features, labelled_features = embedding
    return cluster_pick_order(rank, features, labelled_features, n, seed)


def pick_order(
    scores: np.ndarray, ids: np.ndarray, predicted: np.ndarray, n: int, pick: str = DEFAULT_PICK,
    beta: float = 1.0, seed: int | None = 0,
    embedding: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> np.ndarray:
    """The first `n` positions (all when n == 0) of `scores` in the order `pick` draws them.

    `ids` are the candidates' particle ids (tie-breaks), `predicted` their predicted classes (the
    balanced picks). `embedding` is (candidate features (N, E), labelled features (L, E) or None)
    for the embedding-aware picks (EMBEDDING_PICKS). Raises OptionError on an unknown pick,
    beta <= 0, negative scores for a pick that reads log(score), or an embedding pick without
    `embedding`.
    """
    check_pick(pick, beta)
    scores = np.asarray(scores, dtype=np.float64)
    if pick in NEEDS_NONNEGATIVE and (scores < 0).any():
        raise OptionError(f"--pick {pick} draws with probability proportional to score^beta and these "
                          "scores are negative; use --pick softrank (rank-based) instead")
    if pick in EMBEDDING_PICKS:
        if embedding is None:
            raise OptionError(f"--pick {pick} needs the pool's embeddings (`cryoal pretrain`)")
        return _cluster(scores, np.asarray(ids), n, float(beta), seed, embedding, pick == "cluster-power")
    order = _PICK_FNS[pick](scores, np.asarray(ids), np.asarray(predicted), float(beta), seed)
    return order[: n or len(order)]


__all__ = ["DEFAULT_PICK", "EMBEDDING_PICKS", "NEEDS_NONNEGATIVE", "PICKS",
           "PICK_HELP",
           "SCHEME_DEFAULT_PICKS", "check_pick", "class_normalised", "default_pick", "gumbel_noise",
           "interleave_by_class", "pick_order", "power_keys", "rank_by_score", "resolve_pick",
           "softrank_keys"]
