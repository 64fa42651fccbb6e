"""torch.distributed helpers: `torchrun -m cryoal select|train ...` works unchanged.

Under torchrun (WORLD_SIZE > 1 in the environment) each rank takes a disjoint shard of the work,
rank 0 merges and writes. A failure on any rank is shared with every rank before the merge, so
the whole job exits non-zero with the failing rank's message and nothing is half-written.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from cryoal.errors import CryoalError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: `rank` of `world_size` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several torchrun ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str = "cpu", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun set up (NCCL for CUDA, gloo for CPU); no-op otherwise."""
    if not launched_by_torchrun():
        return DistContext()
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(
        rank=dist.get_rank(), world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=backend,
    )


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (called once at the end of a distributed command)."""
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shard(indices: Sequence[int] | np.ndarray, ctx: DistContext) -> np.ndarray:
    """This rank's disjoint, contiguous share of `indices` (contiguous keeps HDF5 reads sequential)."""
    idx = np.asarray(indices)
    bounds = np.linspace(0, idx.size, ctx.world_size + 1).astype(np.int64)
    return idx[bounds[ctx.rank] : bounds[ctx.rank + 1]]


def gather_objects(obj: T, ctx: DistContext) -> list[T] | None:
    """Gather one picklable object per rank onto rank 0 (None on the other ranks)."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def run_on_all_ranks(work: Callable[[], T], ctx: DistContext) -> T:
    """Run `work` on this rank; if ANY rank raises, every rank raises a CryoalError naming it.

    Without this, a rank that failed would leave the others blocked in the next collective.
    """
    if not ctx.distributed:
        return work()
    result: T | None = None
    error = ""
    try:
        result = work()
    except CryoalError as exc:
        error = str(exc)
    except Exception as exc:  # still tell the other ranks before failing
        error = f"{type(exc).__name__}: {exc}"
    import torch.distributed as dist

    errors: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e]
    if failed:
        rank, msg = failed[0]
        raise CryoalError(f"rank {rank} failed: {msg}")
    return result  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# Sharding batch lists, gathering results, data-parallel training
# ------------------------------------------------------------------------------------------


def shard_range(n_batches: int, ctx: DistContext) -> tuple[int, int]:
    """(first, stop) of this rank's contiguous run of `n_batches` batches."""
    bounds = np.linspace(0, n_batches, ctx.world_size + 1).astype(np.int64)
    return int(bounds[ctx.rank]), int(bounds[ctx.rank + 1])


def shard_batches(batches: Sequence[np.ndarray], ctx: DistContext) -> list[np.ndarray]:
    """This rank's contiguous run of WHOLE batches (batch boundaries stay those of one process).

    Scores of some models differ in the last bits with what else is in the batch, so ranks score
    exactly the batches a single process would, and the merged result is identical to it.
    """
    first, stop = shard_range(len(batches), ctx)
    return list(batches[first:stop])


def gather_concat(parts: dict[str, np.ndarray] | None, ctx: DistContext) -> dict[str, np.ndarray] | None:
    """Concatenate each named array over ranks, in rank order, on rank 0 (None elsewhere).

    A rank with nothing to contribute (no batches) passes None.
    """
    gathered = gather_objects(parts, ctx)
    if gathered is None:
        return None
    present = [g for g in gathered if g is not None]
    if not present:
        return {}
    return {k: np.concatenate([g[k] for g in present]) for k in present[0]}


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def rank_device(device, ctx: DistContext):
    """The device this rank computes on: CUDA device `local_rank` under torchrun, else `device`."""
    import torch

    device = torch.device(device)
    if ctx.distributed and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


def rank_slice(n: int, ctx: DistContext) -> slice:
    """This rank's contiguous share of the positions 0..n-1 of one global training batch."""
    bounds = np.linspace(0, n, ctx.world_size + 1).astype(np.int64)
    return slice(int(bounds[ctx.rank]), int(bounds[ctx.rank + 1]))


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Sum a few numbers over ranks (float64); the same list on every rank."""
    if not ctx.distributed:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if ctx.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()
