"""Data-parallel training under torchrun: DistributedDataParallel with BatchNorm over the global batch.

`fit` trains on one GLOBAL batch per step, exactly as a single process does (same shuffling,
same augmentation of every sample, same `--batch-size`), and each rank computes the forward and
backward of its contiguous share of that batch (`cryoal.learn.distributed.rank_slice`); DDP averages
the gradients. BatchNorm in training mode must then normalise with the statistics of the whole
global batch, or each rank would see a smaller batch than a single process: on CUDA this is
PyTorch's `SyncBatchNorm`; gloo on CPU has none, so `GlobalBatchNorm` below does the same with
two differentiable all-reduces. The only remaining difference from a single process is dropout:
each rank draws its own masks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from cryoal.learn.distributed import DistContext


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: every rank's output depends on every rank's input, so the
    gradient of an input is the sum over ranks of the output gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of `tensor` over ranks."""
    return _AllReduceSum.apply(tensor)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics cover the samples of every rank (any input rank)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        # two passes (mean, then centred squares): stable in float32, unlike E[x^2] - E[x]^2
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() / c])])
        total = all_reduce(local)
        n = total[-1]
        mean = total[:c] / n
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (n / (n - 1)).clamp_min(0)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _swap_batchnorm(model: nn.Module, make) -> dict[str, type]:
    """Replace every BatchNorm by `make(bn)`; returns {module name: original class}."""
    kinds: dict[str, type] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, _BatchNorm) and name:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = make(name, module)
            new.load_state_dict(module.state_dict())
            new.train(module.training)
            new.to(module.running_mean.device if module.running_mean is not None else "cpu")
            setattr(parent, attr, new)
            kinds[name] = type(module)
    return kinds


def _same_params(bn: _BatchNorm, cls: type) -> _BatchNorm:
    return cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)


def wrap_for_training(model: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """`model` ready for data-parallel training (DDP, global-batch BatchNorm); `model` itself when
    not distributed. Undo with `unwrap_trained`."""
    if not ctx.distributed:
        return model
    bn_class = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    model._cryoal_bn_kinds = _swap_batchnorm(model, lambda _, bn: _same_params(bn, bn_class))
    if device.type == "cuda":
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def unwrap_trained(model: nn.Module) -> nn.Module:
    """The plain model back from `wrap_for_training`: no DDP wrapper, the original BatchNorm classes."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    kinds = model.__dict__.pop("_cryoal_bn_kinds", None)
    if kinds:
        _swap_batchnorm(model, lambda name, bn: _same_params(bn, kinds[name]))
    return model


def loss_for_global_mean(per_sample: torch.Tensor, n_global: int, ctx: DistContext) -> torch.Tensor:
    """The loss to backward on this rank so that DDP's gradient average is the gradient of the
    mean loss over the global batch (`n_global` samples), whatever each rank's share."""
    return per_sample.sum() * (ctx.world_size / n_global)


__all__ = ["GlobalBatchNorm", "loss_for_global_mean", "unwrap_trained", "wrap_for_training"]
