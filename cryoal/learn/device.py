"""Device choice and seeding: `resolve_device`, `seed_everything`, and `exact_float32`."""

from __future__ import annotations

import contextlib
import os
import random
from typing import TYPE_CHECKING

import numpy as np

from cryoal.errors import CryoalError

if TYPE_CHECKING:
    import torch

# torch is imported inside each function: the CLI imports this module (through `select` and
# `predict`, for the exact_float32 guard) for commands that never touch torch, such as extract.

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def available_cpus() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA if available else CPU; 'cpu'; 'cuda' or 'cuda:N' (error if CUDA is absent)."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CryoalError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CryoalError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise CryoalError(f"--device {name}: unknown device; choose one of {', '.join(DEVICE_CHOICES)}")


def use_all_cpu_cores() -> int:
    """Let torch use every core this process may run on (intra-op threads); returns that count.

    An explicit `OMP_NUM_THREADS` in the environment (a batch scheduler's CPU share, or a user
    sharing the machine) is honoured instead.
    """
    import torch

    n = available_cpus()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class exact_float32(contextlib.ContextDecorator):  # noqa: N801 (used as a decorator, like a function)
    """Run float32 CUDA convolutions and matmuls in full float32, not TF32, then restore the flags.

    On Ampere and newer GPUs torch lets cuDNN run float32 convolutions in TF32 by default, which
    rounds products to a 10-bit mantissa (relative error about 1e-3). Scores and probabilities
    would then differ from the CPU's by far more than the engine's 1e-4 contract, and a ranking
    would change with the device. Scoring and prediction therefore run under this guard; training
    does not need it (it runs in bf16/fp16 autocast on CUDA anyway). On CPU it changes nothing.
    """

    def _recreate_cm(self) -> exact_float32:
        return type(self)()  # a fresh instance per call: nested and concurrent calls keep their own state

    def __enter__(self) -> exact_float32:
        import torch

        self._saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self._saved


__all__ = ["DEVICE_CHOICES", "available_cpus", "exact_float32", "resolve_device", "seed_everything",
           "use_all_cpu_cores"]
