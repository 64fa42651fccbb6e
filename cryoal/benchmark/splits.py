"""Deterministic, stratified splits for the oracle experiment.

Every random draw takes its own generator seeded by `(seed, purpose, cycle)`, so that a split
never depends on the order in which schemes or cycles run, and `--resume` re-derives it exactly.
"""

from __future__ import annotations

import numpy as np

# purposes of the random streams (fixed numbers: changing them changes every published result)
TEST_SPLIT = 1
INITIAL_SET = 2
VALIDATION = 3
TRAINING = 4
SELECTION = 5
PRETRAINING = 6


def rng_for(seed: int, purpose: int, cycle: int = 0) -> np.random.Generator:
    """The random generator of one purpose at one seed and cycle."""
    return np.random.default_rng([int(seed), int(purpose), int(cycle)])


def torch_seed_for(seed: int, purpose: int, cycle: int = 0) -> int:
    """An integer seed (for torch) derived from the same triple."""
    return int(rng_for(seed, purpose, cycle).integers(0, 2**31 - 1))


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a held-out set with `fraction` of each class (rounded), sorted.

    A class of n members contributes round(fraction * n), at least 1 when fraction > 0 and n >= 2,
    and never all n (a class keeps at least one member outside the held-out set).
    """
    labels = np.asarray(labels)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = int(round(fraction * members.size))
        if fraction > 0 and members.size >= 2:
            k = max(k, 1)
        k = min(k, members.size - 1)
        if k > 0:
            held.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)


def balanced_sample(
    labels: np.ndarray, candidates: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """`n` indices from `candidates`, as evenly spread over the classes as their sizes allow.

    Classes are visited in a random order, round robin, each giving a random member per turn;
    a class with nothing left is skipped. The result is sorted.
    """
    candidates = np.asarray(candidates, dtype=np.int64)
    if n > candidates.size:
        raise ValueError(f"cannot draw {n} of {candidates.size} candidates")
    cand_labels = np.asarray(labels)[candidates]
    classes = rng.permutation(np.unique(cand_labels))
    queues = [list(rng.permutation(candidates[cand_labels == c])) for c in classes]
    out: list[int] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop()))
    return np.sort(np.asarray(out, dtype=np.int64))
