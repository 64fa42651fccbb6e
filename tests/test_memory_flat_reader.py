"""The prefetching batch reader (cryoal.io.prefetch): same data as `Pool.read`, errors that name
the particle, and a background thread that never outlives the loop."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from cryoal.errors import PoolError
from cryoal.io.pool import PoolWriter, open_pool
from cryoal.io.prefetch import BatchReader, batch_plan, prefetch, read_rows


def _pool(path, n=23, compression=None, smooth=False):
    rng = np.random.default_rng(1)
    vols = rng.standard_normal((n, 8, 8, 8)).astype(np.float32)
    if smooth:  # compressible, so a damaged chunk fails the decompressor
        vols = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], vols.shape).copy()
    with PoolWriter(path, shape=(8, 8, 8), compression=compression) as w:
        w.add(vols, [f"p{i}" for i in range(n)], ["s"] * n)
    return vols


def test_batch_plan_fixes_boundaries_to_global_positions():
    idx = np.arange(100, 110)
    plan = batch_plan(idx, 4)
    assert [b.tolist() for b in plan] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]
    assert batch_plan([], 4) == []
    with pytest.raises(ValueError):
        batch_plan(idx, 0)


@pytest.mark.parametrize("compression", [None, "lzf", "gzip"])
def test_reader_returns_what_a_plain_read_returns(tmp_path, compression):
    path = tmp_path / "pool.h5"
    vols = _pool(path, compression=compression)
    rng = np.random.default_rng(2)
    orders = [
        np.arange(23),                               # everything, in order
        np.sort(rng.choice(23, 11, replace=False)),  # a sorted subset with gaps
        rng.permutation(23)[:9],                     # any order
        np.array([5, 5, 2, 22, 0, 2]),               # repeats
    ]
    with open_pool(path) as pool:
        for order in orders:
            got = list(BatchReader(pool, order, 4))
            assert [b.tolist() for b, _ in got] == [b.tolist() for b in batch_plan(order, 4)]
            for b, v in got:
                assert v.dtype == np.float32
                np.testing.assert_array_equal(v, vols[b])  # the slow obvious reference
                np.testing.assert_array_equal(v, pool.read(b))
        assert len(BatchReader(pool, None, 5)) == 5


def test_read_rows_rejects_out_of_range(tmp_path):
    path = tmp_path / "pool.h5"
    _pool(path, n=4)
    with h5py.File(path, "r") as h5, pytest.raises(IndexError):
        read_rows(h5["volumes"], np.array([1, 4]))


def test_corrupt_chunk_names_the_particle(tmp_path):
    path = tmp_path / "pool.h5"
    _pool(path, n=12, compression="gzip", smooth=True)
    with h5py.File(path, "r") as h5:
        info = h5["volumes"].id.get_chunk_info_by_coord((9, 0, 0, 0))
    assert info.filter_mask == 0  # the chunk really is compressed
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    with open_pool(path) as pool:
        seen = []
        with pytest.raises(PoolError, match=r"particle 'p9' \(row 9\)") as err:
            for b, _ in BatchReader(pool, None, 4):
                seen.append(b.tolist())
        assert seen == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the batches before it arrived, in order
        assert str(path) in str(err.value)


def test_non_finite_voxel_names_the_particle(tmp_path):
    path = tmp_path / "pool.h5"
    _pool(path, n=6)
    with h5py.File(path, "r+") as h5:
        h5["volumes"][4, 1, 2, 3] = np.nan
    with open_pool(path) as pool, pytest.raises(PoolError, match=r"particle 'p4' \(row 4\) holds NaN"):
        list(BatchReader(pool, None, 3))


def test_prefetch_reads_ahead_and_stops_with_the_consumer():
    produced = []

    def items():
        for i in range(100):
            produced.append(i)
            yield i

    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    for _ in range(200):  # let the producer run ahead until the queue is full
        if len(produced) >= 3:
            break
        threading.Event().wait(0.01)
    assert 3 <= len(produced) <= 4  # one handed out, `depth` queued, at most one being put
    gen.close()  # leaving the loop early stops the thread
    assert not any(t.name == "cryoal-prefetch" for t in threading.enumerate())
    assert len(produced) < 100


def test_prefetch_reraises_the_producers_error_in_order():
    def items():
        yield 1
        yield 2
        raise RuntimeError("disk gone")

    got = []
    with pytest.raises(RuntimeError, match="disk gone"):
        for x in prefetch(items(), depth=3):
            got.append(x)
    assert got == [1, 2]
    assert list(prefetch(iter([1, 2, 3]), depth=0)) == [1, 2, 3]
