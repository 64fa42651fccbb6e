"""Per-particle embeddings stored in the pool (DESIGN.md section 3, after `cryoal pretrain`).

The pool's `embedding` dataset is (N, E) float32, one row per particle in pool order. Its
attributes say where it came from, so that a stale or partial embedding is detected and never
silently used:

- `encoder_digest`: the digest of the encoder that computed it (`cryoal pretrain -o ENCODER`);
- `ids_digest`: a digest of the particle ids it covers, in order.

Particles appended later (`ingest --append`, `extract --append`) are not embedded: the dataset
then has fewer rows than the pool, and `read_embeddings` refuses it with the command that fills it
in (`cryoal embed POOL -m ENCODER`). Writing goes through `edit_pool`: a temporary copy renamed into
place, so an interrupted write leaves the previous pool readable.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cryoal.errors import PoolError
from cryoal.io.pool import Pool, edit_pool, open_pool

EMBEDDING = "embedding"
ATTR_ENCODER = "encoder_digest"
ATTR_IDS = "ids_digest"


def ids_digest(particle_ids: np.ndarray) -> str:
    """A short digest of the particle ids, in order (which particles, in which rows)."""
    h = hashlib.sha256()
    for pid in particle_ids:
        h.update(str(pid).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Embeddings:
    """The embedding rows of a pool (N, E) and the digest of the encoder that made them."""

    values: np.ndarray
    encoder_digest: str

    @property
    def dim(self) -> int:
        """The embedding dimension E."""
        return int(self.values.shape[1])


def embedding_problem(pool: Pool, encoder_digest: str | None = None) -> str | None:
    """Why the pool's embedding cannot be used as it is (one sentence), or None when it can.

    `encoder_digest`, when given, must be the digest the embedding was made with (e.g. the encoder a
    model was fine-tuned from: `train --init`).
    """
    where = str(pool.path)
    h5 = pool.h5
    if EMBEDDING not in h5:
        return f"{where}: the pool has no embeddings; run `cryoal pretrain {where} -o encoder.pt` first"
    ds = h5[EMBEDDING]
    n = len(pool)
    if ds.ndim != 2 or ds.shape[0] > n:
        return f"{where}: the embedding dataset has shape {ds.shape}, not (N, E) for {n} particles"
    if ds.shape[0] < n:
        return (f"{where}: {n - ds.shape[0]} particle(s) were added after the embedding was made; run "
                f"`cryoal embed {where} -m ENCODER` to embed them")
    if str(ds.attrs.get(ATTR_IDS, "")) != ids_digest(pool.particle_ids):
        return (f"{where}: the embedding does not match the pool's particles; run "
                f"`cryoal embed {where} -m ENCODER` again")
    made_with = str(ds.attrs.get(ATTR_ENCODER, ""))
    if encoder_digest is not None and made_with != encoder_digest:
        return (f"{where}: the embedding was made by encoder {made_with or '?'}, not by {encoder_digest}; "
                f"run `cryoal embed {where} -m ENCODER` with the encoder the model was trained from")
    return None


def read_embeddings(pool_path: str | os.PathLike | Pool, encoder_digest: str | None = None) -> Embeddings:
    """The pool's embeddings, checked (see `embedding_problem`); PoolError with the fix otherwise."""
    if isinstance(pool_path, Pool):
        return _read(pool_path, encoder_digest)
    with open_pool(pool_path) as pool:
        return _read(pool, encoder_digest)


def _read(pool: Pool, encoder_digest: str | None) -> Embeddings:
    problem = embedding_problem(pool, encoder_digest)
    if problem:
        raise PoolError(problem)
    ds = pool.h5[EMBEDDING]
    values = np.asarray(ds[...], dtype=np.float32)
    if not np.isfinite(values).all():
        raise PoolError(f"{pool.path}: the embedding holds non-finite values; run `cryoal embed` again")
    return Embeddings(values, str(ds.attrs[ATTR_ENCODER]))


def write_embeddings(
    pool_path: str | os.PathLike, batches: Iterable[np.ndarray], dim: int, encoder_digest: str
) -> int:
    """Write the pool's embedding from `batches` of rows (B, dim), in pool order; returns N.

    The batches must cover every particle exactly once. The previous embedding, if any, is
    replaced; the write is atomic (a temporary copy of the pool renamed into place), so a failure
    or an interrupt leaves the pool as it was.
    """
    with edit_pool(pool_path) as h5:
        n = int(h5["particle_id"].shape[0])
        if EMBEDDING in h5:
            del h5[EMBEDDING]
        ds = h5.create_dataset(EMBEDDING, shape=(n, dim), dtype=np.float32,
                               chunks=(min(max(n, 1), 4096), dim))
        row = 0
        for batch in batches:
            batch = np.asarray(batch, dtype=np.float32)
            if batch.ndim != 2 or batch.shape[1] != dim or row + len(batch) > n:
                raise PoolError(f"{pool_path}: embedding batch of shape {batch.shape} does not fit "
                                f"rows {row}.. of ({n}, {dim})")
            ds[row:row + len(batch)] = batch
            row += len(batch)
        if row != n:
            raise PoolError(f"{pool_path}: {row} embedding rows written for {n} particles")
        ids = h5["particle_id"].asstr()[...]
        ds.attrs[ATTR_ENCODER] = encoder_digest
        ds.attrs[ATTR_IDS] = ids_digest(ids)
    return n


__all__ = ["ATTR_ENCODER", "ATTR_IDS", "EMBEDDING", "Embeddings", "embedding_problem", "ids_digest",
           "read_embeddings", "write_embeddings"]
