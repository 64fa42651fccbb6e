"""`select`: score the unlabelled particles of a pool and write the top N as a ranked CSV.

Memory stays flat in the pool size: volumes are streamed in batches and only per-particle scalars
(score, predicted class, confidence) are kept. The batch schemes (coreset, badge) also keep the
penultimate features of every candidate, N x F floats (F = 128 for the default model), plus, for
coreset, those of the labelled particles.

CSV columns (DESIGN.md section 4): rank,particle_id,score,predicted_label,confidence,source,tomo,x,y,z,label
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cryoal.errors import CryoalError, OptionError, PoolError
from cryoal.learn.device import exact_float32
from cryoal.scoring.picks import interleave_by_class, pick_order, rank_by_score  # noqa: F401 (public here too)

CSV_COLUMNS = ("rank", "particle_id", "score", "predicted_label", "confidence", "source", "tomo",
               "x", "y", "z", "label")
CONFIDENCE_FORMAT = ".6g"
# `-n` when none is given: a first page for the expert (fewer when fewer particles are candidates).
DEFAULT_N = 100
Progress = Callable[[int, int], None]


@dataclass
class Ranked:
    """The ranking: `indices` (pool rows, best first) with their scores, predictions, confidences."""

    indices: np.ndarray
    scores: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    n_candidates: int
    n_unlabelled: int
    extra: dict[str, Any] = field(default_factory=dict)


def candidate_indices(labels: np.ndarray, pool_subset: int | None, seed: int | None) -> np.ndarray:
    """Unlabelled rows, or a reproducible random `pool_subset` of them (sorted: reads stay sequential)."""
    unl = np.flatnonzero(np.asarray(labels) < 0)
    if pool_subset is not None and pool_subset < unl.size:
        from cryoal.scoring.registry import seed_stream

        rng = np.random.default_rng(seed_stream(seed, 0))
        unl = np.sort(rng.choice(unl, size=pool_subset, replace=False))
    return unl


SCORE_CACHE_ENTRIES = 16


def model_fingerprint(model) -> str:
    """A digest of the model's weights and buffers (identifies "the same model" across copies)."""
    import hashlib

    import torch

    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _format_float(v: float) -> str:
    return "" if not math.isfinite(v) else repr(float(v))


def _format_coord(v: float) -> str:
    return "" if not math.isfinite(v) else np.format_float_positional(np.float32(v), trim="-")


def select_from_pool(
    pool, model, *, scheme: str, n: int | None, batch_size: int = 32, seed: int | None = 0,
    pool_subset: int | None = None, norm: str = "l2", mc_passes: int = 20,
    progress: Progress | None = None, dist=None, samples: int = 8, balance: bool = False,
    pick: str | None = None, beta: float = 1.0, calibrated: bool = True, score_cache: dict | None = None,
    encoder_digest: str | None = None,
) -> Ranked | None:
    """Score an open pool's unlabelled particles with `model` (already on its device) and rank them.

    Returns the top `n` (every candidate when `n == 0`; `n=None` means `DEFAULT_N`, or every
    candidate when there are fewer). Raises CryoalError on bad options.
    Under torchrun (`dist`, a `cryoal.learn.distributed.DistContext` with several ranks) each rank
    scores a contiguous run of the batches one process would score (batch boundaries fixed to
    global positions, see `cryoal.io.prefetch.batch_plan`), rank 0 gathers the per-particle
    results (features, for coreset/badge) and ranks them exactly as one process does; the other
    ranks return None. A failure on any rank raises a CryoalError on every rank.
    `pick` (score-based schemes only; None: `picks.default_pick`; `Ranked.extra["pick"]` says
    which) is how the `n` rows are drawn
    from the scores (`cryoal.scoring.picks`), with `beta` for the sampled picks and `seed` for
    their noise; `balance=True` is `pick="balanced"`. `calibrated` divides the logits by the
    model's fitted temperature (`cryoal.learn.calibration`) wherever probabilities or gradients of the
    loss are taken; False uses the raw logits. `score_cache` (one process only; the benchmark's)
    keeps the per-particle scores of score-based schemes keyed by the model's weights, temperature,
    the scheme's options and the candidates, so variants that differ only by their pick score a
    shared model once.
    An embedding scheme (typiclust) reads the pool's embeddings and needs no model (`model=None`);
    so do the embedding picks (`picks.EMBEDDING_PICKS`) beside the model. `encoder_digest` (the
    checkpoint's, for a model fine-tuned from an encoder) must match the embedding's: a missing,
    partial or stale embedding raises PoolError with the command that fixes it, before any scoring.
    """
    from cryoal.io.embedding import embedding_problem
    from cryoal.learn.calibration import temperature_of
    from cryoal.learn.distributed import DistContext
    from cryoal.scoring.picks import EMBEDDING_PICKS
    from cryoal.scoring.registry import ScoreScheme

    sch, pick = _checked_options(model, scheme, n, batch_size, norm, mc_passes, samples, pool_subset,
                                 pick, balance, beta)
    cand, n_out, n_unlabelled = _candidates(pool, n, pool_subset, seed)
    uses_embedding = getattr(sch, "embedding", False) or pick in EMBEDDING_PICKS
    # checked only where the embedding is read (it digests every particle id); every rank sees the
    # same pool, so all refuse alike, before scoring
    if uses_embedding and (problem := embedding_problem(pool, encoder_digest)):
        raise PoolError(problem)
    job = _Job(pool, model, dist or DistContext(), batch_size, progress, seed,
               temperature_of(model) if calibrated else 1.0, total=cand.size)
    if isinstance(sch, ScoreScheme):
        return _rank_by_scores(job, sch, cand, n_out, n_unlabelled, pick, beta,
                               (scheme, norm, mc_passes, samples), score_cache, uses_embedding)
    if sch.embedding:
        return _rank_by_embedding(job, sch, cand, n_out, n_unlabelled)
    return _rank_by_batch_scheme(job, sch, cand, n_out, n_unlabelled)


