"""Per-layer, per-sample gradient Grams for the layer types the engine understands.

For a layer called on input A_i with output gradient G_is (one per seed s), the per-sample gradient
of each parameter tensor is a known bilinear function of (A_i, G_is). A handler collects what it
needs during the forward (the input) and during each seed's backward (the output gradient), then
returns, for each of its parameter tensors, the per-sample Gram over seeds:
``gram[i, s, t] = <dtheta_is, dtheta_it>``, shape (B, S, S), float64.

Three ways to reach a Gram, chosen per layer by cost:
- materialise: form the per-sample gradients (B, S, P) and take inner products. For convolutions
  one grouped-convolution backward (groups = batch) forms them for the whole batch at once.
- outer: a Linear layer on one position has grad = g a^T, so <g_s a^T, g_t a^T> = |a|^2 (g_s . g_t).
- ghost: for a convolution with a small output, <W_s, W_t> = sum_pq <a_p, a_q> <g_sp, g_tq> over
  output positions p, q, from the unfolded input's Gram (L x L) instead of the weights (P).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per-sample scratch the ghost form may use (elements of the (S*L)^2 seed-position Gram).
GHOST_MAX_ELEMS = 1 << 22
# Ghost must beat materialising by this factor: its bmm/unfold steps run less efficiently.
GHOST_ADVANTAGE = 2.0
# Convolutions with at most this many input channels form per-sample gradients by unfold + bmm.
UNFOLD_MAX_CIN = 4
# Upper bound (elements) for one transient block of per-sample weight gradients.
MATERIALISE_BLOCK_ELEMS = 1 << 25
# Inner products over long vectors are summed in float32 blocks of this length, then in float64.
GRAM_BLOCK = 1 << 14


def gram_of(w: Tensor) -> Tensor:
    """Per-sample Gram over seeds of materialised gradients: (B, S, P) -> (B, S, S) float64.

    The sum over P runs in float32 blocks accumulated in float64: as accurate as a float64 sum for
    our purpose and much faster than converting the whole tensor.
    """
    b, s, p = w.shape
    out = torch.zeros(b, s, s, dtype=torch.float64, device=w.device)
    for start in range(0, p, GRAM_BLOCK):
        blk = w[:, :, start : start + GRAM_BLOCK]
        out += torch.bmm(blk, blk.transpose(1, 2)).double()
    return out


def ghost_gram(aa: Tensor, g: Tensor) -> Tensor:
    """Gram of per-sample weight gradients from the input-patch Gram and output gradients.

    aa: (B, L, L) inner products of input patches; g: (B, S, L, O) output gradients per position.
    Returns (B, S, S) float64 with entries sum_pq aa[p, q] * <g_s[p], g_t[q]>.
    """
    b, s, length, o = g.shape
    gm = g.reshape(b, s * length, o)
    gg = torch.bmm(gm, gm.transpose(1, 2)).view(b, s, length, s, length)
    return torch.einsum("bsptq,bpq->bst", gg.double(), aa.double())


class Handler:
    """Base class: one module, its trainable parameters, and what each call of it saw."""

    def __init__(self, module: nn.Module, names: dict[str, str]):
        self.module = module
        self.names = names  # attribute name ('weight', 'bias') -> full parameter name
        self.calls: list[dict] = []
        self.n_seeds = 0
        self.acc: dict[str, list[Tensor | None]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def on_forward(self, inp: Tensor, out: Tensor) -> dict:
        """Record one call; returns the call record (the engine adds graph bookkeeping)."""
        call = {"input": inp.detach(), "out_shape": tuple(out.shape), "grads": {}, "live": True}
        self.calls.append(call)
        return call

    def prepare(self, n_seeds: int) -> None:
        """Called once after the forward, before the first seed's backward."""
        self.n_seeds = n_seeds
        self.acc = {attr: [None] * n_seeds for attr in self.names}

    def on_grad(self, call: dict, seed: int, grad: Tensor) -> None:
        """The gradient of the loss for `seed` with respect to this call's output."""
        raise NotImplementedError

    def grams(self) -> dict[str, Tensor]:
        """Full parameter name -> (B, S, S) float64 Gram."""
        out = {}
        for attr, per_seed in self.acc.items():
            if any(t is None for t in per_seed):
                continue
            out[self.names[attr]] = gram_of(torch.stack(per_seed, dim=1))  # type: ignore[arg-type]
        return out

    # -- helpers -----------------------------------------------------------------------------
    def _add(self, attr: str, seed: int, value: Tensor) -> None:
        """Add a materialised per-sample gradient (B, P) for one seed (sums over repeated calls)."""
        if attr not in self.acc:
            return
        cur = self.acc[attr][seed]
        self.acc[attr][seed] = value if cur is None else cur + value

    @property
    def live_calls(self) -> list[dict]:
        return [c for c in self.calls if c["live"]]


