"""The HDF5 pool (cryoal.io.pool): layout, append, duplicate ids, atomicity, locking, version refusal."""

from __future__ import annotations

import hashlib
import json
import math

import h5py
import numpy as np
import pytest

from cryoal.errors import CryoalError, PoolError
from cryoal.io.atomic import exclusive_lock
from cryoal.io.pool import FORMAT_VERSION, PoolWriter, edit_pool, open_pool


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _vols(n: int, seed: int = 0, box: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, box, box, box)).astype(np.float32)


def _make(path, n=4, seed=0, ids=None, **kw):
    vols = _vols(n, seed)
    ids = ids or [f"p{i}" for i in range(n)]
    with PoolWriter(path, shape=vols.shape[1:], voxel_size=7.5, class_names=["a", "b"], **kw) as w:
        w.add(vols, ids, [f"/data/{i}.mrc" for i in ids], labels=[0, -1, 1, -1][:n] + [-1] * max(0, n - 4),
              tomos=["T1"] * n, coords=np.arange(3 * n, dtype=np.float32).reshape(n, 3),
              meta={"rlnImageName": [f"{i}.mrc" for i in ids]})
    return vols


def _no_temp_files(directory) -> bool:
    return not [p for p in directory.iterdir() if ".tmp-" in p.name]


def test_layout_and_reading(tmp_path):
    path = tmp_path / "pool.h5"
    vols = _make(path)
    with h5py.File(path) as h5:
        assert h5.attrs["format_version"] == FORMAT_VERSION
        assert h5.attrs["mode"] == "subtomogram" and h5.attrs["box"] == 6
        assert json.loads(h5.attrs["class_names"]) == ["a", "b"]
        assert h5["volumes"].chunks == (1, 6, 6, 6) and h5["volumes"].dtype == np.float32
        assert h5["label"].dtype == np.int32 and h5["coords"].shape == (4, 3)
    with open_pool(path) as p:
        assert len(p) == 4 and p.shape == (6, 6, 6) and p.voxel_size == 7.5
        assert list(p.particle_ids) == ["p0", "p1", "p2", "p3"]
        assert list(p.labels) == [0, -1, 1, -1]
        assert list(p.label_rounds) == [0, -1, 0, -1]
        assert list(p.tomos) == ["T1"] * 4
        np.testing.assert_array_equal(p.coords[1], [3, 4, 5])
        assert p.meta_columns == ["rlnImageName"] and p.meta("rlnImageName")[2] == "p2.mrc"
        np.testing.assert_array_equal(p.read([3, 0, 3]), vols[[3, 0, 3]])  # any order, repeats
        np.testing.assert_array_equal(p.read(slice(1, 3)), vols[1:3])
        got = np.concatenate([v for _, v in p.iter_batches(3, [2, 1, 0, 3])])
        np.testing.assert_array_equal(got, vols[[2, 1, 0, 3]])
        assert list(p.index_of(["p3", "p1"])) == [3, 1]
        with pytest.raises(PoolError, match="unknown particle id 'zz'"):
            p.index_of(["zz"])
        assert p.edge is None


def test_append_keeps_old_rows_and_adds_new(tmp_path):
    path = tmp_path / "pool.h5"
    old = _make(path)
    new = _vols(3, seed=1)
    with PoolWriter(path, append=True) as w:
        assert w.shape == (6, 6, 6) and w.class_names == ["a", "b"]
        w.add(new, ["q0", "q1", "q2"], ["s0", "s1", "s2"], meta={"other": ["x", "y", "z"]})
    with open_pool(path) as p:
        assert len(p) == 7
        np.testing.assert_array_equal(p.read(range(7)), np.concatenate([old, new]))
        assert list(p.particle_ids)[4:] == ["q0", "q1", "q2"]
        assert list(p.labels)[4:] == [-1, -1, -1]
        # meta columns are the union; rows without a value are empty strings
        assert list(p.meta("rlnImageName")) == ["p0.mrc", "p1.mrc", "p2.mrc", "p3.mrc", "", "", ""]
        assert list(p.meta("other")) == ["", "", "", "", "x", "y", "z"]
        assert all(math.isnan(v) for v in p.coords[4:].ravel())


def test_append_refuses_other_shape_or_mode(tmp_path):
    path = tmp_path / "pool.h5"
    _make(path)
    before = _digest(path)
    with pytest.raises(PoolError, match=r"shape \(6, 6, 6\), new data is \(8, 8, 8\)"):
        with PoolWriter(path, append=True, shape=(8, 8, 8)):
            pass
    with pytest.raises(PoolError, match="subtomogram mode, cannot append image"):
        with PoolWriter(path, append=True, mode="image"):
            pass
    assert _digest(path) == before and _no_temp_files(tmp_path)


