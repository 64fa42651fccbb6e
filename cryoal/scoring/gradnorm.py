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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cryoal.scoring.gram import per_sample_gram

NORMS = ("l2", "tensor-sum")
GRADNORM_SCHEMES = ("expected", "entropy")


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


def gradnorm_scores(
    model: nn.Module, x: Tensor, schemes: tuple[str, ...] = GRADNORM_SCHEMES, norm: str = "l2"
) -> GradnormResult:
    """Score a batch (B, 1, ...) with the gradient-norm schemes named in `schemes`.

    The model is used in eval mode and on its own device; `x` is moved there.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    unknown = set(schemes) - set(GRADNORM_SCHEMES)
    if unknown:
        raise ValueError(f"not a gradient-norm scheme: {sorted(unknown)}")
    entropy_only = set(schemes) == {"entropy"}

    def seeds(logits: Tensor) -> Tensor:
        b, c = logits.shape
        if entropy_only:
            logp = torch.log_softmax(logits.double(), dim=1)
            p = logp.exp()
            h = -(p * logp).sum(1, keepdim=True)
            return (-p * (logp + h)).to(logits.dtype).unsqueeze(1)  # (B, 1, C)
        u = zero_sum_basis(c, dtype=logits.dtype, device=logits.device)
        return u.T.unsqueeze(0).expand(b, c - 1, c)

    res = per_sample_gram(model, x, seeds, per_tensor=norm == "tensor-sum")
    logits = res.output.double()
    if logits.dim() != 2:
        raise ValueError(f"gradient-norm scoring expects logits (B, C), got {tuple(logits.shape)}")
    logp = torch.log_softmax(logits, dim=1)
    p = logp.exp()
    b, c = p.shape
    grams = [res.total] if norm == "l2" else list(res.per_tensor.values())  # type: ignore[union-attr]

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
