"""A fused per-sample backward for a network's first block: conv -> BatchNorm (eval) -> ReLU -> max-pool.

A subtomogram CNN's first block runs at full resolution, so its output gradient is the largest
tensor of every backward pass, and max-pool, ReLU and BatchNorm backward are memory-bound sweeps
over it, once per seed. Yet the block's backward is local and sparse: max-pool sends each window's
gradient to one voxel (the window's argmax), ReLU masks it and eval BatchNorm scales it per
channel. So the engine stops each seed's backward at the pool's output and forms the block's
per-sample parameter gradients from there, with the conv's input patches gathered at the argmax
voxels only: 1/prod(pool kernel) of the work, no full-resolution gradient, and the same numbers.

The pattern is found in the autograd graph, not in module names, and used only when it is exact:
the conv is a tap with nothing to differentiate below it (its input is the data), each node of
the chain has exactly one consumer, the ReLU is a plain ReLU and the pool windows do not overlap
(kernel == stride, no padding, dilation 1), so every voxel receives at most one window's gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

from cryoal.scoring.layers import MATERIALISE_BLOCK_ELEMS, ConvHandler, Handler, NormHandler, gram_of


class StemChain:
    """One matched conv -> BatchNorm -> ReLU -> max-pool chain and what its fused backward needs.

    The argmax indices and the ReLU mask there are read from the pool's saved tensors when the
    chain is found, because the last seed's backward frees them."""

    def __init__(self, conv: ConvHandler, norm: NormHandler, conv_node, pool_node):
        self.conv, self.norm, self.conv_node = conv, norm, conv_node
        self.stop = GradientEdge(pool_node, 0)  # each seed's backward stops at the pool output
        relu_out = pool_node._saved_self
        b, c = relu_out.shape[:2]
        self.idx = pool_node._saved_result1.reshape(b, c, -1)  # argmax voxel of each window
        # ReLU backward at the argmax voxels: pass where the pooled value is positive.
        self.mask = relu_out.reshape(b, c, -1).gather(2, self.idx) > 0

    def grams(self, pooled_grads: Tensor) -> dict[str, Tensor]:
        """Per-sample Grams (B, S, S) of the chain's parameters from the pool-output gradients
        (B, S, C, *pooled spatial) of every seed."""
        conv, norm = self.conv, self.norm
        bn = norm.module
        b, s, c = pooled_grads.shape[:3]
        g = pooled_grads.reshape(b, s, c, -1) * self.mask.unsqueeze(1)  # dL/d(BN output), (B,S,C,Q)
        invstd = (bn.running_var + bn.eps).rsqrt()
        out: dict[str, Tensor] = {}
        if "bias" in norm.names:
            out[norm.names["bias"]] = gram_of(g.sum(3))
        if "weight" in norm.names:
            z = norm.live_calls[0]["input"].reshape(b, c, -1)
            x_hat = (z.gather(2, self.idx) - bn.running_mean[:, None]) * invstd[:, None]
            out[norm.names["weight"]] = gram_of((g * x_hat.unsqueeze(1)).sum(3))
        scale = invstd if bn.weight is None else bn.weight.detach() * invstd
        g = g * scale[:, None]  # dL/d(conv output) at the argmax voxels
        if "bias" in conv.names:
            out[conv.names["bias"]] = gram_of(g.sum(3))
        if "weight" in conv.names:
            out[conv.names["weight"]] = gram_of(self._conv_weight_grads(g, self.idx))
        return out

    def _conv_weight_grads(self, g: Tensor, idx: Tensor) -> Tensor:
        """Per-sample conv weight gradients (B, S, P): for output channel o,
        W[o, :] = sum_q g[o, q] * patch(argmax(o, q)), over the pooled positions q only."""
        conv = self.conv
        inp = conv.live_calls[0]["input"]
        b, s, c, q = g.shape
        k = inp.shape[1] * math.prod(conv.kernel)
        step = max(1, MATERIALISE_BLOCK_ELEMS // (c * q * k))  # bounds the gathered patches
        parts = []
        for i in range(0, b, step):
            patches = conv._unfold(*conv._padding(inp[i : i + step]))  # (b', L, K)
            n, length = patches.shape[:2]
            # Rows of the flattened patches: index_select copies whole rows (measured ~2x faster
            # than gather with an index expanded along K).
            first_row = length * torch.arange(n, device=idx.device)[:, None]
            rows = idx[i : i + step].reshape(n, c * q) + first_row
            gathered = patches.reshape(n * length, k).index_select(0, rows.reshape(-1)).reshape(n * c, q, k)
            gi = g[i : i + step].permute(0, 2, 1, 3).reshape(n * c, s, q)
            w = torch.bmm(gi, gathered).reshape(n, c, s, k).transpose(1, 2)
            parts.append(w.reshape(n, s, c * k))
        return torch.cat(parts)


def find_stem_chains(
    order: list, taps: dict, handlers: dict[nn.Module, Handler], earliest: list
) -> list[StemChain]:
    """The earliest conv taps that start an exact conv -> BN -> ReLU -> max-pool chain.

    order: graph nodes, parents first; taps: node -> (module, handler, call, edge); handlers: the
    engine's live handlers; earliest: the tap nodes the backward would otherwise stop at."""
    consumers: dict = {}
    for node in order:
        for child, _ in node.next_functions:
            if child is not None:
                consumers.setdefault(child, []).append(node)
    by_module: dict = {}
    for node, (module, handler, call, _) in taps.items():
        if handlers.get(module) is handler and call["live"]:
            by_module.setdefault(module, []).append(node)

    def only_consumer(node):
        users = consumers.get(node, [])
        return users[0] if len(users) == 1 else None

    chains = []
    for conv_node in earliest:
        conv_module, conv = taps[conv_node][0], taps[conv_node][1]
        if not (isinstance(conv, ConvHandler) and _plain_conv(conv_module, by_module)):
            continue
        if any(child is not None and not hasattr(child, "variable") for child, _ in conv_node.next_functions):
            continue  # something below the conv needs a gradient
        norm_node = only_consumer(conv_node)
        tap = taps.get(norm_node)
        if tap is None or not isinstance(tap[1], NormHandler) or handlers.get(tap[0]) is not tap[1]:
            continue
        bn = tap[0]
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or len(by_module.get(bn, [])) != 1:
            continue
        relu_node = only_consumer(norm_node)
        if relu_node is None or relu_node.name() != "ReluBackward0":
            continue
        pool_node = only_consumer(relu_node)
        if pool_node is not None and _non_overlapping_max_pool(pool_node):
            chains.append(StemChain(conv, tap[1], conv_node, pool_node))
    return chains


def _plain_conv(module: nn.Module, by_module: dict) -> bool:
    """A groups=1, non-transposed convolution called once, with zero padding."""
    return (
        len(by_module.get(module, [])) == 1
        and not module.transposed
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def _non_overlapping_max_pool(node) -> bool:
    """A max-pool node whose windows tile the input without overlap (no padding, no dilation)."""
    if not (node.name().startswith("MaxPool") and "WithIndices" in node.name()):
        return False
    nd = node._saved_self.dim() - 2

    def per_axis(v) -> list[int]:  # a single value stands for every axis
        v = list(v)
        return v * nd if len(v) == 1 else v

    kernel = per_axis(node._saved_kernel_size)
    stride = per_axis(node._saved_stride) if len(node._saved_stride) else kernel  # [] = kernel
    return (
        kernel == stride
        and not any(node._saved_padding)
        and all(d == 1 for d in node._saved_dilation)
        and not node._saved_ceil_mode
    )
