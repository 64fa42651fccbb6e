"""The per-sample gradient Gram engine.

Given a model f, a batch x and, per sample, S "seed" vectors v_is in output space, this computes
for every sample i the S x S Gram matrix

    K_i[s, t] = < J_i^T v_is , J_i^T v_it >        (J_i: Jacobian of f(x_i) w.r.t. all parameters)

over all trainable parameters, either summed (one global inner product) or per parameter tensor.
Every gradient-norm score is a quadratic form in K: for a loss whose gradient with respect to the
output is u = sum_s alpha_s v_s, the squared parameter-gradient norm is alpha^T K alpha.

How: one batched forward with hooks on every layer that has parameters, then one batched backward
per seed that only computes gradients with respect to activations (never parameter gradients).
Each layer's hook receives its output gradient for that seed and turns (input, output gradient)
into per-sample Gram contributions (see `layers.py`). Parameters of layer types the engine does
not know, or used in ways it cannot see, take a generic path: per-sample gradients by
`torch.func.vmap(grad)` over chunks of the batch. That path is slower but exact.

A leading conv -> BatchNorm -> ReLU -> max-pool block (a CNN stem at full resolution) is not
differentiated through: each seed's backward stops at the pool output and `fused.py` forms the
block's per-sample gradients there, from the argmax voxels only.

The model is scored in eval mode (BatchNorm in train mode would mix samples), and restored after.
Models whose eval-mode forward still couples samples (BatchNorm without running statistics) are
scored one sample at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from cryoal.scoring.fused import find_stem_chains
from cryoal.scoring.layers import Handler, gram_of, make_handler

SeedFn = Callable[[Tensor], Tensor]
# Samples per vmap call on the generic path (bounds its memory).
FALLBACK_CHUNK = 8
# Fuse a leading conv -> BatchNorm -> ReLU -> max-pool block's backward (see `fused.py`).
# Off only to measure or test the unfused path.
FUSE_STEMS = True


@dataclass
class GramResult:
    """Output of `per_sample_gram`.

    output: the model output for the batch (detached). seeds: the (B, S, *out) seed vectors used.
    total: (B, S, S) float64 Gram over all trainable parameters. per_tensor: parameter name ->
    (B, S, S) float64, only when asked for.
    """

    output: Tensor
    seeds: Tensor
    total: Tensor
    per_tensor: dict[str, Tensor] | None = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's previous mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _couples_samples(model: nn.Module) -> bool:
    """True when the eval-mode forward mixes samples (BatchNorm without running statistics)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules()
    )


class _Plan:
    """Which module handles which parameter, and which parameters go the generic way."""

    def __init__(self, model: nn.Module):
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        owners: dict[int, list[nn.Module]] = {}
        for m in model.modules():
            for p in m.parameters(recurse=False):
                if p.requires_grad:
                    owners.setdefault(id(p), []).append(m)
        self.handlers: dict[nn.Module, Handler] = {}
        self.fallback: dict[str, nn.Parameter] = {}
        for m in model.modules():
            own = {a: p for a, p in m.named_parameters(recurse=False) if p.requires_grad}
            if not own:
                continue
            shared = any(len(owners[id(p)]) > 1 for p in own.values())
            handler = None if shared else make_handler(m, {a: names[id(p)] for a, p in own.items()})
            if handler is None:
                for p in own.values():
                    self.fallback[names[id(p)]] = p
            else:
                self.handlers[m] = handler

    def demote(self, module: nn.Module) -> None:
        """Send a module's parameters to the generic path (its use could not be verified)."""
        handler = self.handlers.pop(module)
        for attr, name in handler.names.items():
            self.fallback[name] = getattr(module, attr)


def _graph(root) -> tuple[list, dict[int, int]]:
    """Nodes of the autograd graph below `root` in topological order (parents first), and how
    many graph edges lead to each parameter (by id)."""
    uses: dict[int, int] = {}
    parents: dict = {root: 0}
    stack = [root]
    while stack:  # iterative: models can be deep
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            var = getattr(child, "variable", None)
            if var is not None:
                uses[id(var)] = uses.get(id(var), 0) + 1
                continue
            if child not in parents:
                parents[child] = 0
                stack.append(child)
            parents[child] += 1
    order, ready = [], [root]
    while ready:
        node = ready.pop()
        order.append(node)
        for child, _ in node.next_functions:
            if child in parents:
                parents[child] -= 1
                if parents[child] == 0:
                    ready.append(child)
    return order, uses


def _earliest(order: list, taps: set) -> list:
    """Tap nodes with no other tap below them. A backward pass that stops there still runs every
    tap's hook, and computes nothing below the first layers (e.g. no gradient for the input)."""
    below: dict = {}
    for node in reversed(order):  # children before parents
        below[node] = any(
            child is not None and child in below and (child in taps or below[child])
            for child, _ in node.next_functions
        )
    return [n for n in order if n in taps and not below[n]]


def per_sample_gram(
    model: nn.Module, x: Tensor, seed_fn: SeedFn, *, per_tensor: bool = False
) -> GramResult:
    """Per-sample Gram of parameter gradients J_i^T v_is over seeds s (see module docstring).

    `seed_fn(output)` receives the detached model output (B, *out) and returns seeds (B, S, *out).
    """
    with eval_mode(model):
        if _couples_samples(model) and x.shape[0] > 1:
            parts = [_gram_batch(model, x[i : i + 1], seed_fn, per_tensor) for i in range(x.shape[0])]
            return concat_results(parts)
        return _gram_batch(model, x, seed_fn, per_tensor)