# ----------------------------------------------------------------------------------------------
# Convolutions
# ----------------------------------------------------------------------------------------------


def _as_tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class ConvHandler(Handler):
    """Conv1d/2d/3d and ConvTranspose1d/2d/3d (any stride, padding, dilation, groups)."""

    def __init__(self, module: nn.Module, names: dict[str, str]):
        super().__init__(module, names)
        m = module
        self.nd = m.weight.dim() - 2
        self.transposed = bool(m.transposed)
        self.groups = m.groups
        self.kernel = tuple(m.kernel_size)
        self.stride = _as_tuple(m.stride, self.nd)
        self.dilation = _as_tuple(m.dilation, self.nd)
        self.plan = "materialise"

    # The padding the convolution itself applies, and an explicit pad for the input when the
    # module pads by other means ('same' with odd total, reflect/replicate/circular modes).
    def _padding(self, inp: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        m = self.module
        if m.padding_mode != "zeros":
            return F.pad(inp, m._reversed_padding_repeated_twice, mode=m.padding_mode), (0,) * self.nd
        if isinstance(m.padding, str):
            if m.padding == "valid":
                return inp, (0,) * self.nd
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel, strict=True)]
            left = [t // 2 for t in totals]
            if all(t % 2 == 0 for t in totals):
                return inp, tuple(left)
            pad: list[int] = []
            for t, lft in zip(reversed(totals), reversed(left), strict=True):
                pad += [lft, t - lft]
            return F.pad(inp, pad), (0,) * self.nd
        return inp, _as_tuple(m.padding, self.nd)

    def prepare(self, n_seeds: int) -> None:
        super().prepare(n_seeds)
        self.plan = self._choose_plan(n_seeds)

    def _choose_plan(self, n_seeds: int) -> str:
        """'ghost', 'unfold' (per-sample weight gradients by unfold + bmm) or 'grouped'
        (by one grouped-convolution backward). Measured on CPU: grouped convolution is fast for
        3x3x3 kernels with many input channels, slow for 1-channel inputs and 1x1x1 kernels,
        where unfold + bmm wins; ghost wins where the output grid is small."""
        live = self.live_calls
        if "weight" not in self.names or len(live) != 1 or self.transposed or self.groups != 1:
            return "grouped"
        call = live[0]
        cin = call["input"].shape[1]
        out_shape = call["out_shape"]
        cout, length = out_shape[1], math.prod(out_shape[2:])
        kin = cin * math.prod(self.kernel)
        materialise = n_seeds * length * cout * kin
        ghost = length * length * kin + n_seeds * n_seeds * length * length * cout + length * kin
        if (n_seeds * length) ** 2 <= GHOST_MAX_ELEMS and ghost * GHOST_ADVANTAGE < materialise:
            return "ghost"
        if math.prod(self.kernel) == 1 or cin <= UNFOLD_MAX_CIN:
            return "unfold"
        return "grouped"

    def on_grad(self, call: dict, seed: int, grad: Tensor) -> None:
        if "bias" in self.names:
            self._add("bias", seed, grad.flatten(2).sum(2))
        if "weight" not in self.names:
            return
        if self.plan == "ghost":
            call["grads"][seed] = grad
            return
        # Weights smaller than the output gradient: form them now and drop the gradient;
        # otherwise keep the gradient and form all seeds at once (fewer, larger products).
        if self.module.weight.numel() <= math.prod(grad.shape[1:]):
            w = self._per_sample_weight_grad(call["input"], grad.unsqueeze(1), call)
            self._add("weight", seed, w[:, 0])
            if seed == self.n_seeds - 1:
                call.pop("patches", None)  # the last seed: free the cached unfolded input
        else:
            call["grads"][seed] = grad

    def grams(self) -> dict[str, Tensor]:
        if "weight" in self.names:
            for call in self.live_calls:
                if not call["grads"]:
                    continue
                g = torch.stack([call["grads"][s] for s in range(self.n_seeds)], dim=1)
                call["grads"] = {}
                if self.plan == "ghost":
                    return {**self._ghost(call["input"], g), **super().grams()}
                w = self._per_sample_weight_grad(call["input"], g)
                for s in range(self.n_seeds):
                    self._add("weight", s, w[:, s])
        return super().grams()

    def _per_sample_weight_grad(self, inp: Tensor, g: Tensor, call: dict | None = None) -> Tensor:
        """Per-sample, per-seed weight gradients (B, S, P), in batch blocks that bound the
        transient memory (weights and, for 'unfold', the unfolded input).

        With `call` given and the batch in one block, the 'unfold' plan keeps the unfolded input
        in the call record for the next seeds: unfolding is a full copy of the input times the
        kernel volume (measured: ~7% of the default model's scoring time when redone per seed)."""
        b, s = g.shape[:2]
        per_sample = s * self.module.weight.numel()
        if self.plan == "unfold":
            per_sample += math.prod(g.shape[3:]) * self.module.weight[0].numel()
        step = max(1, MATERIALISE_BLOCK_ELEMS // max(per_sample, 1))
        fn = self._unfold_weight_grad if self.plan == "unfold" else self._grouped_weight_grad
        if step >= b:
            if self.plan == "unfold" and call is not None:
                if "patches" not in call:
                    call["patches"] = self._unfold(*self._padding(inp))
                return self._unfold_weight_grad(inp, g, call["patches"])
            return fn(inp, g)
        return torch.cat([fn(inp[i : i + step], g[i : i + step]) for i in range(0, b, step)])

    def _unfold_weight_grad(self, inp: Tensor, g: Tensor, patches: Tensor | None = None) -> Tensor:
        """groups=1: W_bs = G_bs (Cout, L) @ patches_b (L, Cin * prod(kernel)), one bmm."""
        if patches is None:
            patches = self._unfold(*self._padding(inp))
        b, s, cout = g.shape[:3]
        w = torch.bmm(g.reshape(b, s * cout, -1), patches)
        return w.reshape(b, s, -1)

    def _grouped_weight_grad(self, inp: Tensor, g: Tensor) -> Tensor:
        """Fold the batch into the channel axis: sample b is group b, so one weight gradient of a
        convolution with groups = B * groups gives every sample's (and seed's) gradient."""
        inp, padding = self._padding(inp)
        b, s, cout = g.shape[:3]
        cin = inp.shape[1]
        k = self.groups
        spatial_out = g.shape[3:]
        if self.transposed:
            # weight (Cin, Cout/k, *kernel): output channels of group (b, j) are (s, Cout/k).
            go = g.reshape(b, s, k, cout // k, *spatial_out).transpose(1, 2)
            go = go.reshape(1, b * k * s * (cout // k), *spatial_out)
            wshape = (b * cin, s * (cout // k), *self.kernel)
            in_sp, out_sp = inp.shape[2:], spatial_out
            base = [(i - 1) * st - 2 * p + d * (kk - 1) + 1 for i, st, p, d, kk in
                    zip(in_sp, self.stride, padding, self.dilation, self.kernel, strict=True)]
            out_pad = [o - bb for o, bb in zip(out_sp, base, strict=True)]
        else:
            go = g.reshape(b, s, k, cout // k, *spatial_out).transpose(1, 2)
            go = go.reshape(1, b * k * s * (cout // k), *spatial_out)
            wshape = (b * k * s * (cout // k), cin // k, *self.kernel)
            out_pad = [0] * self.nd
        x = inp.reshape(1, b * cin, *inp.shape[2:])
        dummy = x.new_empty(1).expand(wshape)
        gw = torch.ops.aten.convolution_backward(
            go, x, dummy, None, list(self.stride), list(padding), list(self.dilation),
            self.transposed, out_pad, b * k, [False, True, False],
        )[1]
        if self.transposed:
            # (b, k, cin/k, s, cout/k, *kernel) -> (b, s, k, cin/k, cout/k, *kernel)
            gw = gw.reshape(b, k, cin // k, s, cout // k, -1).permute(0, 3, 1, 2, 4, 5)
        else:
            # (b, k, s, cout/k, cin/k, *kernel) -> (b, s, k, cout/k, cin/k, *kernel)
            gw = gw.reshape(b, k, s, -1).transpose(1, 2)
        return gw.reshape(b, s, -1)

    def _ghost(self, inp: Tensor, g: Tensor) -> dict[str, Tensor]:
        """Weight Gram in ghost form for a groups=1 convolution (see module docstring)."""
        inp, padding = self._padding(inp)
        patches = self._unfold(inp, padding)  # (B, L, Cin * prod(kernel))
        aa = torch.bmm(patches, patches.transpose(1, 2))
        b, s, cout = g.shape[:3]
        gl = g.reshape(b, s, cout, -1).transpose(2, 3)  # (B, S, L, Cout)
        return {self.names["weight"]: ghost_gram(aa, gl)}

    def _unfold(self, inp: Tensor, padding: Sequence[int]) -> Tensor:
        pad: list[int] = []
        for p in reversed(padding):
            pad += [p, p]
        x = F.pad(inp, pad) if any(padding) else inp
        for d in range(self.nd):
            span = self.dilation[d] * (self.kernel[d] - 1) + 1
            x = x.unfold(2 + d, span, self.stride[d])
            if self.dilation[d] > 1:
                x = x[..., :: self.dilation[d]]
        # x: (B, Cin, *out_spatial, *kernel) -> (B, L, Cin * prod(kernel))
        b, cin = x.shape[:2]
        nd = self.nd
        perm = [0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd)]
        return x.permute(perm).reshape(b, -1, cin * math.prod(self.kernel))


# ----------------------------------------------------------------------------------------------
# Linear
# ----------------------------------------------------------------------------------------------


class LinearHandler(Handler):
    """nn.Linear on (B, F) or (B, ..., F) inputs."""

    def prepare(self, n_seeds: int) -> None:
        super().prepare(n_seeds)
        live = self.live_calls
        self.outer = len(live) == 1 and live[0]["input"].dim() == 2

    def on_grad(self, call: dict, seed: int, grad: Tensor) -> None:
        b = grad.shape[0]
        if self.outer:
            call["grads"][seed] = grad
            return
        g = grad.reshape(b, -1, grad.shape[-1])  # (B, L, O)
        if "bias" in self.names:
            self._add("bias", seed, g.sum(1))
        if "weight" in self.names:
            a = call["input"].reshape(b, -1, call["input"].shape[-1])  # (B, L, I)
            self._add("weight", seed, torch.bmm(g.transpose(1, 2), a).reshape(b, -1))

    def grams(self) -> dict[str, Tensor]:
        if not self.outer:
            return super().grams()
        call = self.live_calls[0]
        g = torch.stack([call["grads"][s] for s in range(self.n_seeds)], dim=1)  # (B, S, O)
        gg = gram_of(g)
        out = {}
        if "weight" in self.names:
            a = call["input"]
            out[self.names["weight"]] = gg * a.double().pow(2).sum(1)[:, None, None]
        if "bias" in self.names:
            out[self.names["bias"]] = gg
        return out


# ----------------------------------------------------------------------------------------------
# Normalisation layers with an elementwise affine (weight * x_hat + bias)
# ----------------------------------------------------------------------------------------------


class NormHandler(Handler):
    """BatchNorm (eval, running statistics), GroupNorm, InstanceNorm (affine) and LayerNorm.

    The per-sample gradients are sum(G * x_hat) for the weight and sum(G) for the bias, summed
    over every axis the parameter is broadcast along.
    """

    def _x_hat(self, inp: Tensor) -> Tensor:
        m = self.module
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return F.batch_norm(inp, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)
        if isinstance(m, nn.GroupNorm):
            return F.group_norm(inp, m.num_groups, None, None, m.eps)
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            use_running = m.track_running_stats and not m.training
            return F.instance_norm(inp, m.running_mean if use_running else None,
                                   m.running_var if use_running else None, None, None,
                                   not use_running, 0.0, m.eps)
        if isinstance(m, nn.LayerNorm):
            return F.layer_norm(inp, m.normalized_shape, None, None, m.eps)
        raise TypeError(type(m).__name__)

    def _reduce(self, t: Tensor) -> Tensor:
        """Sum a (B, ...) tensor over the axes the parameters are broadcast along -> (B, P)."""
        m = self.module
        b = t.shape[0]
        if isinstance(m, nn.LayerNorm):
            return t.reshape(b, -1, math.prod(m.normalized_shape)).sum(1)
        if t.dim() == 2:
            return t
        return t.reshape(b, t.shape[1], -1).sum(2)

    def on_grad(self, call: dict, seed: int, grad: Tensor) -> None:
        m = self.module
        if "bias" in self.names:
            self._add("bias", seed, self._reduce(grad))
        if "weight" not in self.names:
            return
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and grad.dim() > 2:
            # Eval BN: x_hat = (x - mean) * invstd per channel, so sum(G * x_hat) =
            # invstd * (sum(G * x) - mean * sum(G)): two reductions, no temporary the size of x.
            inp = call["input"]
            b, c = grad.shape[:2]
            gx = torch.bmm(grad.reshape(b * c, 1, -1), inp.reshape(b * c, -1, 1)).view(b, c)
            gsum = grad.reshape(b, c, -1).sum(2)
            invstd = (m.running_var + m.eps).rsqrt()
            self._add("weight", seed, (gx - m.running_mean * gsum) * invstd)
            return
        self._add("weight", seed, self._reduce(grad * self._x_hat(call["input"])))


def make_handler(module: nn.Module, names: dict[str, str]) -> Handler | None:
    """The handler for `module`, or None when the engine must use the generic fallback."""
    if isinstance(module, (nn.modules.conv._ConvNd)):
        return ConvHandler(module, names)
    if isinstance(module, nn.Linear):
        return LinearHandler(module, names)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is None or module.training:
            return None  # batch statistics: samples are coupled (the engine checks this first)
        return NormHandler(module, names)
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)):
        if set(names) <= {"weight", "bias"}:
            return NormHandler(module, names)
    return None
