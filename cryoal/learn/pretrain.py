"""Self-supervised pretraining of a classifier's trunk on every particle of a pool (`cryoal pretrain`).

Two random, wedge-respecting views of each particle (`cryoal.modes.views`) go through the trunk
and a small projection head (discarded afterwards), and a contrastive loss pulls the two views of
a particle together and pushes other particles away:

- `simclr`: NT-Xent (normalised-temperature cross-entropy over the 2B - 1 other views);
- `vicreg`: variance-invariance-covariance regularisation (no negatives).

The loss and head are written here (a few lines each): the field's library, lightly, pulls in a
training framework and other packages beside the pinned torch for what amounts to these two losses.

The pool is streamed: each epoch reads shuffled batches of particles from disk (read ahead on a
thread), so memory does not grow with the pool. After the last epoch, BatchNorm statistics are
re-estimated on clean (not augmented) particles, since the embedding is computed on clean ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cryoal.errors import CryoalError
from cryoal.learn.device import resolve_device, seed_everything, use_all_cpu_cores
from cryoal.modes.views import ViewSettings, random_view

Progress = Callable[[dict[str, Any]], None]
METHODS = ("simclr", "vicreg")
BN_SAMPLES = 256  # clean particles for the final BatchNorm statistics (bounded: flat memory)


@dataclass(frozen=True)
class PretrainSettings:
    """What `pretrain_pool` trains with; the defaults are `cryoal pretrain`'s (see the README for
    the measurements behind them)."""

    arch: str = "rb3d"
    width: int = 16
    method: str = "simclr"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.2  # NT-Xent
    proj_dim: int = 128
    seed: int = 0
    device: str = "auto"


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two (B, P) projections: view i of z1 is the positive of view i of z2."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    b = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own positive nor a negative
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


def vicreg(z1: torch.Tensor, z2: torch.Tensor, sim_w: float = 25.0, var_w: float = 25.0,
           cov_w: float = 1.0) -> torch.Tensor:
    """VICReg loss of two (B, P) projections (invariance, variance hinge at std 1, decorrelation)."""
    z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)
    var = cov = z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(0)
        std = torch.sqrt(z.var(0) + 1e-4)
        var = var + F.relu(1 - std).mean()
        c = (z.T @ z) / (len(z) - 1)
        off = c - torch.diag(torch.diag(c))
        cov = cov + off.pow(2).sum() / z.shape[1]
    return sim_w * inv + var_w * var + cov_w * cov


def projection_head(in_dim: int, out_dim: int) -> nn.Module:
    """The MLP between the trunk and the loss (trained, then discarded)."""
    hidden = max(2 * in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


def ssl_loss(method: str, z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The loss `method` names."""
    return nt_xent(z1, z2, temperature) if method == "simclr" else vicreg(z1, z2)


def check_settings(s: PretrainSettings, n_particles: int, mode: str, where: str) -> None:
    """CryoalError for settings or a pool that cannot pretrain."""
    if mode != "subtomogram":
        raise CryoalError(f"{where}: pretraining is not supported yet for {mode} pools (subtomogram only)")
    if s.method not in METHODS:
        raise CryoalError(f"--method {s.method}: choose one of {', '.join(METHODS)}")
    if s.epochs < 1:
        raise CryoalError(f"--epochs {s.epochs}: must be at least 1")
    if s.batch_size < 2:
        raise CryoalError(f"--batch-size {s.batch_size}: must be at least 2 (contrast needs 2 particles)")
    if n_particles < 2:
        raise CryoalError(f"{where}: needs at least 2 particles to pretrain, has {n_particles}")