def test_duplicate_ids_refused_and_pool_unchanged(tmp_path):
    path = tmp_path / "pool.h5"
    _make(path)
    before = _digest(path)
    with pytest.raises(PoolError, match="duplicate particle id 'p2'"):
        with PoolWriter(path, append=True) as w:
            w.add(_vols(2, 5), ["new", "p2"], ["a", "b"])
    assert _digest(path) == before and _no_temp_files(tmp_path)
    with pytest.raises(PoolError, match="duplicate particle id 'x'"):
        _make(tmp_path / "dup.h5", n=2, ids=["x", "x"])
    assert not (tmp_path / "dup.h5").exists()


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_append_leaves_old_pool_byte_for_byte(tmp_path, exc):
    path = tmp_path / "pool.h5"
    _make(path)
    before = _digest(path)
    with pytest.raises(type(exc)):
        with PoolWriter(path, append=True) as w:
            w.add(_vols(2, 3), ["n1", "n2"], ["a", "b"])  # some data already written to the copy
            raise exc
    assert _digest(path) == before
    assert _no_temp_files(tmp_path)
    with open_pool(path) as p:
        assert len(p) == 4


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_new_pool_leaves_nothing(tmp_path, exc):
    path = tmp_path / "pool.h5"
    with pytest.raises(type(exc)):
        with PoolWriter(path, shape=(6, 6, 6)) as w:
            w.add(_vols(2), ["a", "b"], ["a", "b"])
            raise exc
    assert not path.exists() and _no_temp_files(tmp_path)


def test_interrupted_edit_leaves_pool_unchanged(tmp_path):
    path = tmp_path / "pool.h5"
    _make(path)
    before = _digest(path)
    with pytest.raises(KeyboardInterrupt):
        with edit_pool(path) as h5:
            h5["label"][...] = 1
            raise KeyboardInterrupt
    assert _digest(path) == before and _no_temp_files(tmp_path)
    with edit_pool(path) as h5:  # and a completed edit does land
        h5["label"][0] = 1
    with open_pool(path) as p:
        assert p.labels[0] == 1


def test_second_writer_is_refused_by_the_lock(tmp_path):
    path = tmp_path / "pool.h5"
    _make(path)
    before = _digest(path)
    with exclusive_lock(path):
        with pytest.raises(CryoalError, match="being written by another process"):
            with PoolWriter(path, append=True):
                pass
        with pytest.raises(CryoalError, match="being written by another process"):
            with edit_pool(path):
                pass
        with pytest.raises(CryoalError, match="being written by another process"):
            with PoolWriter(path, shape=(6, 6, 6), compression=None):
                pass
        with open_pool(path) as p:  # readers are never blocked
            assert len(p) == 4
    assert _digest(path) == before


def test_other_format_version_is_refused(tmp_path):
    path = tmp_path / "pool.h5"
    _make(path)
    with h5py.File(path, "r+") as h5:
        h5.attrs["format_version"] = 2
    before = _digest(path)
    with pytest.raises(PoolError, match="pool format version 2; this cryoal reads version 1"):
        open_pool(path)
    with pytest.raises(PoolError, match="format version 2"):
        with PoolWriter(path, append=True):
            pass
    with pytest.raises(PoolError, match="format version 2"):
        with edit_pool(path):
            pass
    assert _digest(path) == before and _no_temp_files(tmp_path)


