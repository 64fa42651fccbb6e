"""The one conversion from pool volumes to a model's input, shared by training, inference,
selection and the scoring API."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

Batch = np.ndarray | torch.Tensor
Device = torch.device | str


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU if it has neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def particle_ndim(model: nn.Module) -> int | None:
    """Axes of one particle the model takes (3 for volumes, 2 for images); None if it cannot tell.

    Models built here carry `input_shape`; for others the first convolution's weight tells."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return len(shape)
    first_conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return first_conv.weight.dim() - 2 if first_conv is not None else None


def as_input(batch: Batch, ndim: int | None = None, device: Device | None = None) -> torch.Tensor:
    """A float32 tensor on `device` (default: where it is) from a batch of particles: the channel
    axis is added when the batch has `ndim` + 1 axes, pool volumes (B, *shape) rather than the
    model's (B, 1, *shape). `ndim` None: the batch is pool volumes, the axis is always added."""
    x = torch.as_tensor(np.ascontiguousarray(batch) if isinstance(batch, np.ndarray) else batch)
    if ndim is None or x.dim() == ndim + 1:
        x = x.unsqueeze(1)
    return x.to(device=device if device is not None else x.device, dtype=torch.float32, non_blocking=True)


def to_model_input(model: nn.Module, batch: Batch, device: Device | None = None) -> torch.Tensor:
    """`batch` as `model`'s input: float32 on `device` (default: the model's), the channel axis
    added when the batch is shaped like the pool's volumes (B, D, H, W) or (B, H, W)."""
    ndim = particle_ndim(model)
    x = torch.as_tensor(np.ascontiguousarray(batch) if isinstance(batch, np.ndarray) else batch)
    return as_input(x, ndim if ndim is not None else x.dim() - 2, device or model_device(model))


__all__ = ["as_input", "model_device", "particle_ndim", "to_model_input"]
