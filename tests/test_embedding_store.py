"""The pool's `embedding` dataset: written atomically, read back checked, stale or partial refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from cryoal.errors import PoolError
from cryoal.io.embedding import embedding_problem, ids_digest, read_embeddings, write_embeddings
from cryoal.io.pool import PoolWriter, open_pool

BOX = 6


def make_pool(path: Path, n: int, first: int = 0, append: bool = False) -> None:
    rng = np.random.default_rng(first)
    with PoolWriter(path, mode="subtomogram", shape=(BOX,) * 3, class_names=["a", "b"], append=append) as w:
        w.add(rng.normal(size=(n, BOX, BOX, BOX)).astype(np.float32),
              [f"p{i:03d}" for i in range(first, first + n)], [f"s{i}.mrc" for i in range(first, first + n)])


def batches(values: np.ndarray, size: int):
    for i in range(0, len(values), size):
        yield values[i:i + size]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_round_trip_in_batches_and_replace(tmp_path):
    pool = tmp_path / "pool.h5"
    make_pool(pool, 11)
    emb = np.random.default_rng(1).normal(size=(11, 4)).astype(np.float32)
    assert write_embeddings(pool, batches(emb, 3), 4, "enc-a") == 11
    got = read_embeddings(pool)
    np.testing.assert_array_equal(got.values, emb)
    assert got.encoder_digest == "enc-a" and got.dim == 4
    assert read_embeddings(pool, encoder_digest="enc-a").encoder_digest == "enc-a"
    # a second write replaces the first, dimension included
    write_embeddings(pool, batches(emb[:, :2] * 2, 5), 2, "enc-b")
    np.testing.assert_array_equal(read_embeddings(pool).values, emb[:, :2] * 2)


def test_missing_stale_and_partial_embeddings_are_refused_with_the_fix(tmp_path):
    pool = tmp_path / "pool.h5"
    make_pool(pool, 5)
    with pytest.raises(PoolError, match="cryoal pretrain"):
        read_embeddings(pool)
    write_embeddings(pool, [np.zeros((5, 3))], 3, "enc-a")
    with pytest.raises(PoolError, match="encoder enc-a, not by enc-b"):
        read_embeddings(pool, encoder_digest="enc-b")
    make_pool(pool, 2, first=5, append=True)  # ingest --append: the new particles have no embedding
    with open_pool(pool) as p:
        assert "2 particle(s) were added" in embedding_problem(p)
    with pytest.raises(PoolError, match="cryoal embed"):
        read_embeddings(pool)


def test_a_failed_write_leaves_the_pool_byte_identical(tmp_path):
    pool = tmp_path / "pool.h5"
    make_pool(pool, 6)
    write_embeddings(pool, [np.ones((6, 2))], 2, "enc-a")
    before = sha(pool)
    with pytest.raises(PoolError, match="4 embedding rows written for 6"):
        write_embeddings(pool, [np.zeros((4, 2))], 2, "enc-b")
    with pytest.raises(PoolError, match="does not fit"):
        write_embeddings(pool, [np.zeros((6, 3))], 2, "enc-b")

    def interrupted():
        yield np.zeros((3, 2))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_embeddings(pool, interrupted(), 2, "enc-b")
    assert sha(pool) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.h5"]  # no temporary copy, no lock


def test_ids_digest_depends_on_order_and_content():
    a = ids_digest(np.array(["x", "y"], dtype=object))
    assert a == ids_digest(np.array(["x", "y"], dtype=object))
    assert a != ids_digest(np.array(["y", "x"], dtype=object))
    assert a != ids_digest(np.array(["xy"], dtype=object))  # the separator keeps ids apart