def test_not_a_pool(tmp_path):
    with pytest.raises(PoolError, match="pool file not found"):
        open_pool(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(PoolError, match="not an HDF5 pool file"):
        open_pool(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = 1
    with pytest.raises(PoolError, match="not a cryoal pool"):
        open_pool(other)
    with h5py.File(other, "r+") as h5:
        h5.attrs["format_version"] = 1
    with pytest.raises(PoolError, match="dataset 'volumes' is missing"):
        open_pool(other)


def test_output_in_missing_directory(tmp_path):
    with pytest.raises(CryoalError, match="does not exist"):
        PoolWriter(tmp_path / "nope" / "pool.h5", shape=(4, 4, 4))


def test_empty_writer(tmp_path):
    with pytest.raises(PoolError, match="no particles to write"):
        with PoolWriter(tmp_path / "a.h5"):
            pass
    assert not (tmp_path / "a.h5").exists()
    with PoolWriter(tmp_path / "b.h5", shape=(4, 4, 4)):
        pass
    with open_pool(tmp_path / "b.h5") as p:
        assert len(p) == 0 and p.shape == (4, 4, 4)


def test_edge_column_is_filled_for_earlier_rows(tmp_path):
    path = tmp_path / "pool.h5"
    with PoolWriter(path, shape=(6, 6, 6)) as w:
        w.add(_vols(2), ["a", "b"], ["s", "s"])
        w.add(_vols(2, 1), ["c", "d"], ["s", "s"], edge=[True, False])
    with open_pool(path) as p:
        assert list(p.edge) == [False, False, True, False]


def test_compression_choices_store_the_same_values(tmp_path):
    vols = _vols(3)
    for comp in (None, "lzf", "gzip"):
        path = tmp_path / f"{comp}.h5"
        with PoolWriter(path, shape=vols.shape[1:], compression=comp) as w:
            w.add(vols, ["a", "b", "c"], ["s"] * 3)
        with open_pool(path) as p:
            np.testing.assert_array_equal(p.read([0, 1, 2]), vols)
            assert p.h5["volumes"].compression == comp


def test_read_any_indices_matches_one_at_a_time(tmp_path):
    """Runs of consecutive rows, gaps, repeats and any order: the same as reading row by row."""
    path = tmp_path / "pool.h5"
    vols = _vols(40, seed=3)
    with PoolWriter(path, shape=vols.shape[1:]) as w:
        w.add(vols, [f"p{i}" for i in range(40)], ["s"] * 40)
    rng = np.random.default_rng(4)
    with open_pool(path) as p:
        assert p.h5["volumes"].compression is None and p.h5["volumes"].chunks == (1, 6, 6, 6)
        cases = [[5], [0, 39], [3, 4, 5, 9, 10, 20], [39, 38, 2, 2, 3], list(range(40)),
                 *(rng.choice(40, size=k, replace=k > 30).tolist() for k in (7, 19, 35))]
        for idx in cases:
            want = np.stack([np.asarray(p.h5["volumes"][i]) for i in idx])
            np.testing.assert_array_equal(p.read(idx), want)
            np.testing.assert_array_equal(p.read(np.asarray(idx)), vols[idx])
        with pytest.raises(IndexError):
            p.read([0, 40])


def test_several_particles_per_chunk_read_the_same(tmp_path):
    vols = _vols(10, seed=5)
    path = tmp_path / "c4.h5"
    with PoolWriter(path, shape=vols.shape[1:], chunk_particles=4) as w:
        w.add(vols[:7], [f"p{i}" for i in range(7)], ["s"] * 7)
        w.add(vols[7:], [f"p{i}" for i in range(7, 10)], ["s"] * 3)
    with open_pool(path) as p:
        assert p.h5["volumes"].chunks == (4, 6, 6, 6)
        np.testing.assert_array_equal(p.read([9, 0, 4, 5]), vols[[9, 0, 4, 5]])
        np.testing.assert_array_equal(np.concatenate([v for _, v in p.iter_batches(3)]), vols)


@pytest.mark.parametrize("layout", [{}, {"compression": "lzf"}, {"chunk_particles": 4}])
def test_volumes_written_later_in_any_order_land_in_their_rows(tmp_path, layout):
    """`add(None, ...)` then `write_volumes` in shuffled batches: every layout gives row k volume k,
    after rows that were added with their volumes (an append)."""
    path = tmp_path / "pool.h5"
    vols = _vols(11, seed=6)
    with PoolWriter(path, shape=vols.shape[1:], **layout) as w:
        assert w.add(vols[:2], ["a0", "a1"], ["s"] * 2) == 0
        first = w.add(None, [f"p{i}" for i in range(2, 11)], ["s"] * 9, coords=np.zeros((9, 3), np.float32))
        assert first == 2
        order = np.random.default_rng(7).permutation(np.arange(2, 11))
        for part in np.array_split(order, 3):
            w.write_volumes(part, vols[part])
    with open_pool(path) as p:
        assert list(p.particle_ids) == ["a0", "a1", *(f"p{i}" for i in range(2, 11))]
        np.testing.assert_array_equal(p.read(np.arange(11)), vols)


def test_rows_left_without_volumes_or_written_twice_are_refused(tmp_path):
    path = tmp_path / "pool.h5"
    vols = _vols(3)
    with pytest.raises(PoolError, match="1 particles were added without their volumes"):
        with PoolWriter(path, shape=vols.shape[1:]) as w:
            w.add(None, ["a", "b", "c"], ["s"] * 3)
            w.write_volumes([2, 0], vols[[2, 0]])
    assert not path.exists() and _no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="written once"):
        with PoolWriter(path, shape=vols.shape[1:]) as w:
            w.add(None, ["a", "b", "c"], ["s"] * 3)
            w.write_volumes([1], vols[[1]])
            w.write_volumes([1], vols[[1]])
    assert not path.exists()