def _checked_options(model, scheme: str, n: int | None, batch_size: int, norm: str, mc_passes: int,
                     samples: int, pool_subset: int | None, pick: str | None, balance: bool, beta: float):
    """(the scheme, the pick it uses); CryoalError naming the first option that cannot work."""
    from cryoal.scoring import get_scheme
    from cryoal.scoring.gradnorm import NORMS
    from cryoal.scoring.picks import resolve_pick
    from cryoal.scoring.registry import ScoreScheme
    from cryoal.scoring.uncertainty import has_dropout

    sch = get_scheme(scheme)
    if model is None and not getattr(sch, "embedding", False):
        raise _needs_model(scheme)
    if n is not None and n < 0:
        raise OptionError(f"-n {n}: must be 0 (every unlabelled particle) or more")
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")
    if norm not in NORMS:
        raise OptionError(f"--norm {norm}: choose one of {', '.join(NORMS)}")
    if mc_passes < 1:
        raise OptionError(f"--mc-passes {mc_passes}: must be at least 1")
    if samples < 1:
        raise OptionError(f"--samples {samples}: must be at least 1")
    if pool_subset is not None and pool_subset < 1:
        raise OptionError(f"--pool-subset {pool_subset}: must be at least 1")
    if scheme == "bald" and model is not None and not has_dropout(model):
        raise CryoalError("--scheme bald needs a model with a dropout layer (MC dropout); this one has none")
    pick = resolve_pick(scheme, not isinstance(sch, ScoreScheme), pick, balance, beta,
                        nonnegative=getattr(sch, "nonnegative", True))
    return sch, pick


def _candidates(pool, n: int | None, pool_subset: int | None,
                seed: int | None) -> tuple[np.ndarray, int, int]:
    """(candidate rows, how many to rank, unlabelled count); CryoalError when there is nothing to
    select or `n` asks for more than there are."""
    labels = pool.labels
    n_unlabelled = int((labels < 0).sum())
    if n_unlabelled == 0:
        raise CryoalError(f"{pool.path}: every particle is labelled; there is nothing to select")
    cand = candidate_indices(labels, pool_subset, seed)
    if n is None:  # the default page is a convenience, never an error on a small pool
        n = min(DEFAULT_N, cand.size)
    if n > cand.size:
        what = f"the {cand.size} particles of --pool-subset" if cand.size < n_unlabelled else \
            f"the {n_unlabelled} unlabelled particles of the pool"
        raise CryoalError(f"-n {n} is larger than {what}; ask for at most {cand.size} (or -n 0 for all)")
    return cand, n or cand.size, n_unlabelled


