"""The scheme registry: every selection scheme behind one of two small interfaces.

- A *score* scheme maps a batch to one score per sample (higher = label first), independently of
  the other samples: `scheme.score(model, x, ctx) -> (scores, probs)`. `select` streams the pool
  through it and ranks by score.
- A *batch* scheme chooses a diverse set from the embeddings of every candidate:
  `scheme.choose(probs, features, n, labelled_features, seed) -> (order, gains)`; `select` ranks by
  that order and writes the gains as scores. A batch scheme with `embedding=True` (typiclust)
  reads the features from the pool's stored embedding (`cryoal pretrain`) in `select`, so it
  needs no model; `cryoal.score` gives it the model's features like the others.
Strategies never look at the pool's mode: they see a model, a batch and its outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from cryoal.errors import CryoalError
from cryoal.learn.calibration import calibrated_softmax
from cryoal.scoring import diversity, uncertainty
from cryoal.scoring.gradnorm import gradnorm_scores
from cryoal.scoring.segmentation import pixel_mean, pixel_mean_mc


def seed_stream(seed: int | None, k: int) -> np.random.SeedSequence | None:
    """Independent random streams from one seed: 0 picks `--pool-subset`, 1 draws `random` scores."""
    return np.random.SeedSequence(seed).spawn(2)[k] if seed is not None else None


@dataclass
class ScoreContext:
    """Options shared by the schemes. `rng` feeds `random` and persists across batches, so a
    stream of batches draws the same numbers as one call on their concatenation."""

    norm: str = "l2"
    mc_passes: int = 20
    seed: int | None = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    samples: int = 8  # label maps drawn for `expected` on dense (per-pixel) outputs
    generator: torch.Generator | None = None  # draws those label maps; persists across batches
    temperature: float = 1.0  # logits are divided by it wherever probabilities or losses are taken

    @classmethod
    def make(cls, norm: str = "l2", mc_passes: int = 20, seed: int | None = 0,
             samples: int = 8, temperature: float = 1.0) -> ScoreContext:
        gen = torch.Generator()
        if seed is not None:
            gen.manual_seed(int(np.random.SeedSequence([seed, 2]).generate_state(1)[0]))
        return cls(norm=norm, mc_passes=mc_passes, seed=seed, rng=np.random.default_rng(seed_stream(seed, 1)),
                   samples=samples, generator=gen, temperature=float(temperature))


ScoreFn = Callable[[nn.Module, Tensor, ScoreContext], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class ScoreScheme:
    name: str
    help: str
    fn: ScoreFn
    kind: str = "score"
    nonnegative: bool = True  # scores are never < 0 (the power picks draw proportional to score^beta)

    def score(self, model: nn.Module, x: Tensor, ctx: ScoreContext) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B,), probs (B, C, ...)) for one batch: probs as the model outputs them, per
        sample or per pixel."""
        return self.fn(model, x, ctx)


