"""Expected- and entropy-gradnorm scores for classifiers, from the per-sample Gram engine.

For logits z with p = softmax(z):
- the cross-entropy with class c has d/dz = p - e_c;
- the entropy H(p) = -sum p log p has d/dz = -p * (log p + H).
Both vectors sum to zero, so they lie in the (C-1)-dimensional zero-sum subspace. With an
orthonormal basis U (C x (C-1)) of that subspace as seeds, the engine returns per sample
K = (J^T U)^T (J^T U), and any zero-sum gradient u = U alpha (alpha = U^T u) has squared parameter
gradient norm alpha^T K alpha. One forward plus C-1 backward passes give every class's gradient norm
and the entropy's. When only `entropy` is wanted, the single seed -p * (log p + H) is enough.

expected = sum_c p_c ||grad_theta CE(f(x), c)||,  entropy = ||grad_theta H(p(x))||.
`norm="l2"` is one global L2 norm over all trainable parameters; `norm="tensor-sum"` sums the
L2 norms of the separate parameter tensors (what the original authors' code computes).

Dense outputs (B, C, *spatial), e.g. a U-Net's per-pixel logits, go through the same engine with
the seeds of `cryoal.scoring.segmentation`: the loss is the mean over pixels, `entropy` is exact,
and `expected` is estimated from `samples` label maps drawn from the per-pixel posterior (the
exact sum has C^pixels terms). For (B, C) logits `expected` is always the exact sum over classes.

On CPU a batch of (B, C) outputs is scored in chunks of a few samples (`chunk_size`): each chunk
is still one batched forward plus C-1 batched backward passes, sized so its activations stay in
cache. Dense outputs are scored in one pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cryoal.learn.calibration import apply_temperature
from cryoal.learn.device import exact_float32
from cryoal.scoring.gram import concat_results, per_sample_gram

NORMS = ("l2", "tensor-sum")
GRADNORM_SCHEMES = ("expected", "entropy")
# On CPU the engine runs a batch in chunks whose largest activation stays near this size. The
# full-resolution layers' backward work (pool/ReLU/BatchNorm backward, weight-gradient reductions)
# is memory-bound, and runs much faster when a chunk's activations stay in cache. Measured on a
# busy 2-core CPU, 32^3, C=5 (expected+entropy, samples/s): rb3d 5.1 at 32 samples a pass, 8.7
# at 4; resnet3d 4.6 at 32, 7.0 at 8; the per-sample loop ran at 2.7 and 1.8.
CPU_CHUNK_BYTES = 16 << 20
MIN_CHUNK = 2


def chunk_size(largest: int) -> int:
    """Samples per engine pass on CPU, from the largest conv output of one sample (elements):
    enough that a chunk's largest activation (float32) is about CPU_CHUNK_BYTES."""
    return max(MIN_CHUNK, CPU_CHUNK_BYTES // (4 * max(largest, 1)))


@contextlib.contextmanager
def largest_conv_output(model: nn.Module) -> Iterator[list[int]]:
    """Collect the per-sample size (elements) of every conv output of the forwards run inside."""
    sizes: list[int] = [0]
    hooks = [m.register_forward_hook(lambda mod, args, out: sizes.append(out[0].numel()))
             for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    try:
        yield sizes
    finally:
        for h in hooks:
            h.remove()


def zero_sum_basis(n_classes: int, dtype=torch.float64, device=None) -> Tensor:
    """An orthonormal basis (C, C-1) of the vectors that sum to zero (Helmert contrasts)."""
    u = torch.zeros(n_classes, n_classes - 1, dtype=torch.float64)
    for k in range(1, n_classes):
        u[:k, k - 1] = 1.0
        u[k, k - 1] = -float(k)
        u[:, k - 1] /= np.sqrt(k * (k + 1))
    return u.to(dtype=dtype, device=device)


@dataclass
class GradnormResult:
    """Per-sample results of one engine pass: scores by scheme name, and class probabilities."""

    scores: dict[str, np.ndarray]
    probs: np.ndarray


def _quad(alpha: Tensor, gram: Tensor) -> Tensor:
    """Norms sqrt(alpha^T K alpha): alpha (B, M, S), gram (B, S, S) -> (B, M), float64."""
    sq = torch.einsum("bms,bst,bmt->bm", alpha, gram, alpha)
    return sq.clamp_min(0).sqrt()


@exact_float32()
def gradnorm_scores(
    model: nn.Module, x: Tensor, schemes: tuple[str, ...] = GRADNORM_SCHEMES, norm: str = "l2",
    samples: int | None = None, generator: torch.Generator | None = None, temperature: float = 1.0,
) -> GradnormResult:
    """Score a batch (B, 1, ...) with the gradient-norm schemes named in `schemes`.

    The model is used in eval mode and on its own device; `x` is moved there. `samples` and
    `generator` only matter for dense outputs (the sampled `expected`; see the module docstring).
    `temperature` T scores the temperature-scaled logits z / T (`cryoal.learn.calibration`): p is
    softmax(z / T) and every parameter gradient carries the factor 1 / T (K becomes K / T^2).
    Classifier outputs (B, C) only.
    """
    from cryoal.scoring import segmentation as dense

    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    unknown = set(schemes) - set(GRADNORM_SCHEMES)
    if unknown:
        raise ValueError(f"not a gradient-norm scheme: {sorted(unknown)}")
    entropy_only = set(schemes) == {"entropy"}
    t = float(temperature)
    if not (t > 0 and np.isfinite(t)):
        raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")

    def seeds(logits: Tensor) -> Tensor:
        if logits.dim() > 2:  # per-pixel outputs
            if t != 1.0:
                raise ValueError("temperature scaling applies to classifier outputs (B, C), not per-pixel")
            return dense.dense_seeds(logits, schemes, samples or dense.DEFAULT_SAMPLES, generator)
        b, c = logits.shape
        if entropy_only:  # the direction of d H(softmax(z/T)) / dz; its 1/T is applied to K below
            logp = torch.log_softmax(apply_temperature(logits.double(), t), dim=1)
            p = logp.exp()
            h = -(p * logp).sum(1, keepdim=True)
            return (-p * (logp + h)).to(logits.dtype).unsqueeze(1)  # (B, 1, C)
        u = zero_sum_basis(c, dtype=logits.dtype, device=logits.device)
        return u.T.unsqueeze(0).expand(b, c - 1, c)

    def gram(xs: Tensor):
        return per_sample_gram(model, xs, seeds, per_tensor=norm == "tensor-sum")

    b = x.shape[0]
    if x.device.type != "cpu" or b <= MIN_CHUNK:
        parts = [gram(x)]
    else:  # the first chunk's forward tells how large the activations are
        with largest_conv_output(model) as sizes:
            parts = [gram(x[:MIN_CHUNK])]
        if parts[0].output.dim() > 2:
            parts = [gram(x)]  # dense outputs draw sampled seeds for the whole batch at once
        else:
            step = chunk_size(max(sizes))
            parts += [gram(x[i : i + step]) for i in range(MIN_CHUNK, b, step)]
    res = parts[0] if len(parts) == 1 else concat_results(parts)
    if res.output.dim() > 2:
        probs = torch.softmax(res.output.double(), dim=1).float().cpu().numpy()
        return GradnormResult(scores=dense.dense_scores(res, schemes, norm), probs=probs)
    logits = apply_temperature(res.output.double(), t)  # temperature-scaled logits z / T
    if logits.dim() != 2:
        raise ValueError(f"gradient-norm scoring expects logits (B, C), got {tuple(logits.shape)}")
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    b, c = p.shape
    grams = [res.total] if norm == "l2" else list(res.per_tensor.values())  # type: ignore[union-attr]
    if t != 1.0:  # d(z/T)/dtheta = J / T: every per-sample Gram K = J J^T scales by 1 / T^2
        grams = [g / (t * t) for g in grams]

    out: dict[str, np.ndarray] = {}
    if entropy_only:
        alpha_h = torch.ones(b, 1, 1, dtype=torch.float64, device=p.device)
    else:
        u = zero_sum_basis(c, device=p.device)
        h = -(p * logp).sum(1, keepdim=True)
        alpha_h = ((-p * (logp + h)) @ u).unsqueeze(1)  # (B, 1, C-1)
        eye = torch.eye(c, dtype=torch.float64, device=p.device)
        alpha_c = (p.unsqueeze(1) - eye.unsqueeze(0)) @ u  # (B, C, C-1): row c is U^T (p - e_c)
    if "expected" in schemes:
        per_class = sum(_quad(alpha_c, g) for g in grams)  # (B, C)
        out["expected"] = (p * per_class).sum(1).cpu().numpy()
    if "entropy" in schemes:
        out["entropy"] = sum(_quad(alpha_h, g) for g in grams)[:, 0].cpu().numpy()
    return GradnormResult(scores=out, probs=p.float().cpu().numpy())
