"""Gradient-norm scores for dense (per-pixel) outputs: logits (B, C, *S) with L = prod(S) pixels.

The per-sample loss is the mean over pixels (`cryoal.modes.segmentation`), so for a label map y
the gradient with respect to the logits of pixel j is (p_j - e_{y_j}) / L, and for the mean pixel
entropy H = (1/L) sum_j H(p_j) it is -p_j * (log p_j + H(p_j)) / L. Both are fed to the same
per-sample Gram engine as the classifier scores (`cryoal.scoring.gram.per_sample_gram`), as
output-space seeds:

- `entropy` = ||grad_theta H||, exact: one seed.
- `expected` = E_{y ~ p}[ ||grad_theta CE(f(x), y)|| ] over label maps y drawn pixel by pixel
  from the model's posterior. The sum has C^L terms, so it is ESTIMATED by the mean over S maps
  sampled from that posterior (`samples`, default 8): unbiased, with a standard error that falls
  as 1/sqrt(S). Cost: one forward plus S (+1 for entropy) batched backward passes.
  `expected_exact` enumerates every label map for tiny outputs (tests).

A classifier's output (B, C) is the special case L = 1 with nothing spatial; this module is
only used for outputs with spatial axes, where the exact sum over labels is out of reach.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor, nn

from cryoal.scoring.gram import per_sample_gram

DEFAULT_SAMPLES = 8
EXACT_MAX_MAPS = 4096


def pixel_log_probs(logits: Tensor) -> Tensor:
    """log p per pixel, float64, flattened: (B, C, *S) -> (B, C, L)."""
    return torch.log_softmax(logits.double().flatten(2), dim=1)


def entropy_seed(logits: Tensor) -> Tensor:
    """d(mean pixel entropy)/d(logits): (B, C, *S) -> (B, 1, C, *S), in the logits' dtype."""
    logp = pixel_log_probs(logits)
    p = logp.exp()
    h = -(p * logp).sum(1, keepdim=True)
    seed = -p * (logp + h) / logp.shape[2]
    return seed.to(logits.dtype).reshape(logits.shape).unsqueeze(1)


