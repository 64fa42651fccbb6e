"""Uncertainty baselines from the softmax output: max-entropy, margin, least-confidence, BALD.

Every score is "higher means label first".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from cryoal.learn.calibration import calibrated_softmax
from cryoal.scoring.gram import eval_mode

DROPOUT_TYPES = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of (B, C) probabilities."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 - (p_top1 - p_top2): a small margin between the two likeliest classes scores high."""
    p = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return 1.0 - (p[:, -1] - p[:, -2])


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - max_c p_c."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def bald_from_probs(mc_probs: np.ndarray) -> np.ndarray:
    """Mutual information between prediction and weights from T stochastic passes (T, B, C):
    H(mean_t p_t) - mean_t H(p_t)."""
    mc = np.asarray(mc_probs, dtype=np.float64)
    mean_h = np.mean([entropy(p) for p in mc], axis=0)
    return np.maximum(entropy(mc.mean(axis=0)) - mean_h, 0.0)


def has_dropout(model: nn.Module) -> bool:
    """True if the model has at least one dropout layer with p > 0."""
    return any(isinstance(m, DROPOUT_TYPES) and m.p > 0 for m in model.modules())


@torch.no_grad()
def mc_dropout_probs(model: nn.Module, x: Tensor, passes: int, seed: int | None = 0,
                     temperature: float = 1.0) -> np.ndarray:
    """Softmax outputs (T, B, C) of `passes` forwards with only the dropout layers in train mode.

    BatchNorm and everything else stay in eval mode, so samples do not interact. With `seed`
    set, the dropout masks are reproducible (the global RNG state is restored afterwards).
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        for m in model.modules():
            if isinstance(m, DROPOUT_TYPES):
                m.train()
        out = [calibrated_softmax(model(x), temperature).cpu().numpy() for _ in range(passes)]
    return np.stack(out)