@dataclass(frozen=True)
class BatchScheme:
    name: str
    help: str
    uses_labelled: bool
    chooser: Callable[..., tuple[np.ndarray, np.ndarray]]
    kind: str = "batch"
    embedding: bool = False  # select reads the pool's embedding, not the model's features

    def choose(
        self, probs: np.ndarray, features: np.ndarray, n: int,
        labelled_features: np.ndarray | None = None, seed: int | None = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(order, gains): indices into `features` in pick order, and each pick's gain."""
        return self.chooser(probs, features, n, labelled_features, seed)


@torch.no_grad()
def predict_probs(model: nn.Module, x: Tensor, temperature: float = 1.0) -> np.ndarray:
    """Softmax probabilities of logits / temperature (B, C) in eval mode ((B, C, *spatial) for
    per-pixel outputs)."""
    from cryoal.scoring.gram import eval_mode

    with eval_mode(model):
        return calibrated_softmax(model(x), temperature).cpu().numpy()


def _gradnorm(name: str) -> ScoreFn:
    def fn(model, x, ctx):
        res = gradnorm_scores(model, x, schemes=(name,), norm=ctx.norm, samples=ctx.samples,
                              generator=ctx.generator, temperature=ctx.temperature)
        return res.scores[name], res.probs
    return fn


def _softmax_scheme(score: Callable[[np.ndarray], np.ndarray]) -> ScoreFn:
    # per-pixel outputs get the pixel mean of the per-pixel score (the score itself for (B, C))
    def fn(model, x, ctx):
        p = predict_probs(model, x, ctx.temperature)
        return pixel_mean(score, p), p
    return fn


def _random(model, x, ctx):
    p = predict_probs(model, x, ctx.temperature)
    return ctx.rng.random(len(p)), p


def _bald(model, x, ctx):
    if not uncertainty.has_dropout(model):
        raise CryoalError("bald needs a model with a dropout layer (MC dropout); this one has none")
    p = predict_probs(model, x, ctx.temperature)
    mc = uncertainty.mc_dropout_probs(model, x, ctx.mc_passes, seed=ctx.seed, temperature=ctx.temperature)
    return pixel_mean_mc(uncertainty.bald_from_probs, mc), p


# Batch schemes see one row per sample: per-pixel probabilities arrive averaged over pixels
# (`pooled_probs`) and features pooled over space (the model's `features`).
def _coreset(probs, features, n, labelled, seed):
    return diversity.kcenter_greedy(features, n, labelled)


def _badge(probs, features, n, labelled, seed):
    return diversity.badge_select(probs, features, n, seed=seed)


def _typiclust(probs, features, n, labelled, seed):
    from cryoal.scoring.typiclust import typiclust_order

    x = np.asarray(features, dtype=np.float64)
    if labelled is not None and len(labelled):  # candidates first: order indexes them
        x = np.concatenate([x, np.asarray(labelled, dtype=np.float64)])
    return typiclust_order(x, np.arange(len(x)) >= len(features), n, seed=seed)


SCHEMES: dict[str, ScoreScheme | BatchScheme] = {
    s.name: s
    for s in (
        ScoreScheme("expected", "expected gradient norm: sum_c p_c ||grad CE(x, c)||", _gradnorm("expected")),
        ScoreScheme("entropy", "gradient norm of the entropy: ||grad H(p)||", _gradnorm("entropy")),
        ScoreScheme("random", "uniform random scores (seeded)", _random),
        ScoreScheme("max-entropy", "entropy of the softmax", _softmax_scheme(uncertainty.entropy)),
        ScoreScheme("margin", "1 - (p_top1 - p_top2)", _softmax_scheme(uncertainty.margin)),
        ScoreScheme("least-confidence", "1 - max p", _softmax_scheme(uncertainty.least_confidence)),
        ScoreScheme("bald", "MC-dropout mutual information", _bald),
        BatchScheme("coreset", "k-center greedy on penultimate features", True, _coreset),
        BatchScheme("badge", "k-means++ on last-layer gradient embeddings", False, _badge),
        BatchScheme("typiclust", "the most typical particle of each uncovered k-means cluster of the "
                    "pool's embeddings (TypiClust; no model needed)", True, _typiclust, embedding=True),
    )
}


def batch_schemes() -> tuple[str, ...]:
    """The names of the schemes that choose a whole batch (coreset, badge, typiclust), in registry
    order: they take no pick."""
    return tuple(name for name, s in SCHEMES.items() if isinstance(s, BatchScheme))


def embedding_schemes() -> tuple[str, ...]:
    """The schemes that choose from the pool's embeddings alone (no model needed)."""
    return tuple(name for name, s in SCHEMES.items() if isinstance(s, BatchScheme) and s.embedding)


def get_scheme(name: str) -> ScoreScheme | BatchScheme:
    """The scheme called `name`; CryoalError naming the choices otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise CryoalError(f"unknown scheme '{name}'; choose one of {', '.join(SCHEMES)}") from None
