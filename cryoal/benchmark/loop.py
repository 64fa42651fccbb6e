"""The oracle active-learning loop behind `cryoal benchmark`.

For each seed: one stratified test split (never selectable) and one initial labelled set, shared
by every scheme. For each scheme, each cycle trains a classifier on the labelled set, scores it
on the test split, selects `budget` particles among the unlabelled non-test ones with the same
code path as `cryoal select`, and reveals their true labels (in memory: the pool file is only
read). The cycle-0 model depends on the seed alone, so it is trained once per seed and shared.

State lives in OUT_DIR: `curves.csv` (one row per finished cycle) and `selections.csv` (the ids
each scheme picked). Both are rewritten atomically after every cycle, so an interrupted run
leaves valid files and `--resume` re-derives every labelled set exactly from them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.benchmark import splits
from cryoal.benchmark.config import BenchmarkConfig, BenchmarkData
from cryoal.benchmark.report import (
    CurveRow,
    Selection,
    read_curves,
    read_selections,
    write_curves,
    write_selections,
)
from cryoal.errors import CryoalError

CURVES = "curves.csv"
SELECTIONS = "selections.csv"
STATE_DIR = "state"


@dataclass
class Timings:
    """Seconds spent per step, summed over the run (reported in run.json)."""

    train: float = 0.0
    evaluate: float = 0.0
    select: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    pretrain: dict[str, dict] = field(default_factory=dict)  # --pretrain: seed -> its pretraining's cost

    def add_select(self, scheme: str, seconds: float) -> None:
        self.select[scheme] = self.select.get(scheme, 0.0) + seconds


@dataclass
class SeedSplit:
    """The split of one seed: test particles and the initial labelled set (pool row indices)."""

    test: np.ndarray
    initial: np.ndarray
    selectable: np.ndarray  # every non-test row


def make_split(truth: np.ndarray, seed: int, config: BenchmarkConfig) -> SeedSplit:
    """The test split and initial labelled set of `seed` (identical for every scheme).

    Raises CryoalError when the run asks for more labels than the non-test particles hold.
    """
    test = splits.stratified_holdout(truth, config.test_fraction, splits.rng_for(seed, splits.TEST_SPLIT))
    selectable = np.setdiff1d(np.arange(truth.size), test)
    check_feasible(truth.size, test.size, config)
    initial = splits.balanced_sample(
        truth, selectable, config.initial, splits.rng_for(seed, splits.INITIAL_SET)
    )
    return SeedSplit(test, initial, selectable)


def check_feasible(n_particles: int, n_test: int, config: BenchmarkConfig) -> None:
    """Raise CryoalError when the labels the run asks for exceed the selectable pool."""
    remaining = n_particles - n_test
    if config.initial > remaining:
        raise CryoalError(
            f"--initial {config.initial} is larger than the {remaining} particles outside the test split"
        )
    needed = config.labels_at(config.cycles - 1)
    if needed > remaining:
        left = remaining - config.initial
        raise CryoalError(
            f"--budget {config.budget}: {config.cycles - 1} selection rounds need "
            f"{needed - config.initial} particles but only {left} remain after the test split "
            f"({n_test}) and --initial {config.initial}; lower --budget or --cycles"
        )


# -- the steps a cycle is made of (the product code paths; see steps.py) ---------------------


@dataclass
class Steps:
    """Train, evaluate and select: the three calls into cryoal that one cycle makes.

    Default implementations live in `cryoal.benchmark.steps`; tests may wrap them (e.g. to
    interrupt a run) without touching the loop.
    """

    train: Callable  # (data, indices, config, seed, cycle, init_model) -> model
    evaluate: Callable  # (model, data, indices, config) -> (accuracy, macro_f1)
    select: Callable  # (model, data, candidates, labelled, scheme, n, config, seed, cycle) -> indices
    release: Callable = lambda data: None  # delete the steps' scratch files at the end
    # --pretrain: (data, config, seed, split, log) -> (split, cost); the seed's encoder and embedding
    prepare: Callable | None = None


def default_steps() -> Steps:
    """The real train/evaluate/select of cryoal."""
    from cryoal.benchmark import steps

    return Steps(steps.train_model, steps.evaluate_model, steps.select_particles, steps.release,
                 steps.prepare_seed)


# -- resumable state ------------------------------------------------------------------------


class RunState:
    """The finished curve points and selections, mirrored to OUT_DIR after every change."""

    def __init__(self, out_dir: Path, rows: Sequence[CurveRow] = (), picks: Sequence[Selection] = ()):
        self.out_dir = out_dir
        self.rows: dict[tuple[str, int, int], CurveRow] = {r.key: r for r in rows}
        self.picks: list[Selection] = list(picks)

    @classmethod
    def load(cls, out_dir: Path) -> RunState:
        """Read curves.csv and selections.csv; drop selections made after the last finished cycle."""
        rows = read_curves(out_dir / CURVES) if (out_dir / CURVES).exists() else []
        picks = read_selections(out_dir / SELECTIONS) if (out_dir / SELECTIONS).exists() else []
        state = cls(out_dir, rows)
        # a selection is written before its cycle's curve row: one without the row is discarded
        state.picks = [p for p in picks if (p.scheme, p.seed, p.cycle) in state.rows]
        return state

    def done_cycles(self, scheme: str, seed: int) -> int:
        """How many consecutive cycles (from 0) of this (scheme, seed) are finished."""
        k = 0
        while (scheme, seed, k) in self.rows:
            k += 1
        return k

    def has_picks(self, scheme: str, seed: int, cycle: int) -> bool:
        """True when (scheme, seed) recorded a selection after training at `cycle`."""
        return any(p.scheme == scheme and p.seed == seed and p.cycle == cycle for p in self.picks)

    def selected(self, scheme: str, seed: int, before_cycle: int, ids: np.ndarray) -> np.ndarray:
        """Pool rows selected by (scheme, seed) at cycles < before_cycle, in selection order."""
        lookup = {pid: i for i, pid in enumerate(ids)}
        picks = sorted(
            (p for p in self.picks if p.scheme == scheme and p.seed == seed and p.cycle < before_cycle),
            key=lambda p: (p.cycle, p.rank),
        )
        missing = [p.particle_id for p in picks if p.particle_id not in lookup]
        if missing:
            raise CryoalError(f"{self.out_dir / SELECTIONS}: particle '{missing[0]}' is not in the pool")
        return np.asarray([lookup[p.particle_id] for p in picks], dtype=np.int64)

    def record(self, row: CurveRow, picks: Sequence[Selection]) -> None:
        """Add one finished cycle and write both files (selections first: see `load`)."""
        self.picks.extend(picks)
        write_selections(self.out_dir / SELECTIONS, self.picks)
        self.rows[row.key] = row
        write_curves(self.out_dir / CURVES, list(self.rows.values()))

    def all_rows(self) -> list[CurveRow]:
        return list(self.rows.values())


# -- the loop -------------------------------------------------------------------------------


def _state_path(out_dir: Path, name: str) -> Path:
    d = out_dir / STATE_DIR
    d.mkdir(exist_ok=True)
    return d / name


Progress = Callable[[str], None]


def run_benchmark(
    data: BenchmarkData,
    config: BenchmarkConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    steps: Steps | None = None,
    log: Progress | None = None,
    advance: Callable[[], None] | None = None,
    timings: Timings | None = None,
) -> list[CurveRow]:
    """Run (or continue) the experiment; returns every curve point. Writes OUT_DIR as it goes."""
    out = Path(out_dir)
    steps = steps or default_steps()
    timings = timings if timings is not None else Timings()
    log = log or (lambda msg: None)
    state = RunState.load(out) if resume else RunState(out)
    ids = data.particle_ids
    data.workdir = out / STATE_DIR
    data.workdir.mkdir(parents=True, exist_ok=True)
    try:
        _run_seeds(data, config, steps, state, out, ids, timings, log, advance)
    finally:
        steps.release(data)
    return state.all_rows()


def _run_seeds(data, config, steps, state, out, ids, timings, log, advance) -> None:
    for seed in range(config.seeds):
        split = make_split(data.truth, seed, config)
        todo = [s for s in config.schemes if state.done_cycles(s, seed) < config.cycles]
        if not todo:
            continue
        if config.pretrain:  # before anything trains: every model of the seed starts from its encoder
            prepare = steps.prepare or default_steps().prepare  # steps a test wraps may leave it out
            split, timings.pretrain[str(seed)] = prepare(data, config, seed, split, log)
        shared0: dict = {}  # the cycle-0 model and its scores, trained once for this seed

        def cycle0(seed=seed, split=split, shared0=shared0):
            if "model" not in shared0:
                shared0.update(_cycle0(data, config, steps, out, seed, split, timings, log))
            return shared0["model"], shared0["scores"]

        for scheme in todo:
            _run_scheme(data, config, steps, state, scheme, seed, split, cycle0, ids, timings, log, advance)


def _cycle0(data, config, steps, out, seed, split, timings, log) -> dict:
    """Train and evaluate the seed's cycle-0 model once; cached on disk for --resume."""
    from cryoal.learn.checkpoint import load_weights, save_weights

    path = _state_path(out, f"cycle0-seed{seed}.pt")
    enc = data.scratch.get("encoder") if config.pretrain else None
    origin = {"encoder_digest": enc.digest} if enc is not None else {}  # what it was fine-tuned from
    if config.freeze_trunk:  # a probe on the frozen trunk is another model than a fine-tuned one
        origin["freeze_trunk"] = True
    model = None
    if path.exists():
        model = steps.train(data, split.initial, config, seed, 0, None, build_only=True)
        blob = load_weights(path, model)
        if (blob.get("initial_ids") == [str(i) for i in data.particle_ids[split.initial]]
                and blob.get("encoder_digest") == origin.get("encoder_digest")
                and blob.get("freeze_trunk", False) == config.freeze_trunk):
            log(f"seed {seed}: cycle-0 model reused from {path}")
            return {"model": model, "scores": (float(blob["accuracy"]), float(blob["macro_f1"]))}
        model = None  # another split: train afresh
    t0 = time.perf_counter()
    model = steps.train(data, split.initial, config, seed, 0, None)
    timings.train += time.perf_counter() - t0
    timings.n_train += 1
    t0 = time.perf_counter()
    scores = steps.evaluate(model, data, split.test, config)
    timings.evaluate += time.perf_counter() - t0
    save_weights(path, model, {
        "accuracy": scores[0], "macro_f1": scores[1],
        "initial_ids": [str(i) for i in data.particle_ids[split.initial]], **origin,
    })
    return {"model": model, "scores": scores}