def epoch_batches(n: int, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """A shuffled epoch as batches of sorted indices (sorted: one read per run of the pool); a
    last batch of one is dropped (contrast and BatchNorm need two)."""
    perm = torch.randperm(n, generator=gen).numpy()
    batches = [np.sort(perm[s : s + batch_size]) for s in range(0, n, batch_size)]
    return [b for b in batches if len(b) >= 2]


def pretrain_pool(pool_path: str | os.PathLike, settings: PretrainSettings = PretrainSettings(),
                  progress: Progress | None = None,
                  views: ViewSettings = ViewSettings()) -> tuple[nn.Module, dict[str, Any]]:
    """Pretrain a trunk on every particle of the pool; returns (classifier whose trunk is trained,
    in eval mode, and the record for the encoder file's `pretrain` key). Writes nothing."""
    from cryoal.io.pool import open_pool
    from cryoal.io.prefetch import BatchReader
    from cryoal.learn.train import _amp_settings
    from cryoal.models import build_model
    from cryoal.models.input import as_input

    s = settings
    dev = resolve_device(s.device)
    if dev.type == "cpu":
        use_all_cpu_cores()
    amp_dtype, use_scaler = _amp_settings(dev)
    seed_everything(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    t0 = time.perf_counter()
    with open_pool(pool_path) as pool:
        check_settings(s, len(pool), pool.mode, str(pool_path))
        n = len(pool)
        model = build_model(s.arch, pool.shape, 2, width=s.width, dropout=0.0, spatial_dropout=0.0)
        feat_dim = int(model.head.in_features)  # the trunk's output size
        head = projection_head(feat_dim, s.proj_dim)
        model.to(dev)
        head.to(dev)
        params = [*model.trunk.parameters(), *head.parameters()]
        opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        steps = s.epochs * steps_per_epoch(n, s.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=steps, pct_start=0.1)
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        losses: list[float] = []
        for epoch in range(1, s.epochs + 1):
            t_epoch = time.perf_counter()
            batches = epoch_batches(n, s.batch_size, gen)
            model.train()
            head.train()
            total = 0.0
            for k, (_, vols) in enumerate(BatchReader(pool, batches=batches)):
                x = as_input(vols)
                v = torch.cat([random_view(x, gen, views), random_view(x, gen, views)]).to(dev)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    z = head(model.trunk(v))
                loss = ssl_loss(s.method, *z.float().chunk(2), s.temperature)
                if not torch.isfinite(loss):
                    raise CryoalError(f"pretraining diverged at epoch {epoch} (loss {loss.item()}); "
                                      "lower --lr or change --batch-size")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                total += float(loss.detach())
                if progress:
                    progress({"event": "batch", "epoch": epoch, "batch": k + 1, "n_batches": len(batches),
                              "loss": float(loss.detach())})
            losses.append(total / len(batches))
            if progress:
                progress({"event": "epoch", "epoch": epoch, "epochs": s.epochs, "loss": losses[-1],
                          "seconds": time.perf_counter() - t_epoch})
        _clean_batchnorm(model, pool, dev, s.batch_size, amp_dtype, gen)
    model.eval()
    record = {**asdict(s), "losses": losses, "wall_s": time.perf_counter() - t0, "device": str(dev),
              "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "none",
              "views": asdict(views), "n_particles": n, "embedding_dim": feat_dim}
    return model, record


def _clean_batchnorm(model: nn.Module, pool, dev: torch.device, batch_size: int,
                     amp_dtype: torch.dtype | None, gen: torch.Generator) -> None:
    """Re-estimate the trunk's BatchNorm statistics on up to BN_SAMPLES clean random particles."""
    from cryoal.learn.train import recalibrate_batchnorm
    from cryoal.modes import get_mode

    pick = np.sort(torch.randperm(len(pool), generator=gen)[:BN_SAMPLES].numpy())
    recalibrate_batchnorm(model.trunk, pool.read(pick), get_mode(pool.mode), dev, max(batch_size, 2),
                          amp_dtype)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of `n` particles."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 else 0) if n else 0


def pretrain_to_file(pool_path: str | os.PathLike, output: str | os.PathLike,
                     settings: PretrainSettings = PretrainSettings(), progress: Progress | None = None,
                     views: ViewSettings = ViewSettings()) -> dict[str, Any]:
    """`cryoal pretrain`: pretrain, write the encoder file (atomic), then the pool's embedding (atomic,
    with the encoder's digest). Returns the pretrain record with `encoder_digest` and `output`.

    An interrupt before the encoder is written leaves no encoder; one during the embedding write
    leaves the encoder and the previous pool."""
    from cryoal.io.embedding import ids_digest
    from cryoal.io.pool import open_pool
    from cryoal.learn.embed import write_pool_embedding
    from cryoal.learn.encoder import save_encoder

    model, record = pretrain_pool(pool_path, settings, progress, views)
    with open_pool(pool_path) as pool:
        mode, pool_digest = pool.mode, ids_digest(pool.particle_ids)
    digest = save_encoder(output, model, mode=mode, pool_digest=pool_digest,
                          embedding_dim=record["embedding_dim"], pretrain=record)
    write_pool_embedding(pool_path, model, digest, next(model.parameters()).device, settings.batch_size,
                         progress)
    return {**record, "encoder_digest": digest, "output": str(output)}


__all__ = ["METHODS", "PretrainSettings", "nt_xent", "pretrain_pool", "pretrain_to_file", "projection_head",
           "ssl_loss", "vicreg"]
