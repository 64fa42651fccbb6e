"""The Mode interface: what a data mode supplies to training, prediction and scoring."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Mode:
    """A data mode.

    - `archs` / `default_arch`: the model factory's names; `build_model(arch, shape, C, **kw)`.
    - `particle_ndim`: axes of one particle in the pool (3 for (D, H, W)).
    - `per_sample_loss(logits, targets) -> (B,)`: the training loss before the batch mean.
    - `augment(x, generator) -> x`: label-preserving random augmentation of a (B, 1, *shape) batch.
    """

    name: str
    particle_ndim: int
    archs: Sequence[str]
    default_arch: str
    build_model: Callable[..., nn.Module]
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]

    def to_input(self, volumes: np.ndarray) -> torch.Tensor:
        """Pool volumes (B, *shape) -> the model's float32 input (B, 1, *shape)."""
        return torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32)).unsqueeze(1)