@dataclass
class _Job:
    """One selection run: the open pool, the model, the ranks and how to read and report."""

    pool: Any
    model: Any
    dist: Any  # DistContext
    batch_size: int
    progress: Progress | None
    seed: int | None
    temperature: float
    total: int  # candidates: the progress bar's length

    def batches(self, indices: np.ndarray, done0: int = 0, total: int | None = None):
        """This rank's share of the batches of `indices` (all of them in one process)."""
        from cryoal.io.prefetch import BatchReader, batch_plan
        from cryoal.learn.distributed import shard_range
        from cryoal.models.input import to_model_input

        plan = batch_plan(indices, self.batch_size)
        first, stop = shard_range(len(plan), self.dist)
        mine = plan[first:stop]
        share = max(sum(len(b) for b in mine), 1)
        done = 0
        for idx, vol in BatchReader(self.pool, batches=mine):
            yield idx, to_model_input(self.model, vol)
            done += len(idx)
            if self.progress:  # this rank's fraction of its share, as particles of the whole phase
                self.progress(done0 + done * len(indices) // share, total or self.total)


def _rank_by_scores(job: _Job, sch, cand: np.ndarray, n_out: int, n_unlabelled: int, pick: str | None,
                    beta: float, options: tuple, score_cache: dict | None,
                    uses_embedding: bool = False) -> Ranked | None:
    """Score-based schemes: score every candidate (or reuse the cache), then draw `n_out` by `pick`
    (an embedding pick reads the candidates' and the labelled particles' embeddings, on rank 0)."""
    scheme, norm, mc_passes, samples = options
    ids = job.pool.particle_ids
    key = None
    if score_cache is not None and not job.dist.distributed:
        key = (scheme, norm, mc_passes, samples, job.seed, job.temperature, model_fingerprint(job.model),
               "\n".join(str(i) for i in ids[cand]))
    if key is not None and key in score_cache:
        parts = score_cache[key]
    else:
        parts = _score_candidates(job, sch, cand, norm, mc_passes, samples)
        if key is not None and parts is not None:
            while len(score_cache) >= SCORE_CACHE_ENTRIES:
                score_cache.pop(next(iter(score_cache)))
            score_cache[key] = parts
    if parts is None:
        return None
    scores, probs_top, conf = parts["scores"], parts["top"], parts["conf"]
    assert pick is not None
    embedding = _embedding_rows(job.pool, cand) if uses_embedding else None
    order = pick_order(scores, ids[cand], probs_top, n_out, pick=pick, beta=beta, seed=job.seed,
                       embedding=embedding)
    return Ranked(cand[order], scores[order], probs_top[order], conf[order], job.total, n_unlabelled,
                  extra={"pick": pick})


def _score_candidates(job: _Job, sch, cand: np.ndarray, norm: str, mc_passes: int,
                      samples: int) -> dict[str, np.ndarray] | None:
    """Per candidate: score, predicted class, confidence (gathered on rank 0; None elsewhere)."""
    from cryoal.io.prefetch import batch_plan
    from cryoal.learn.distributed import gather_concat, run_on_all_ranks, shard_range
    from cryoal.scoring.registry import ScoreContext
    from cryoal.scoring.segmentation import prediction_summary

    seed = job.seed
    ctx = ScoreContext.make(norm=norm, mc_passes=mc_passes, seed=seed, samples=samples,
                            temperature=job.temperature)

    def score_shard() -> dict[str, np.ndarray]:
        plan = batch_plan(cand, job.batch_size)
        first, stop = shard_range(len(plan), job.dist)
        start = sum(len(b) for b in plan[:first])
        size = sum(len(b) for b in plan[first:stop])
        if start:  # `random` draws from one stream: skip what the ranks before this one draw
            ctx.rng.random(start)
        scores = np.empty(size)
        probs_top = np.empty(size, dtype=np.int64)
        conf = np.empty(size)
        pos = 0
        for idx, x in job.batches(cand):
            if ctx.generator is not None and seed is not None:  # sampled label maps: the same
                ctx.generator.manual_seed(int(np.random.SeedSequence([seed, 3, int(idx[0])])
                                              .generate_state(1)[0]))  # draws however sharded
            s, p = sch.score(job.model, x, ctx)
            k = len(idx)
            scores[pos : pos + k] = s
            # per-pixel outputs: the class of largest pixel-mean probability, mean top probability
            probs_top[pos : pos + k], conf[pos : pos + k] = prediction_summary(p)
            pos += k
        return {"scores": scores, "top": probs_top, "conf": conf}

    return gather_concat(run_on_all_ranks(score_shard, job.dist), job.dist)


def _rank_by_batch_scheme(job: _Job, sch, cand: np.ndarray, n_out: int, n_unlabelled: int) -> Ranked | None:
    """Batch schemes: embed every candidate (and, for coreset, the labelled set), then choose."""
    ids, labels = job.pool.particle_ids, job.pool.labels
    # Candidates in particle-id order, so that ties in the greedy choice go to the smaller id.
    cand = cand[np.argsort(np.asarray(ids[cand], dtype=str), kind="stable")]
    labelled = np.flatnonzero(labels >= 0) if sch.uses_labelled else np.zeros(0, dtype=np.int64)
    grand = job.total + labelled.size
    embedded = _embed(job, cand, 0, grand)
    lab_embedded = _embed(job, labelled, job.total, grand) if labelled.size else None
    if embedded is None:
        return None
    feats, probs = embedded
    lab_feats = lab_embedded[0] if lab_embedded is not None else None
    order, gains = sch.choose(probs, feats, n_out, lab_feats, job.seed)
    return Ranked(cand[order], gains, probs[order].argmax(1), probs[order].max(1), job.total, n_unlabelled,
                  extra={"n_labelled_centres": int(labelled.size)})


def _embedding_rows(pool, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings of `cand`, embeddings of the labelled particles), already checked for staleness."""
    from cryoal.io.embedding import EMBEDDING

    ds = pool.h5[EMBEDDING]
    labelled = np.flatnonzero(pool.labels >= 0)

    def read(rows: np.ndarray) -> np.ndarray:  # h5py reads increasing rows: read sorted, put back
        if not rows.size:
            return np.zeros((0, ds.shape[1]))
        up = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, ds.shape[1]))
        out[up] = ds[rows[up]]
        return out

    return read(np.asarray(cand)), read(labelled)


def _rank_by_embedding(job: _Job, sch, cand: np.ndarray, n_out: int, n_unlabelled: int) -> Ranked | None:
    """Embedding schemes (typiclust): choose from the pool's embeddings on rank 0 (nothing to
    shard: no model runs); the scores are the scheme's (typicality), predictions stay empty."""

    def choose() -> Ranked | None:
        if not job.dist.is_main:
            return None
        feats, lab_feats = _embedding_rows(job.pool, cand)
        order, gains = sch.choose(None, feats, n_out, lab_feats, job.seed)
        k = order.size
        return Ranked(cand[order], np.asarray(gains, dtype=np.float64), np.full(k, -1), np.full(k, np.nan),
                      job.total, n_unlabelled, extra={"n_labelled_centres": int(lab_feats.shape[0])})

    from cryoal.learn.distributed import run_on_all_ranks

    return run_on_all_ranks(choose, job.dist)


