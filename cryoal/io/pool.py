"""The HDF5 particle pool (DESIGN.md section 3): one file holding every particle, its id and its label.

Readers use `open_pool`. Every change goes through `PoolWriter` (new pool or append) or
`edit_pool` (labels, classes): both work on a temporary copy and rename it into place, so an
interrupted run leaves the previous pool readable and byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from cryoal.errors import PoolError
from cryoal.io.atomic import (
    check_output_dir,
    copy_for_update,
    discard,
    exclusive_lock,
    remove_stale_temps,
    replace_into_place,
    temp_beside,
    temp_path_for,
)

FORMAT_VERSION = 1
MODES = ("subtomogram", "image", "segmentation")
STR_DTYPE = h5py.string_dtype("utf-8")
UNLABELLED = -1
# Scalar string dataset: the non-particle blocks (optics, general) of each STAR manifest read, as
# JSON {manifest: {block: {column: [values]}}}, so that STAR export can write them back.
STAR_BLOCKS = "star_blocks"
# A 64 MB chunk cache holds a few hundred 32^3 particles; reads are one particle a chunk.
CHUNK_CACHE_BYTES = 64 * 1024 * 1024


def _open_h5(path: Path, mode: str) -> h5py.File:
    # Writers put whole one-particle chunks: a chunk cache only adds a copy and made writing 64^3
    # particles 2-3x slower (benchmarks/ingest_speed.py). Readers keep the 64 MB cache.
    cache = CHUNK_CACHE_BYTES if mode == "r" else 0
    return h5py.File(path, mode, rdcc_nbytes=cache, rdcc_nslots=100_003)


def _check_pool_file(path: Path) -> None:
    if not path.exists():
        raise PoolError(f"{path}: pool file not found")
    if path.is_dir():
        raise PoolError(f"{path}: is a directory, not a pool file")
    if not h5py.is_hdf5(path):
        raise PoolError(f"{path}: not an HDF5 pool file")


def _validate_layout(h5: h5py.File, path: Path) -> None:
    version = h5.attrs.get("format_version")
    if version is None:
        raise PoolError(f"{path}: not a cryoal pool (no format_version attribute)")
    if int(version) != FORMAT_VERSION:
        raise PoolError(
            f"{path}: pool format version {int(version)}; this cryoal reads version {FORMAT_VERSION}"
        )
    for name in ("volumes", "particle_id", "label", "label_round", "source"):
        if name not in h5:
            raise PoolError(f"{path}: corrupt pool, dataset '{name}' is missing")
    mode = h5.attrs.get("mode")
    if mode not in MODES:
        raise PoolError(f"{path}: unknown pool mode {mode!r}")


class Pool:
    """Read-only view of a pool file. Small per-particle arrays are loaded lazily and cached.

    Volumes are never loaded whole: use `read` or `iter_batches`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        _check_pool_file(self.path)
        try:
            self._h5 = _open_h5(self.path, "r")
        except OSError as exc:
            raise PoolError(f"{self.path}: cannot open pool ({exc})") from None
        try:
            _validate_layout(self._h5, self.path)
        except BaseException:
            self._h5.close()
            raise
        self._cache: dict[str, np.ndarray] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._h5.close()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- attributes ------------------------------------------------------------------------
    @property
    def h5(self) -> h5py.File:
        """The open HDF5 file, for readers that need a dataset this class does not wrap."""
        return self._h5

    @property
    def mode(self) -> str:
        return str(self._h5.attrs["mode"])

    @property
    def class_names(self) -> list[str]:
        return list(json.loads(self._h5.attrs.get("class_names", "[]")))

    @property
    def voxel_size(self) -> float:
        return float(self._h5.attrs.get("voxel_size", math.nan))

    @property
    def box(self) -> int:
        return int(self._h5.attrs["box"])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one particle: (D, H, W) for subtomograms, (H, W) for images."""
        return tuple(self._h5["volumes"].shape[1:])

    def __len__(self) -> int:
        return int(self._h5["volumes"].shape[0])

    # -- per-particle arrays ---------------------------------------------------------------
    def _strings(self, name: str) -> np.ndarray:
        if name not in self._cache:
            if name in self._h5:
                self._cache[name] = np.asarray(self._h5[name].asstr()[...], dtype=object)
            else:
                self._cache[name] = np.full(len(self), "", dtype=object)
        return self._cache[name]

    @property
    def particle_ids(self) -> np.ndarray:
        return self._strings("particle_id")

    @property
    def sources(self) -> np.ndarray:
        return self._strings("source")

    @property
    def tomos(self) -> np.ndarray:
        return self._strings("tomo")

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._h5["label"][...], dtype=np.int32)

    @property
    def label_rounds(self) -> np.ndarray:
        return np.asarray(self._h5["label_round"][...], dtype=np.int32)

    @property
    def coords(self) -> np.ndarray:
        if "coords" in self._h5:
            return np.asarray(self._h5["coords"][...], dtype=np.float32)
        return np.full((len(self), 3), np.nan, dtype=np.float32)

    @property
    def edge(self) -> np.ndarray | None:
        return np.asarray(self._h5["edge"][...], dtype=bool) if "edge" in self._h5 else None

    @property
    def meta_columns(self) -> list[str]:
        """Manifest column names, in the order they were first stored."""
        if "meta" not in self._h5:
            return []
        return [_meta_name(key) for key in self._h5["meta"].keys()]

    @property
    def star_blocks(self) -> dict[str, dict[str, dict[str, list[str]]]]:
        """Non-particle STAR blocks (optics, general) of the manifests ingested, by manifest path."""
        if STAR_BLOCKS not in self._h5:
            return {}
        return dict(json.loads(self._h5[STAR_BLOCKS].asstr()[()]))

    def meta(self, column: str) -> np.ndarray:
        """The manifest column `column`, verbatim, one string per particle."""
        return self._strings(f"meta/{_meta_key(column)}")

    def index_of(self, particle_ids: Sequence[str]) -> np.ndarray:
        """Row indices of the given ids; raises PoolError naming the first unknown id."""
        lookup = {pid: i for i, pid in enumerate(self.particle_ids)}
        out = np.empty(len(particle_ids), dtype=np.int64)
        for k, pid in enumerate(particle_ids):
            i = lookup.get(pid)
            if i is None:
                raise PoolError(f"{self.path}: unknown particle id '{pid}'")
            out[k] = i
        return out

    # -- volumes ---------------------------------------------------------------------------
    def read(self, indices: Sequence[int] | np.ndarray | slice, dataset: str = "volumes") -> np.ndarray:
        """Read the particles at `indices` (any order, repeats allowed) as float32."""
        ds = self._h5[dataset]
        if isinstance(indices, slice):
            return np.asarray(ds[indices])
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
        # h5py wants increasing, unique indices: read sorted, then put back in the asked order.
        uniq, inverse = np.unique(idx, return_inverse=True)
        if uniq[0] < 0 or uniq[-1] >= ds.shape[0]:
            raise IndexError(f"particle index out of range 0..{ds.shape[0] - 1}")
        if uniq.size == uniq[-1] - uniq[0] + 1:  # contiguous run: one slice read
            data = np.asarray(ds[int(uniq[0]) : int(uniq[-1]) + 1])
        else:
            data = _read_runs(ds, uniq)
        # already in increasing order (iter_batches, most callers): no reordering copy
        return data if uniq.size == idx.size and np.array_equal(uniq, idx) else data[inverse]

    def iter_batches(
        self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None, dataset: str = "volumes"
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield `(indices, volumes)` batches in the given order; memory is one batch at a time."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, idx.size, batch_size):
            chunk = idx[start : start + batch_size]
            yield chunk, self.read(chunk, dataset=dataset)


def _read_runs(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows `rows` (sorted, unique) of `ds`, one slice read per run of consecutive rows.

    h5py's fancy indexing (`ds[rows]`) was ~25x slower: about 170 vs 4000 particles/s for 200
    random 32^3 particles of a 2000-particle pool (benchmarks/ingest_speed.py --read-only).
    """
    out = np.empty((rows.size, *ds.shape[1:]), dtype=ds.dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for start, end in zip(np.r_[0, breaks], np.r_[breaks, rows.size], strict=True):
        first = int(rows[start])
        out[start:end] = ds[first : first + int(end - start)]
    return out


def _meta_key(column: str) -> str:
    # HDF5 reads '/' as a group separator: keep such column names flat by escaping it
    return column.replace("%", "%25").replace("/", "%2F")


def _meta_name(key: str) -> str:
    return key.replace("%2F", "/").replace("%25", "%")


def open_pool(path: str | os.PathLike) -> Pool:
    """Open a pool for reading. Raises PoolError if it is missing, corrupt or of another version."""
    return Pool(path)


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def edit_pool(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Yield a writable copy of an existing pool; it replaces the pool only if the block succeeds.

    The copy is a copy-on-write clone where the filesystem supports it, else a full copy.
    Holds the pool's lock file for the duration, so a second writer is refused.
    """
    path = Path(path)
    _check_pool_file(path)
    with exclusive_lock(path):
        remove_stale_temps(path, locked=True)  # the lock says no other writer is alive
        # the pool file itself is not fsynced before its rename (a pool can be many GB)
        with temp_beside(path, sync_file=False) as tmp:
            copy_for_update(path, tmp)
            with _open_h5(tmp, "r+") as h5:
                _validate_layout(h5, path)
                yield h5
                h5.flush()


class PoolWriter:
    """Create a pool, or append to one, streaming batches of particles.

    Use as a context manager: all batches go to a temporary file, which is renamed over the
    target only when the block ends without an exception. With `append=True` the existing
    pool is copied first and must match `mode` and particle shape.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        mode: str = "subtomogram",
        shape: tuple[int, ...] | None = None,
        voxel_size: float = math.nan,
        class_names: Sequence[str] = (),
        append: bool = False,
        compression: str | None = None,
        chunk_particles: int = 1,
    ):
        if mode not in MODES:
            raise PoolError(f"unknown pool mode {mode!r}; choose one of {', '.join(MODES)}")
        self.path = check_output_dir(path)
        self.mode = mode
        self.shape = tuple(shape) if shape is not None else None
        self.voxel_size = float(voxel_size)
        self.class_names = list(class_names)
        self.append = append
        # Uncompressed by default: z-scored noisy volumes do not shrink (size ratio lzf 1.00, gzip
        # 0.92) and compression made ingest 3-10x (lzf) and 12-38x (gzip) slower at 32^3 and 64^3
        # (benchmarks/ingest_speed.py).
        self.compression = compression
        self.chunk_particles = max(1, int(chunk_particles))  # particles per HDF5 chunk (benchmarks only)
        self._h5: h5py.File | None = None
        self._ids: set[str] = set()
        self.n_added = 0
        # Rows added without their volumes (`add(None, ...)`): _pending[r - _pending_from] is True
        # until `write_volumes` fills row r.
        self._pending_from = 0
        self._pending = np.zeros(0, dtype=bool)

    # -- context ---------------------------------------------------------------------------
    def __enter__(self) -> PoolWriter:
        if self.append:
            self._edit = edit_pool(self.path)
            self._h5 = self._edit.__enter__()
            try:
                self._adopt_existing()
            except BaseException as exc:
                self._edit.__exit__(type(exc), exc, exc.__traceback__)
                raise
        else:
            self._lock = exclusive_lock(self.path)
            self._lock.__enter__()
            try:
                remove_stale_temps(self.path, locked=True)
                self._tmp = temp_path_for(self.path)
                self._h5 = _open_h5(self._tmp, "w")
            except BaseException:  # no __exit__ follows a failed __enter__: release (and remove) the lock
                self._lock.__exit__(None, None, None)
                raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        empty_error = None
        if exc_type is None and "volumes" not in self._h5:  # type: ignore[operator]
            if self.shape is None:
                empty_error = PoolError(f"{self.path}: no particles to write")
                exc_type, exc = PoolError, empty_error
            else:
                self._create_datasets()  # a valid, empty pool
        if exc_type is None and self._pending.any():  # a caller's bug: never rename such a pool in
            empty_error = PoolError(
                f"{self.path}: {int(self._pending.sum())} particles were added without their volumes"
            )
            exc_type, exc = PoolError, empty_error
        if self.append:
            self._edit.__exit__(exc_type, exc, tb)
        else:
            renamed = False
            try:
                self._h5.close()  # type: ignore[union-attr]
                if exc_type is None:
                    replace_into_place(self._tmp, self.path, sync_file=False)
                    renamed = True
            finally:
                if not renamed:  # an error, or Ctrl-C/SIGTERM during close or rename
                    discard(self._tmp)
                self._lock.__exit__(None, None, None)
        if empty_error is not None:
            raise empty_error

    def _adopt_existing(self) -> None:
        h5 = self._h5
        assert h5 is not None
        existing_mode = str(h5.attrs["mode"])
        if existing_mode != self.mode:
            raise PoolError(f"{self.path}: pool is in {existing_mode} mode, cannot append {self.mode} data")
        existing_shape = tuple(h5["volumes"].shape[1:])
        if self.shape is not None and self.shape != existing_shape:
            raise PoolError(
                f"{self.path}: pool holds particles of shape {existing_shape}, new data is {self.shape}"
            )
        self.shape = existing_shape
        self.class_names = list(json.loads(h5.attrs.get("class_names", "[]")))
        self._ids = set(h5["particle_id"].asstr()[...])

    # -- datasets --------------------------------------------------------------------------
    def _create_datasets(self) -> None:
        h5 = self._h5
        assert h5 is not None and self.shape is not None
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["mode"] = self.mode
        h5.attrs["class_names"] = json.dumps(self.class_names)
        h5.attrs["voxel_size"] = self.voxel_size
        h5.attrs["box"] = int(self.shape[-1])
        kw = {"compression": self.compression} if self.compression else {}
        h5.create_dataset(
            "volumes", shape=(0, *self.shape), maxshape=(None, *self.shape), dtype=np.float32,
            chunks=(self.chunk_particles, *self.shape), **kw,
        )
        if self.mode == "segmentation":
            h5.create_dataset(
                "masks", shape=(0, *self.shape), maxshape=(None, *self.shape), dtype=np.int16,
                chunks=(self.chunk_particles, *self.shape), **kw,
            )
        for name, dtype in (("particle_id", STR_DTYPE), ("source", STR_DTYPE), ("tomo", STR_DTYPE)):
            h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))
        for name in ("label", "label_round"):
            h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(4096,))
        h5.create_dataset("coords", shape=(0, 3), maxshape=(None, 3), dtype=np.float32, chunks=(4096, 3))
        h5.create_group("meta", track_order=True)  # keys() in manifest column order

    def _extend(self, name: str, values: np.ndarray) -> None:
        ds = self._h5[name]  # type: ignore[index]
        n0 = ds.shape[0]
        ds.resize(n0 + len(values), axis=0)
        ds[n0:] = values

    def add(
        self,
        volumes: np.ndarray | None,
        particle_ids: Sequence[str],
        sources: Sequence[str],
        *,
        labels: Sequence[int] | np.ndarray | None = None,
        tomos: Sequence[str] | None = None,
        coords: np.ndarray | None = None,
        meta: dict[str, Sequence[str]] | None = None,
        edge: Sequence[bool] | np.ndarray | None = None,
        masks: np.ndarray | None = None,
    ) -> int:
        """Append a batch of particles and return the pool row of the first one.

        `volumes` is (n, *shape) and already normalised. `volumes=None` appends the particles
        without their volumes, for a writer that computes them in another order: it must then
        fill every such row with `write_volumes` before the writer closes.
        """
        if volumes is None:
            if self.shape is None:
                raise PoolError(f"{self.path}: adding particles without volumes needs the particle shape")
            n = len(particle_ids)
        else:
            volumes = np.asarray(volumes, dtype=np.float32)
            n = volumes.shape[0]
            if self.shape is None:
                self.shape = tuple(volumes.shape[1:])
            if tuple(volumes.shape[1:]) != self.shape:
                raise PoolError(f"particle shape {volumes.shape[1:]} does not match the pool's {self.shape}")
        if len(particle_ids) != n or len(sources) != n:
            raise ValueError("particle_ids and sources must have one entry per volume")
        for pid in particle_ids:
            if pid in self._ids:
                raise PoolError(f"duplicate particle id '{pid}'")
            self._ids.add(pid)
        if self._h5 is not None and "volumes" not in self._h5:
            self._create_datasets()
        h5 = self._h5
        assert h5 is not None
        n_before = h5["volumes"].shape[0]

        if volumes is None:
            h5["volumes"].resize(n_before + n, axis=0)  # chunks are allocated when written
            self._mark_pending(n_before, n)
        else:
            self._extend("volumes", volumes)
        self._extend("particle_id", np.asarray(list(particle_ids), dtype=object))
        self._extend("source", np.asarray(list(sources), dtype=object))
        self._extend("tomo", np.asarray(list(tomos) if tomos is not None else [""] * n, dtype=object))
        lab = np.full(n, UNLABELLED, np.int32) if labels is None else np.asarray(labels, np.int32)
        self._extend("label", lab)
        self._extend("label_round", np.where(lab >= 0, 0, -1).astype(np.int32))
        xyz = np.full((n, 3), np.nan, np.float32) if coords is None else np.asarray(coords, np.float32)
        self._extend("coords", xyz.reshape(n, 3))
        if masks is not None or "masks" in h5:
            if masks is None:
                masks = np.full((n, *self.shape), -1, np.int16)
            self._extend("masks", np.asarray(masks, dtype=np.int16))
        if edge is not None or "edge" in h5:
            if "edge" not in h5:
                h5.create_dataset("edge", data=np.zeros(n_before, bool), maxshape=(None,), chunks=(4096,))
            self._extend("edge", np.zeros(n, bool) if edge is None else np.asarray(edge, bool))
        self._add_meta(meta or {}, n_before, n)
        self.n_added += n
        return n_before

    def _mark_pending(self, first: int, n: int) -> None:
        if not self._pending.any():
            self._pending_from, self._pending = first, np.ones(n, dtype=bool)
            return
        gap = first - (self._pending_from + self._pending.size)  # rows added with their volumes
        self._pending = np.concatenate([self._pending, np.zeros(gap, bool), np.ones(n, bool)])

    def write_volumes(self, rows: Sequence[int] | np.ndarray, volumes: np.ndarray) -> None:
        """Fill the volumes of pool `rows` (added by `add(None, ...)`, each filled once), in any order.

        Rows are written in sorted order; with one uncompressed particle per chunk (the default
        layout) each volume is written as its raw chunk, as fast as a sequential append.
        """
        h5 = self._h5
        assert h5 is not None
        rows = np.asarray(rows, dtype=np.int64).ravel()
        volumes = np.asarray(volumes, dtype=np.float32)
        if volumes.shape != (rows.size, *self.shape):  # type: ignore[misc]
            raise ValueError(f"volumes of shape {volumes.shape} for {rows.size} rows of {self.shape}")
        slot = rows - self._pending_from
        if (slot.size and (slot.min() < 0 or slot.max() >= self._pending.size)) or \
                not self._pending[slot].all() or np.unique(slot).size != slot.size:
            raise ValueError("write_volumes: every row must be one added without its volume, written once")
        order = np.argsort(rows, kind="stable")
        ds = h5["volumes"]
        raw_chunks = (ds.chunks == (1, *self.shape) and ds.dtype == np.dtype(np.float32)
                      and ds.id.get_create_plist().get_nfilters() == 0)
        if raw_chunks:
            zeros = (0,) * len(self.shape)  # type: ignore[arg-type]
            for k in order:
                ds.id.write_direct_chunk((int(rows[k]), *zeros), np.ascontiguousarray(volumes[k]).tobytes())
        else:  # other layouts: one write per run of consecutive rows
            sorted_rows = rows[order]
            breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
            for part in np.split(np.arange(rows.size), breaks):
                if part.size:
                    first = int(sorted_rows[part[0]])
                    ds[first : first + part.size] = volumes[order[part]]
        self._pending[slot] = False

    def _add_meta(self, meta: dict[str, Sequence[str]], n_before: int, n: int) -> None:
        group = self._h5["meta"]  # type: ignore[index]
        by_key = {_meta_key(col): values for col, values in meta.items()}
        for key in by_key:
            if key not in group:
                group.create_dataset(
                    key, data=np.asarray([""] * n_before, dtype=object), dtype=STR_DTYPE,
                    maxshape=(None,), chunks=(4096,),
                )
        for key in group:
            values = by_key.get(key)
            vals = [""] * n if values is None else [str(v) for v in values]
            self._extend(f"meta/{key}", np.asarray(vals, dtype=object))

    def add_star_blocks(self, source: str, blocks: dict[str, dict[str, Sequence[str]]]) -> None:
        """Record the non-particle blocks (optics, general) of the STAR manifest `source`."""
        h5 = self._h5
        assert h5 is not None
        known = json.loads(h5[STAR_BLOCKS].asstr()[()]) if STAR_BLOCKS in h5 else {}
        known[str(source)] = {
            b: {c: [str(v) for v in vals] for c, vals in t.items()} for b, t in blocks.items()
        }
        if STAR_BLOCKS in h5:
            del h5[STAR_BLOCKS]
        h5.create_dataset(STAR_BLOCKS, data=json.dumps(known), dtype=STR_DTYPE)

    def set_class_names(self, names: Sequence[str]) -> None:
        """Set the pool's class list (used when a manifest carries labels)."""
        self.class_names = list(names)
        if self._h5 is not None and "volumes" in self._h5:
            self._h5.attrs["class_names"] = json.dumps(self.class_names)

    def set_voxel_size(self, voxel_size: float) -> None:
        """Record the voxel size (Å) once known, e.g. from the first MRC header."""
        self.voxel_size = float(voxel_size)
        if self._h5 is not None and "volumes" in self._h5:
            self._h5.attrs["voxel_size"] = self.voxel_size