def sample_label_maps(p: Tensor, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """S label maps per sample, pixel by pixel from the categorical p (B, C, L) -> (B, S, L) long.

    Inverse-CDF sampling with uniforms from `generator` (a CPU generator: reproducible on any device).
    """
    b, c, n = p.shape
    u = torch.rand((b, samples, n), generator=generator, dtype=torch.float64).to(p.device)
    cdf = p.cumsum(1)  # (B, C, L)
    y = (u.unsqueeze(2) > cdf.unsqueeze(1)).sum(2)  # number of classes whose CDF is below u
    return y.clamp_(max=c - 1)


def label_map_seeds(p: Tensor, y: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """d(mean pixel CE with labels y)/d(logits) = (p - onehot(y)) / L: (B, S, C, *S) seeds."""
    b, c, n = p.shape
    onehot = torch.nn.functional.one_hot(y, c).permute(0, 1, 3, 2).to(p.dtype)  # (B, S, C, L)
    seeds = (p.unsqueeze(1) - onehot) / n
    return seeds.to(dtype).reshape(b, y.shape[1], *shape[1:])


def _norms(res, per_tensor: bool) -> Tensor:
    """sqrt of the Gram diagonals (B, S): one global norm, or the sum of per-tensor norms."""
    if not per_tensor:
        return torch.diagonal(res.total, dim1=1, dim2=2).clamp_min(0).sqrt()
    return sum(torch.diagonal(g, dim1=1, dim2=2).clamp_min(0).sqrt() for g in res.per_tensor.values())


def dense_seeds(logits: Tensor, schemes: tuple[str, ...], samples: int = DEFAULT_SAMPLES,
                generator: torch.Generator | None = None) -> Tensor:
    """Engine seeds (B, n_seeds, C, *S) for dense logits: the entropy seed first (if asked), then
    one seed per sampled label map (if `expected` is asked)."""
    if samples < 1:
        raise ValueError("samples must be at least 1")
    parts = []
    if "entropy" in schemes:
        parts.append(entropy_seed(logits))
    if "expected" in schemes:
        p = pixel_log_probs(logits).exp()
        y = sample_label_maps(p, samples, generator)
        parts.append(label_map_seeds(p, y, logits.shape, logits.dtype))
    return torch.cat(parts, dim=1)


def dense_scores(res, schemes: tuple[str, ...], norm: str = "l2") -> dict[str, np.ndarray]:
    """Scores from the engine's Grams for the seeds `dense_seeds` made: entropy = the entropy
    seed's norm, expected = the mean norm over the sampled label maps."""
    norms = _norms(res, norm == "tensor-sum")  # (B, n_seeds)
    out: dict[str, np.ndarray] = {}
    first = 0
    if "entropy" in schemes:
        out["entropy"] = norms[:, 0].cpu().numpy()
        first = 1
    if "expected" in schemes:
        out["expected"] = norms[:, first:].mean(1).cpu().numpy()
    return out


def dense_gradnorm_scores(
    model: nn.Module, x: Tensor, schemes: tuple[str, ...] = ("expected", "entropy"), norm: str = "l2",
    samples: int = DEFAULT_SAMPLES, generator: torch.Generator | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`({scheme: (B,) float64}, probs (B, C, *S) float32)` for a model with dense outputs.

    `expected` is the S-sample estimate described in the module docstring; `entropy` is exact.
    """
    def seeds(logits: Tensor) -> Tensor:
        return dense_seeds(logits, schemes, samples, generator)

    res = per_sample_gram(model, x, seeds, per_tensor=norm == "tensor-sum")
    if res.output.dim() < 3:
        raise ValueError(f"dense scoring expects logits (B, C, *spatial), got {tuple(res.output.shape)}")
    probs = torch.softmax(res.output.double(), dim=1).float().cpu().numpy()
    return dense_scores(res, schemes, norm), probs


def expected_exact(model: nn.Module, x: Tensor, norm: str = "l2") -> np.ndarray:
    """The exact expected gradient norm, sum over all C^L label maps of P(y) ||grad CE(y)||.

    Only for tiny outputs (C^L <= EXACT_MAX_MAPS): it is what `expected` estimates.
    """
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(x)
        model.train(was)
    c, n = out.shape[1], math.prod(out.shape[2:])
    n_maps = c**n
    if n_maps > EXACT_MAX_MAPS:
        raise ValueError(f"{c}^{n} label maps: too many to enumerate (limit {EXACT_MAX_MAPS})")
    maps = torch.tensor(list(itertools.product(range(c), repeat=n)), dtype=torch.long, device=x.device)

    def seeds(logits: Tensor) -> Tensor:
        p = pixel_log_probs(logits).exp()
        y = maps.unsqueeze(0).expand(logits.shape[0], -1, -1)
        return label_map_seeds(p, y, logits.shape, logits.dtype)

    res = per_sample_gram(model, x, seeds, per_tensor=norm == "tensor-sum")
    logp = pixel_log_probs(res.output)  # (B, C, L)
    # log P(y) = sum_j log p[y_j, j] for every map: gather (B, M, L) and sum over pixels
    idx = maps.unsqueeze(0).expand(logp.shape[0], -1, -1)
    log_prior = torch.gather(logp.transpose(1, 2), 2, idx.transpose(1, 2)).sum(1)  # (B, M)
    weights = log_prior.exp()
    return (weights * _norms(res, norm == "tensor-sum")).sum(1).cpu().numpy()


def pixel_mean(per_pixel_score, probs: np.ndarray) -> np.ndarray:
    """Apply a per-sample score of probabilities (N, C) -> (N,) to every pixel of (B, C, *S) and
    average over pixels -> (B,). With no spatial axes it is the score itself."""
    b, c = probs.shape[:2]
    flat = np.moveaxis(probs.reshape(b, c, -1), 1, 2).reshape(-1, c)
    return np.asarray(per_pixel_score(flat), dtype=np.float64).reshape(b, -1).mean(1)


def pixel_mean_mc(per_pixel_score, mc_probs: np.ndarray) -> np.ndarray:
    """`pixel_mean` for stochastic passes (T, B, C, *S) and a score of (T, N, C) -> (N,)."""
    t, b, c = mc_probs.shape[:3]
    flat = np.moveaxis(mc_probs.reshape(t, b, c, -1), 2, 3).reshape(t, -1, c)
    return np.asarray(per_pixel_score(flat), dtype=np.float64).reshape(b, -1).mean(1)


def pooled_probs(probs: np.ndarray) -> np.ndarray:
    """Probabilities averaged over pixels: (B, C, *S) -> (B, C); (B, C) is returned as it is."""
    p = np.asarray(probs)
    return p if p.ndim == 2 else p.reshape(p.shape[0], p.shape[1], -1).mean(2)


def prediction_summary(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class (B,), confidence (B,)) of probabilities (B, C, *S): the class with the
    largest pixel-mean probability, and the pixel mean of the top probability. For (B, C) these are
    argmax and max."""
    p = np.asarray(probs)
    return pooled_probs(p).argmax(1), p.max(1).reshape(p.shape[0], -1).mean(1)


__all__ = [
    "DEFAULT_SAMPLES", "dense_gradnorm_scores", "dense_scores", "dense_seeds", "entropy_seed",
    "expected_exact", "label_map_seeds", "pixel_log_probs", "pixel_mean", "pixel_mean_mc", "pooled_probs",
    "prediction_summary", "sample_label_maps",
]