def _run_scheme(data, config, steps, state, scheme, seed, split, cycle0, ids, timings, log, advance) -> None:
    from cryoal.learn.checkpoint import load_weights, save_weights

    start = state.done_cycles(scheme, seed)
    if 0 < start < config.cycles and not state.has_picks(scheme, seed, start - 1):
        # the last finished cycle was the final one of a shorter run and selected nothing: redo it
        start -= 1
    labelled = np.concatenate([split.initial, state.selected(scheme, seed, start, ids)])
    model = None
    if config.warm_start and start == 1:
        model = _copy_model(cycle0()[0])
    elif config.warm_start and start > 1:  # fine-tune from the model the interrupted run saved
        model = steps.train(data, labelled, config, seed, start - 1, None, build_only=True)
        load_weights(_warm_path(state.out_dir, scheme, seed, start - 1), model)
    for cycle in range(start, config.cycles):
        if labelled.size != config.labels_at(cycle):  # an invariant of the loop, not user input
            raise RuntimeError(f"{scheme} seed {seed} cycle {cycle}: {labelled.size} labels")
        if cycle == 0:
            model, (acc, f1) = cycle0()
            if config.warm_start:
                model = _copy_model(model)  # fine-tuning must not change the shared cycle-0 model
        else:
            t0 = time.perf_counter()
            model = steps.train(data, labelled, config, seed, cycle, model if config.warm_start else None)
            timings.train += time.perf_counter() - t0
            timings.n_train += 1
            t0 = time.perf_counter()
            acc, f1 = steps.evaluate(model, data, split.test, config)
            timings.evaluate += time.perf_counter() - t0
        picks: list[Selection] = []
        took = 0.0
        if cycle < config.cycles - 1:
            candidates = np.setdiff1d(split.selectable, labelled)
            t0 = time.perf_counter()
            chosen = np.asarray(steps.select(
                model, data, candidates, labelled, scheme, config.budget, config, seed, cycle
            ), dtype=np.int64)
            took = time.perf_counter() - t0
            timings.add_select(scheme, took)
            _check_selection(chosen, candidates, config.budget, scheme)
            picks = [Selection(scheme, seed, cycle, r + 1, str(ids[i])) for r, i in enumerate(chosen)]
            labelled = np.concatenate([labelled, chosen])
        if config.warm_start and cycle < config.cycles - 1:
            save_weights(_warm_path(state.out_dir, scheme, seed, cycle), model, {})
            _warm_path(state.out_dir, scheme, seed, cycle - 1).unlink(missing_ok=True)
        row = CurveRow(scheme, seed, cycle, config.labels_at(cycle), float(acc), float(f1))
        state.record(row, picks)
        log(
            f"seed {seed} {scheme:<16} cycle {cycle}: n={row.n_labeled:<5} acc={acc:.3f} "
            f"f1={f1:.3f}" + (f" (select {took:.1f}s)" if picks else "")
        )
        if advance is not None:
            advance()


def _warm_path(out_dir: Path, scheme: str, seed: int, cycle: int) -> Path:
    return _state_path(out_dir, f"{scheme}-seed{seed}-cycle{cycle}.pt")


def _check_selection(chosen: np.ndarray, candidates: np.ndarray, budget: int, scheme: str) -> None:
    # the product's selection must honour the candidate set: a test particle must never leak in
    if chosen.size != budget or np.unique(chosen).size != budget or not np.isin(chosen, candidates).all():
        raise RuntimeError(f"scheme {scheme} returned an invalid selection ({chosen.size} of {budget})")


def _copy_model(model):
    import copy

    return copy.deepcopy(model)
