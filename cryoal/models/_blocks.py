"""Building blocks shared by the 3D classifiers (conv -> BatchNorm -> ReLU, always in that order).

Conv is always directly followed by its BatchNorm so that the scoring engine can fold eval-mode
BN into the preceding convolution. ReLUs are not in-place: hooks that keep a module's output
(per-sample gradient tools) must see the value the module returned, not its rectified overwrite.
"""

from __future__ import annotations

from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """A 3D convolution (same padding, no bias: BN supplies it), BatchNorm3d and ReLU."""
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(),
    )


class Classifier(nn.Module):
    """Base for every classifier: `forward(x) == head(features(x))`.

    Subclasses set `self.trunk` (B, 1, D, H, W) -> (B, F) including the final dropout, and
    `self.head` (nn.Linear F -> C).
    """

    trunk: nn.Module
    head: nn.Linear

    def features(self, x):
        """Penultimate activations (B, F): what coreset and badge embed."""
        return self.trunk(x)

    def forward(self, x):
        return self.head(self.features(x))


def init_weights(module: nn.Module) -> None:
    """He init for convs and linears, unit/zero BN: a deterministic function of the torch seed."""
    for m in module.modules():
        if isinstance(m, (nn.Conv3d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm3d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
