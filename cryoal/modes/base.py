"""The Mode interface: what a data mode supplies to training, prediction and scoring."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cryoal.models.input import as_input


@dataclass(frozen=True)
class Mode:
    """A data mode.

    - `archs` / `default_arch`: the model factory's names; `build_model(arch, shape, C, **kw)`.
    - `particle_ndim`: axes of one particle in the pool (3 for (D, H, W)).
    - `per_sample_loss(logits, targets) -> (B,)`: the training loss before the batch mean.
    - `augment(x, generator) -> x`: label-preserving random augmentation of a (B, 1, *shape) batch.
    - `augment_targets(x, y, generator) -> (x, y)`: for dense targets (masks), the same random
      transform on the inputs and their targets; None when targets are per-sample classes.
    - `targets(pool, rows) -> array`: what the model learns for those pool rows: the class index
      (N,) by default, the masks (N, *shape) for segmentation; -1 = unlabelled (sample or pixel).
    - `augmentation`: what `augment` does, in words, for the line `cryoal train` prints.
    """

    name: str
    particle_ndim: int
    archs: Sequence[str]
    default_arch: str
    build_model: Callable[..., nn.Module]
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    augment_targets: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    targets: Callable[..., np.ndarray] | None = None
    augmentation: str = "mode-specific transforms"

    def read_targets(self, pool, rows: np.ndarray) -> np.ndarray:
        """Training targets of pool `rows` (see `targets`)."""
        if self.targets is not None:
            return self.targets(pool, rows)
        return np.asarray(pool.labels)[np.asarray(rows, dtype=np.int64)]

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """(augmented inputs, their targets) for one training batch."""
        if self.augment_targets is not None:
            return self.augment_targets(x, y, generator)
        return self.augment(x, generator), y

    def to_input(self, volumes: np.ndarray) -> torch.Tensor:
        """Pool volumes (B, *shape) -> the model's float32 input (B, 1, *shape)."""
        return as_input(volumes)
