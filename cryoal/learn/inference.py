"""Batched inference helpers shared by `predict`, `select` and the benchmark.

`predict_proba(model, batch, device)` turns one batch of pool volumes into class probabilities.
(Reading the pool ahead of the model is `cryoal.io.prefetch.BatchReader`.)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

Batch = np.ndarray | torch.Tensor
Device = torch.device | str


def to_model_input(model: nn.Module, batch: Batch, device: Device) -> torch.Tensor:
    """A float32 tensor (B, 1, *shape) on `device` from pool volumes (B, *shape) or (B, 1, *shape).

    The channel axis is added when the batch has one axis fewer than the model's input would.
    """
    x = torch.as_tensor(np.ascontiguousarray(batch) if isinstance(batch, np.ndarray) else batch)
    shape = getattr(model, "input_shape", None)
    particle_ndim = len(shape) if shape is not None else x.ndim - 2
    if x.ndim == particle_ndim + 1:
        x = x.unsqueeze(1)
    return x.to(device=device, dtype=torch.float32, non_blocking=True)


@torch.no_grad()
def predict_logits(model: nn.Module, batch: Batch, device: Device) -> torch.Tensor:
    """Logits (B, C) of `model` in eval mode for one batch (no gradients, float32)."""
    model.eval()
    return model(to_model_input(model, batch, device)).float()


def predict_proba(model: nn.Module, batch: Batch, device: Device, temperature: float = 1.0) -> np.ndarray:
    """Softmax class probabilities of logits / `temperature` (B, C) as a float32 numpy array; the
    model is put in eval mode. Pass `cryoal.learn.calibration.temperature_of(model)` for calibrated ones."""
    return torch.softmax(predict_logits(model, batch, device) / temperature, dim=1).cpu().numpy()


__all__ = ["predict_logits", "predict_proba", "to_model_input"]