def _embed(job: _Job, indices: np.ndarray, done0: int, total: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Features (M, F) and probabilities (M, C) of `indices`, in the order given (rank 0 only)."""
    import torch

    from cryoal.learn.calibration import calibrated_softmax
    from cryoal.learn.distributed import gather_concat, run_on_all_ranks
    from cryoal.scoring.diversity import penultimate
    from cryoal.scoring.gram import eval_mode
    from cryoal.scoring.segmentation import pooled_probs

    read_order = np.argsort(indices, kind="stable")  # read in pool order, put back after

    def embed_shard() -> dict[str, np.ndarray] | None:
        feats, probs = [], []
        with torch.no_grad(), eval_mode(job.model):
            for _, x in job.batches(indices[read_order], done0, total):
                logits, f = penultimate(job.model, x)
                # one row per sample: per-pixel probabilities are averaged over pixels
                probs.append(pooled_probs(calibrated_softmax(logits, job.temperature).cpu().numpy()))
                feats.append(f.double().cpu().numpy())
        return {"feats": np.concatenate(feats), "probs": np.concatenate(probs)} if feats else None

    parts = gather_concat(run_on_all_ranks(embed_shard, job.dist), job.dist)
    if parts is None:
        return None
    back = np.argsort(read_order, kind="stable")
    return parts["feats"][back], parts["probs"][back]


def ranked_columns(pool, ranked: Ranked, class_names: list[str]) -> dict[str, list[str]]:
    """The CSV columns of DESIGN.md section 4 for a ranking."""
    rows = ranked.indices
    coords = pool.coords[rows] if rows.size else np.zeros((0, 3), np.float32)
    names = [str(c) for c in class_names]
    return {
        "rank": [str(i + 1) for i in range(rows.size)],
        "particle_id": [str(v) for v in pool.particle_ids[rows]],
        "score": [_format_float(v) for v in ranked.scores],
        # no model (typiclust alone): predicted -1 and confidence NaN are written empty
        "predicted_label": [names[k] if 0 <= k < len(names) else "" if k < 0 else str(k)
                            for k in ranked.predicted],
        "confidence": [format(float(c), CONFIDENCE_FORMAT) if math.isfinite(c) else ""
                       for c in ranked.confidence],
        "source": [str(v) for v in pool.sources[rows]],
        "tomo": [str(v) for v in pool.tomos[rows]],
        "x": [_format_coord(v) for v in coords[:, 0]],
        "y": [_format_coord(v) for v in coords[:, 1]],
        "z": [_format_coord(v) for v in coords[:, 2]],
        "label": [""] * rows.size,
    }


FORMATS = ("csv", "star", "both")


def output_paths(out: str | os.PathLike, fmt: str) -> dict[str, str]:
    """Where `--format csv|star|both` writes: {"csv": path} and/or {"star": path}.

    `star` writes the STAR file at `out`; `both` writes the CSV at `out` and the STAR file beside
    it with the suffix `.star` (`cryoal.export.star_path_for`).
    """
    from cryoal.export import star_path_for

    if fmt not in FORMATS:
        raise OptionError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return {"csv": str(out)}
    if fmt == "star":
        return {"star": str(out)}
    star = star_path_for(out)
    if str(star) == str(out):
        raise CryoalError(f"{out}: --format both needs a CSV path that does not end in .star")
    return {"csv": str(out), "star": str(star)}


def _needs_model(scheme: str) -> OptionError:
    return OptionError(f"--scheme {scheme} scores with a model: give one with -m MODEL "
                       "(only typiclust picks from the pool's embeddings alone)")


def _planned(scheme: str, pick: str | None, balance: bool, beta: float, has_model: bool,
             out: str | os.PathLike, fmt: str) -> tuple[bool, dict[str, str]]:
    """(whether the pick is the scheme's default, the output paths), checked; OptionError
    (a CryoalError) on an unknown scheme or pick, a scheme that needs a model without one, or a
    STAR output (it carries predicted classes) without a model."""
    from cryoal.io.atomic import check_output_dir
    from cryoal.scoring import get_scheme
    from cryoal.scoring.picks import resolve_pick
    from cryoal.scoring.registry import ScoreScheme

    sch = get_scheme(scheme)
    pick_default = pick is None and not balance and isinstance(sch, ScoreScheme)
    resolve_pick(scheme, not isinstance(sch, ScoreScheme), pick, balance, beta,
                 nonnegative=getattr(sch, "nonnegative", True))  # select_from_pool resolves the default
    paths = output_paths(out, fmt)
    if not has_model and not getattr(sch, "embedding", False):
        raise _needs_model(scheme)
    if not has_model and "star" in paths:
        raise OptionError(f"--format {fmt} writes predicted classes: give a model with -m, "
                          "or use --format csv")
    for path in paths.values():
        check_output_dir(path)
    return pick_default, paths


@contextmanager
def _model_and_pool(model_path: str | os.PathLike | None, pool_path: str | os.PathLike, device):
    """(model, metadata, open pool): the checkpoint's, or (None, the pool's class names) without one."""
    from cryoal.io.pool import open_pool
    from cryoal.learn.checkpoint import model_and_pool

    if model_path is not None:
        with model_and_pool(model_path, pool_path, device) as loaded:
            yield loaded
        return
    with open_pool(pool_path) as pool:
        yield None, {"class_names": list(pool.class_names)}, pool


@exact_float32()
def select_pool(
    pool_path: str | os.PathLike, model_path: str | os.PathLike | None, out_csv: str | os.PathLike, *,
    scheme: str, n: int | None = None, batch_size: int = 32, device: str = "auto", seed: int | None = 0,
    pool_subset: int | None = None, norm: str = "l2", mc_passes: int = 20,
    progress: Progress | None = None, fmt: str = "csv", dist=None, log=None, samples: int = 8,
    balance: bool = False, pick: str | None = None, beta: float = 1.0, calibrated: bool = True,
) -> dict[str, Any] | None:
    """`cryoal select`: rank the pool's unlabelled particles and write the CSV (and/or STAR) atomically.

    Returns a summary: `n_written`, `n_scored`, `n_unlabelled`, `scheme`, `output`, `outputs`,
    `seconds` and `top` (the first rows, as dicts) for display. `fmt` is `csv`, `star` or `both`
    (see `output_paths`). Under torchrun pass `dist` (`cryoal.learn.distributed.init_distributed`): the
    ranks share the scoring, rank 0 alone writes and returns the summary (None elsewhere), and the
    files are byte-identical to one process's (with the same threads per process). `log` is an
    optional `cryoal.io.logjson.EventLog` (start, progress, done events). `balance`, `pick`, `beta`,
    `calibrated`: see `select_from_pool`. `model_path=None` is allowed for an embedding scheme
    (typiclust): the pool's embeddings alone choose, and the CSV's predicted_label and confidence
    stay empty. The summary's `pick_default` says whether `pick` is the scheme's default.
    """
    import time

    from cryoal.export import write_selection_star
    from cryoal.io.tables import write_csv
    from cryoal.learn.device import resolve_device, use_all_cpu_cores
    from cryoal.learn.distributed import DistContext, rank_device, run_on_all_ranks

    t0 = time.perf_counter()
    dist = dist or DistContext()
    # fail on an unknown scheme or pick, or a missing model, before any heavy work
    pick_default, paths = _planned(scheme, pick, balance, beta, model_path is not None, out_csv, fmt)
    dev = rank_device(resolve_device(device), dist)
    if dev.type == "cpu":
        use_all_cpu_cores()
    if log is not None:
        log.emit("start", scheme=scheme, pick=pick or ("balanced" if balance else None), beta=beta,
                 balance=balance or pick == "balanced", n=n,
                 pool=str(pool_path), model=None if model_path is None else str(model_path),
                 world_size=dist.world_size, device=str(dev), outputs=paths)
    with _model_and_pool(model_path, pool_path, dev) as (model, meta, pool):
        ranked = select_from_pool(
            pool, model, scheme=scheme, n=n, batch_size=batch_size, seed=seed,
            pool_subset=pool_subset, norm=norm, mc_passes=mc_passes, progress=progress, dist=dist,
            samples=samples, pick=pick, balance=balance, beta=beta, calibrated=calibrated,
            encoder_digest=meta.get("encoder_digest"),
        )
        summary: dict[str, Any] | None = None

        def write() -> None:  # rank 0 only; every rank learns if it failed
            nonlocal summary
            if ranked is None:
                return
            names = list(meta["class_names"])
            columns = ranked_columns(pool, ranked, names)
            warnings: list[str] = []
            if "star" in paths:
                warnings = write_selection_star(
                    paths["star"], pool, ranked.indices, scheme=scheme, scores=columns["score"],
                    predicted=ranked.predicted, confidence=columns["confidence"], class_names=names,
                )
            if "csv" in paths:
                write_csv(paths["csv"], {c: columns[c] for c in CSV_COLUMNS})
            top = [{c: columns[c][i] for c in CSV_COLUMNS} for i in range(min(5, len(columns["rank"])))]
            summary = {
                "scheme": scheme, "pick": ranked.extra.get("pick"), "pick_default": pick_default,
                "beta": beta, "balance": ranked.extra.get("pick") == "balanced",
                "model": None if model_path is None else str(model_path),
                "calibrated": calibrated,
                "temperature": float(meta.get("temperature", 1.0)) if calibrated else 1.0,
                "n_written": len(columns["rank"]),
                "n_scored": ranked.n_candidates,
                "n_unlabelled": ranked.n_unlabelled, "output": str(out_csv), "outputs": paths,
                "world_size": dist.world_size, "seconds": time.perf_counter() - t0, "warnings": warnings,
                "top": top,
            }

        run_on_all_ranks(write, dist)
    if summary is not None and log is not None:
        log.emit("done", **{k: v for k, v in summary.items() if k != "top"})
    return summary


__all__ = ["CSV_COLUMNS", "FORMATS", "Ranked", "candidate_indices", "interleave_by_class", "output_paths",
           "rank_by_score", "ranked_columns", "select_from_pool", "select_pool"]
