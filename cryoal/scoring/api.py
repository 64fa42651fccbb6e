"""The scoring API behind `cryoal.scoring`: `score`, `as_model_input`, `model_device`.

`score(model, batch, scheme)` gives, for one batch, the scores `cryoal select` writes.
The schemes live in `registry.SCHEMES`; the gradient-norm engine is `gradnorm.py` over `gram.py`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cryoal.learn.device import exact_float32
from cryoal.models.input import model_device, to_model_input
from cryoal.models.input import to_model_input as as_model_input  # the public name here
from cryoal.scoring.registry import SCHEMES, BatchScheme, ScoreContext, ScoreScheme, get_scheme

__all__ = ["SCHEMES", "score", "get_scheme", "as_model_input", "model_device"]


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
    from cryoal.learn.calibration import calibrated_softmax, temperature_of

    sch = get_scheme(scheme)
    x = to_model_input(model, batch)
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

    probs = pooled_probs(calibrated_softmax(logits, t).cpu().numpy())  # (B, C) per sample
    labelled = kw.get("labelled_features")
    order, gains = sch.choose(probs, feats.double().cpu().numpy(), len(x), labelled, seed)
    return gains_by_index(order, gains, len(x))
