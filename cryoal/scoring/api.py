"""The scoring API behind `cryoal.scoring`: `score`, `as_model_input`, `model_device`.

`score(model, batch, scheme)` gives, for one batch, the scores `cryoal select` writes.
The schemes live in `registry.SCHEMES`; the gradient-norm engine is `gradnorm.py` over `gram.py`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from cryoal.device import exact_float32
from cryoal.scoring.registry import SCHEMES, BatchScheme, ScoreContext, ScoreScheme, get_scheme

__all__ = ["SCHEMES", "score", "get_scheme", "as_model_input", "model_device"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def as_model_input(model: nn.Module, batch, device: torch.device | None = None) -> Tensor:
    """A float32 tensor on the model's device, with the channel axis added when `batch` is shaped
    like the pool's volumes (B, D, H, W) or (B, H, W) rather than the model's input."""
    x = torch.as_tensor(np.asarray(batch) if not isinstance(batch, Tensor) else batch)
    x = x.to(device=device or model_device(model), dtype=torch.float32)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first_conv is not None and x.dim() == first_conv.weight.dim() - 1:
        x = x.unsqueeze(1)
    return x


@exact_float32()
def score(model: nn.Module, batch, scheme: str, **kw) -> np.ndarray:
    """Scores (B,) for one batch, higher = label first: the numbers `cryoal select` writes.

    `batch` is the model input (B, 1, D, H, W), or pool volumes (B, D, H, W) (a channel axis is
    added). Keywords: `norm` ("l2" or "tensor-sum", gradient-norm schemes), `mc_passes` (bald,
    default 20), `seed` (random, bald, badge and the sampled `expected`; default 0), `samples`
    (`expected` on per-pixel outputs: label maps drawn, default 8), `labelled_features` (coreset:
    (M, F) features of labelled particles, the initial centres), `calibrated` (default True:
    divide the logits by the model's fitted temperature, as `select` does; False: raw logits).

    For `coreset` and `badge`, which choose a set rather than score one sample at a time, the
    batch is ordered greedily in full and each sample's score is its gain when picked: the
    distance to the nearest earlier pick (coreset in feature space, starting from the labelled
    features if given; badge in gradient-embedding space). `select` ranks by that pick order.
    """
    from cryoal.calibration import temperature_of

    sch = get_scheme(scheme)
    x = as_model_input(model, batch)
    seed = kw.get("seed", 0)
    t = temperature_of(model) if kw.get("calibrated", True) else 1.0
    if isinstance(sch, ScoreScheme):
        ctx = ScoreContext.make(norm=kw.get("norm", "l2"), mc_passes=kw.get("mc_passes", 20), seed=seed,
                                samples=kw.get("samples", 8), temperature=t)
        return sch.score(model, x, ctx)[0]
    assert isinstance(sch, BatchScheme)
    from cryoal.scoring.diversity import gains_by_index, penultimate
    from cryoal.scoring.gram import eval_mode

    with torch.no_grad(), eval_mode(model):
        logits, feats = penultimate(model, x)
    from cryoal.scoring.segmentation import pooled_probs

    probs = pooled_probs(torch.softmax(logits.double() / t, dim=1).cpu().numpy())  # (B, C) per sample
    labelled = kw.get("labelled_features")
    order, gains = sch.choose(probs, feats.double().cpu().numpy(), len(x), labelled, seed)
    return gains_by_index(order, gains, len(x))