def concat_results(parts: list[GramResult]) -> GramResult:
    """The results of consecutive chunks of a batch as one result."""
    per_tensor = None
    if parts[0].per_tensor is not None:
        per_tensor = {k: torch.cat([p.per_tensor[k] for p in parts]) for k in parts[0].per_tensor}  # type: ignore[index]
    return GramResult(
        output=torch.cat([p.output for p in parts]),
        seeds=torch.cat([p.seeds for p in parts]),
        total=torch.cat([p.total for p in parts]),
        per_tensor=per_tensor,
    )


def _gram_batch(model: nn.Module, x: Tensor, seed_fn: SeedFn, per_tensor: bool) -> GramResult:
    plan = _Plan(model)
    state = {"seed": 0}
    taps: dict = {}  # autograd node of a hooked call's output -> (module, handler, call, edge)

    def on_grad(module: nn.Module, handler: Handler, call: dict, grad: Tensor) -> None:
        if plan.handlers.get(module) is handler and call["live"]:
            handler.on_grad(call, state["seed"], grad)

    def forward_hook(module, args, out):
        handler = plan.handlers.get(module)
        if handler is None:
            return
        if not (isinstance(out, Tensor) and out.grad_fn is not None and args and isinstance(args[0], Tensor)):
            plan.demote(module)  # not a plain tensor -> tensor call: let the generic path handle it
            return
        call = handler.on_forward(args[0], out)
        taps[out.grad_fn] = (module, handler, call, get_gradient_edge(out))
        out.register_hook(lambda g, m=module, h=handler, c=call: on_grad(m, h, c, g))

    hooks = [m.register_forward_hook(forward_hook) for m in list(plan.handlers)]
    try:
        with torch.enable_grad():
            output = model(x)
    finally:
        for h in hooks:
            h.remove()
    result = output.detach()
    seeds = seed_fn(result)
    n_seeds = seeds.shape[1]
    b = x.shape[0]

    if output.grad_fn is not None:
        order, uses = _graph(output.grad_fn)
        in_graph = set(order)
        for node, (_, _, call, _) in taps.items():
            call["live"] = node in in_graph
        for module, handler in list(plan.handlers.items()):
            n_live = len(handler.live_calls)
            if any(uses.get(id(getattr(module, a)), 0) != n_live for a in handler.names):
                plan.demote(module)  # used other than through its calls: cannot be trusted
            elif n_live == 0:
                del plan.handlers[module]  # unused: zero gradient
        active = {n for n, (m, h, c, _) in taps.items() if plan.handlers.get(m) is h and c["live"]}
        earliest = _earliest(order, active)
        chains = find_stem_chains(order, taps, plan.handlers, earliest) if FUSE_STEMS else []
        fused = {c.conv_node for c in chains}
        for chain in chains:  # their parameters' Grams come from the pool-output gradients
            del plan.handlers[chain.conv.module], plan.handlers[chain.norm.module]
        stops = [taps[n][3] for n in earliest if n not in fused] + [c.stop for c in chains]
        for handler in plan.handlers.values():
            handler.prepare(n_seeds)
        pooled: list[list[Tensor]] = [[] for _ in chains]
        for s in range(n_seeds if stops else 0):
            state["seed"] = s
            grads = torch.autograd.grad(output, stops, seeds[:, s], retain_graph=s < n_seeds - 1)
            for k in range(len(chains)):
                pooled[k].append(grads[len(stops) - len(chains) + k])
    else:
        plan.handlers.clear()
        chains, pooled = [], []
    del output
    taps.clear()  # drop the graph edges and saved inputs before the Gram work

    grams: dict[str, Tensor] = {}
    for chain, per_seed in zip(chains, pooled, strict=True):
        grams.update(chain.grams(torch.stack(per_seed, dim=1)))
    del chains, pooled
    for handler in plan.handlers.values():
        grams.update(handler.grams())
    if plan.fallback:
        grams.update(_fallback_grams(model, x, seeds, plan.fallback))
    total = torch.zeros(b, n_seeds, n_seeds, dtype=torch.float64, device=x.device)
    for g in grams.values():
        total += g
    return GramResult(output=result, seeds=seeds, total=total, per_tensor=grams if per_tensor else None)


def _fallback_grams(
    model: nn.Module, x: Tensor, seeds: Tensor, params: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Exact per-sample Grams for `params` by `vmap(grad)` over (sample, seed) pairs, in chunks."""
    from torch.func import functional_call, grad, vmap

    frozen = {n: p.detach() for n, p in params.items()}

    def inner(p: dict[str, Tensor], xi: Tensor, vi: Tensor) -> Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return (out.squeeze(0) * vi).sum()

    per_sample = vmap(grad(inner), in_dims=(None, 0, 0))
    b, s = seeds.shape[:2]
    parts: dict[str, list[Tensor]] = {n: [] for n in params}
    for start in range(0, b, FALLBACK_CHUNK):
        xc, vc = x[start : start + FALLBACK_CHUNK], seeds[start : start + FALLBACK_CHUNK]
        n = xc.shape[0]
        xr = xc.unsqueeze(1).expand(n, s, *xc.shape[1:]).reshape(n * s, *xc.shape[1:])
        with torch.no_grad():  # func.grad still differentiates; this stops tracking other params
            grads = per_sample(frozen, xr, vc.reshape(n * s, *vc.shape[2:]))
        for name, g in grads.items():
            parts[name].append(g.reshape(n, s, -1))
    return {name: gram_of(torch.cat(chunks)) for name, chunks in parts.items()}
