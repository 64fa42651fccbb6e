"""Helpers shared by the model and scoring tests."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batchnorm(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (as after
    training), so that tests do not pass only because BatchNorm is the identity."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(c, generator=gen) - 0.5)
    return model
