"""The slow, obvious definition of the gradient-norm scores: the oracle for tests and benchmarks.

Per sample: one forward for p; then, for each class c, a forward and a backward of the
cross-entropy with target c; and a forward and a backward of the entropy H(p). Norms are taken
over all trainable parameters (model in eval mode) and accumulated in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryoal.learn.calibration import apply_temperature, calibrated_softmax
from cryoal.scoring.gram import eval_mode

NORMS = ("l2", "tensor-sum")


def _norms(grads: list[Tensor | None]) -> dict[str, float]:
    sq = [g.double().pow(2).sum() for g in grads if g is not None]
    sq = torch.stack(sq) if sq else torch.zeros(1, dtype=torch.float64)
    return {"l2": float(sq.sum().sqrt()), "tensor-sum": float(sq.sqrt().sum())}


def reference_scores_by_norm(
    model: nn.Module, x: Tensor, schemes: tuple[str, ...] = ("expected", "entropy"), temperature: float = 1.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-sample loop: `{norm: {scheme: (B,) float64}}` for both norms from the same gradients.

    The losses are those of the temperature-scaled logits model(x) / `temperature`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    out = {n: {s: np.zeros(x.shape[0]) for s in schemes} for n in NORMS}
    with eval_mode(model):
        for i in range(x.shape[0]):
            xi = x[i : i + 1]
            if "expected" in schemes:
                with torch.no_grad():
                    p = calibrated_softmax(model(xi), temperature)[0]
                for c in range(p.shape[0]):
                    target = torch.tensor([c], device=x.device)
                    loss = F.cross_entropy(apply_temperature(model(xi), temperature), target)
                    norms = _norms(list(torch.autograd.grad(loss, params, allow_unused=True)))
                    for n in NORMS:
                        out[n]["expected"][i] += float(p[c]) * norms[n]
            if "entropy" in schemes:
                logp = torch.log_softmax(apply_temperature(model(xi), temperature), dim=1)
                loss = -(logp.exp() * logp).sum()
                norms = _norms(list(torch.autograd.grad(loss, params, allow_unused=True)))
                for n in NORMS:
                    out[n]["entropy"][i] = norms[n]
    return out


def reference_scores(
    model: nn.Module, x: Tensor, norm: str = "l2", schemes: tuple[str, ...] = ("expected", "entropy"),
    temperature: float = 1.0,
) -> dict[str, np.ndarray]:
    """Per-sample loop: `{scheme: (B,) float64}` for `expected` and/or `entropy` under `norm`."""
    return reference_scores_by_norm(model, x, schemes, temperature)[norm]
