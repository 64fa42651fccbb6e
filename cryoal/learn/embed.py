"""Embedding a pool with a pretrained trunk: `cryoal embed POOL -m ENCODER`, and the end of `pretrain`.

Every particle is embedded (eval mode, batched, streamed from disk) and the pool's `embedding`
dataset is replaced atomically (`cryoal.io.embedding.write_embeddings`), tagged with the encoder's
digest. Recomputing all rows, not only the appended ones, keeps it simple and always correct.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

Progress = Callable[[dict[str, Any]], None]


def embed_batches(model: nn.Module, pool, device: torch.device, batch_size: int = 64,
                  progress: Progress | None = None) -> Iterator[np.ndarray]:
    """Yield the trunk features (B, F) float32 of the pool's particles, in pool order, in eval mode."""
    from cryoal.io.prefetch import BatchReader
    from cryoal.models.input import as_input

    model.eval()
    n, done = len(pool), 0
    with torch.no_grad():
        for _, vols in BatchReader(pool, batch_size=batch_size):
            yield model.trunk(as_input(vols, device=device)).float().cpu().numpy()
            done += len(vols)
            if progress:
                progress({"event": "embed", "done": done, "total": n})


def write_pool_embedding(pool_path: str | os.PathLike, model: nn.Module, digest: str,
                         device: torch.device, batch_size: int = 64, progress: Progress | None = None) -> int:
    """Embed every particle with `model`'s trunk and store it in the pool; returns N."""
    from cryoal.io.embedding import write_embeddings
    from cryoal.io.pool import open_pool

    model.to(device)
    dim = int(model.head.in_features)  # the trunk's output: forward(x) == head(trunk(x))
    with open_pool(pool_path) as pool:
        return write_embeddings(pool_path, embed_batches(model, pool, device, batch_size, progress), dim,
                                digest)


def embed_pool(pool_path: str | os.PathLike, encoder_path: str | os.PathLike, device: str = "auto",
               batch_size: int = 64, progress: Progress | None = None) -> tuple[int, str]:
    """(Re)compute the embedding of every particle of the pool with the encoder file's trunk;
    returns (N, encoder digest). CryoalError if the encoder does not fit the pool."""
    from cryoal.io.pool import open_pool
    from cryoal.learn.device import resolve_device, use_all_cpu_cores
    from cryoal.learn.encoder import build_from_encoder, check_encoder_fits, encoder_digest, read_encoder

    record = read_encoder(encoder_path)
    with open_pool(pool_path) as pool:
        check_encoder_fits(record, encoder_path, mode=pool.mode, input_shape=pool.shape)
    dev = resolve_device(device)
    if dev.type == "cpu":
        use_all_cpu_cores()
    model = build_from_encoder(record, encoder_path, n_classes=2)
    n = write_pool_embedding(pool_path, model, encoder_digest(encoder_path), dev, batch_size, progress)
    return n, encoder_digest(encoder_path)


__all__ = ["embed_batches", "embed_pool", "write_pool_embedding"]
