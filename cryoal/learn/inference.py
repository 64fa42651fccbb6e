"""Batched inference helpers shared by `predict`, `select` and the benchmark.

`predict_proba(model, batch, device)` turns one batch of pool volumes into class probabilities.
(Reading the pool ahead of the model is `cryoal.io.prefetch.BatchReader`.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cryoal.learn.calibration import apply_temperature
from cryoal.models.input import Batch, Device, to_model_input


@torch.no_grad()
def predict_logits(model: nn.Module, batch: Batch, device: Device) -> torch.Tensor:
    """Logits (B, C) of `model` in eval mode for one batch (no gradients, float32)."""
    model.eval()
    return model(to_model_input(model, batch, device)).float()


def predict_proba(model: nn.Module, batch: Batch, device: Device, temperature: float = 1.0) -> np.ndarray:
    """Softmax class probabilities of logits / `temperature` (B, C) as a float32 numpy array; the
    model is put in eval mode. Pass `cryoal.learn.calibration.temperature_of(model)` for calibrated ones."""
    logits = apply_temperature(predict_logits(model, batch, device), temperature)
    return torch.softmax(logits, dim=1).cpu().numpy()


__all__ = ["predict_logits", "predict_proba"]
