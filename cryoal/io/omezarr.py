"""OME-Zarr tomograms: multiscale metadata, and boxes read lazily, one zarr chunk at a time.

An OME-Zarr tomogram (what copick stores and the CryoET Data Portal serves) is a zarr group whose
`multiscales` attribute lists the arrays of a pyramid (`datasets[i].path`, usually "0", "1", ...)
with a `scale` (and optionally a `translation`) per array, in the unit of the spatial axes
(Å for copick and the Data Portal). Arrays are (z, y, x).

Reading: a box touches only the chunks it overlaps. The reader decodes those chunks and keeps a
few of them (at most CHUNK_CACHE_BYTES, at least one chunk) for the next boxes, which, in (z, y, x)
reading order, often fall in the same chunks. Nothing else of the tomogram is ever held, so peak
memory depends on the chunk size and the cache, not on the tomogram's size.

zarr comes with the `copick` extra: without it, a `.zarr` tomogram is refused with one line
saying how to install it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryoal.errors import CryoalError, InputError
from cryoal.io.preprocess import box_start

INSTALL_HINT = 'pip install "cryoal[copick]"'
# Decoded chunks kept for the next boxes (at least one chunk is kept, whatever its size).
CHUNK_CACHE_BYTES = 32 * 1024 * 1024
# The edge-fill mean reads every k-th z-slice so that at most this many voxels are read (the rule
# of the MRC reader, so that both give the same fill value).
MEAN_SAMPLE_VOXELS = 16 * 1024 * 1024
# Length units of OME-NGFF axes, in Å.
UNIT_ANGSTROM = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "picometer": 0.01}


def require_zarr(what: str = "a .zarr tomogram"):
    """Import zarr, or raise a one-line error saying how to install it."""
    try:
        import zarr
    except ImportError:
        raise CryoalError(f"{what} needs the copick extra (zarr): {INSTALL_HINT}") from None
    return zarr


def is_zarr(path: Path) -> bool:
    """A zarr directory: named `*.zarr`, or holding zarr group metadata."""
    if not path.is_dir():
        return False
    return path.suffix.lower() == ".zarr" or any(
        (path / marker).is_file() for marker in (".zgroup", ".zattrs", "zarr.json")
    )


@dataclass(frozen=True)
class Level:
    """One array of a multiscale pyramid: its key in the group and its geometry (Å, x axis)."""

    key: str
    scale: float  # Å per voxel
    translation: float  # Å of voxel 0 (0 in copick's pyramids)
    translation_xyz: tuple[float, float, float]


def _axis_factor(multiscale: dict, where: str) -> float:
    axes = multiscale.get("axes") or []
    units = {a.get("unit") for a in axes if isinstance(a, dict) and a.get("type") == "space"}
    units.discard(None)
    if not units:
        return 1.0  # copick and the Data Portal write Å; an unlabelled axis is taken as Å
    if len(units) > 1 or next(iter(units)) not in UNIT_ANGSTROM:
        raise InputError(f"{where}: OME-Zarr axes in unit(s) {sorted(units)}; expected angstrom or nanometer")
    return UNIT_ANGSTROM[next(iter(units))]


def _transform(transforms: list, kind: str) -> list[float] | None:
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == kind:
            return [float(v) for v in t.get(kind, [])]
    return None


def read_levels(group, where: str) -> list[Level]:
    """The pyramid levels of an OME-Zarr group, finest first. Raises InputError if the group has no
    usable `multiscales` metadata."""
    try:
        multiscales = group.attrs["multiscales"]
        multiscale = multiscales[0]
        datasets = multiscale["datasets"]
    except (KeyError, IndexError, TypeError):
        raise InputError(f"{where}: not an OME-Zarr image (no multiscales metadata)") from None
    factor = _axis_factor(multiscale, where)
    outer = _transform(multiscale.get("coordinateTransformations"), "scale")
    levels = []
    for ds in datasets:
        scale = _transform(ds.get("coordinateTransformations"), "scale")
        if not scale or "path" not in ds:
            raise InputError(f"{where}: OME-Zarr dataset {ds.get('path')!r} has no scale transformation")
        sx = scale[-1] * (outer[-1] if outer else 1.0) * factor
        shift = _transform(ds.get("coordinateTransformations"), "translation") or [0.0, 0.0, 0.0]
        shift_xyz = tuple(float(v) * factor for v in shift[-3:][::-1])
        levels.append(Level(key=str(ds["path"]), scale=sx, translation=shift_xyz[0],
                            translation_xyz=shift_xyz))  # type: ignore[arg-type]
    return sorted(levels, key=lambda lv: lv.scale)


def open_array(group, level: Level, where: str):
    """The zarr array of `level`, checked to be 3D (lazy: no voxel is read)."""
    try:
        array = group[level.key]
    except KeyError:
        raise InputError(f"{where}: OME-Zarr array '{level.key}' listed in multiscales is missing") from None
    if len(array.shape) == 2 or (len(array.shape) == 3 and array.shape[0] == 1):
        raise InputError(f"{where}: a 2D image, not a 3D tomogram")
    if len(array.shape) != 3:
        raise InputError(f"{where}: array of shape {tuple(array.shape)}, not a 3D tomogram (z, y, x)")
    return array


def open_group(path: Path):
    """Open a local OME-Zarr directory read-only."""
    zarr = require_zarr()
    try:
        return zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a broken store
        raise InputError(f"{path}: not a readable zarr group ({type(exc).__name__}: {exc})") from None


class ArrayReader:
    """Boxes out of a lazily read zarr array (z, y, x), with the interface of the MRC reader
    (`box`, `read_ahead`, `mean`, `close`).

    A box is assembled from the chunks it overlaps; each is read once through zarr (one decode)
    and kept in a small LRU cache (CHUNK_CACHE_BYTES) for the boxes that follow.
    """

    def __init__(self, array, where: str, cache_bytes: int = CHUNK_CACHE_BYTES):
        self.array = array
        self.where = where
        self.shape: tuple[int, int, int] = tuple(int(s) for s in array.shape)  # type: ignore[assignment]
        self.chunks: tuple[int, int, int] = tuple(int(c) for c in array.chunks)  # type: ignore[assignment]
        chunk_bytes = math.prod(self.chunks) * np.dtype(array.dtype).itemsize
        self._max_chunks = max(1, cache_bytes // max(1, chunk_bytes))
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._mean: float | None = None

    def _chunk(self, index: tuple[int, int, int]) -> np.ndarray:
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, self.chunks, self.shape,
                                                                           strict=True))
        try:
            data = np.asarray(self.array[region])
        except Exception as exc:  # a missing or corrupt chunk file
            detail = f"{type(exc).__name__}: {exc}"
            raise InputError(f"{self.where}: cannot read chunk {index} ({detail})") from None
        self._cache[index] = data
        while len(self._cache) > self._max_chunks:
            self._cache.popitem(last=False)
        return data

    def read(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
        """Voxels [lo, hi) (z, y, x; inside the array) as float32, assembled chunk by chunk."""
        out = np.empty(tuple(h - low for low, h in zip(lo, hi, strict=True)), dtype=np.float32)
        first = [low // c for low, c in zip(lo, self.chunks, strict=True)]
        last = [(h - 1) // c for h, c in zip(hi, self.chunks, strict=True)]
        for cz in range(first[0], last[0] + 1):
            for cy in range(first[1], last[1] + 1):
                for cx in range(first[2], last[2] + 1):
                    index = (cz, cy, cx)
                    chunk = self._chunk(index)
                    starts = [i * c for i, c in zip(index, self.chunks, strict=True)]
                    a = [max(low, s) for low, s in zip(lo, starts, strict=True)]
                    b = [min(h, s + c) for h, s, c in zip(hi, starts, self.chunks, strict=True)]
                    dst = tuple(slice(p - o, q - o) for p, q, o in zip(a, b, lo, strict=True))
                    src = tuple(slice(p - o, q - o) for p, q, o in zip(a, b, starts, strict=True))
                    out[dst] = chunk[src]
        return out

    def box(self, centre_xyz: np.ndarray, size: int, fill: float) -> tuple[np.ndarray, bool]:
        """The box of `size`³ centred at voxel `centre_xyz` (x, y, z), as `cut_box` cuts it: the
        part outside the tomogram is `fill`. Returns `(box (z, y, x) float32, crossed_edge)`."""
        x0, y0, z0 = (int(v) for v in box_start(centre_xyz, size))
        start = (z0, y0, x0)
        lo = tuple(max(s, 0) for s in start)
        hi = tuple(min(s + size, d) for s, d in zip(start, self.shape, strict=True))
        inside = lo == start and all(h == s + size for h, s in zip(hi, start, strict=True))
        if inside:
            return self.read(lo, hi), False
        box = np.full((size, size, size), fill, dtype=np.float32)
        if all(low < h for low, h in zip(lo, hi, strict=True)):
            part = self.read(lo, hi)
            box[lo[0] - z0:hi[0] - z0, lo[1] - y0:hi[1] - y0, lo[2] - x0:hi[2] - x0] = part
        return box, True

    def read_ahead(self, centres_xyz: np.ndarray, size: int) -> None:
        """Nothing to prefetch: zarr reads whole chunks on demand."""

    def mean(self) -> float:
        """The tomogram's mean (the edge fill), by the MRC reader's rule: exact up to
        MEAN_SAMPLE_VOXELS voxels, else the mean of every k-th z-slice. Each slice is summed in
        float64 in z order, as the MRC reader sums it, so both give the same value for the same data.

        The sampled slices of one row of chunks are gathered chunk by chunk (each chunk decoded
        once); all sampled slices together hold at most about MEAN_SAMPLE_VOXELS voxels."""
        if self._mean is None:
            depth, height, width = self.shape
            cz, cy, cx = self.chunks
            step = max(1, math.ceil(depth * height * width / MEAN_SAMPLE_VOXELS))
            sampled = np.arange(0, depth, step)
            total, count = 0.0, 0
            for row in range(0, math.ceil(depth / cz)):
                zs = sampled[(sampled >= row * cz) & (sampled < (row + 1) * cz)]
                if zs.size == 0:
                    continue
                planes = np.empty((zs.size, height, width), dtype=np.float32)
                for iy in range(math.ceil(height / cy)):
                    for ix in range(math.ceil(width / cx)):
                        chunk = self._chunk((row, iy, ix))
                        planes[:, iy * cy:iy * cy + chunk.shape[1], ix * cx:ix * cx + chunk.shape[2]] = \
                            chunk[zs - row * cz]
                for plane in planes:
                    total += float(np.sum(plane, dtype=np.float64))
                    count += plane.size
            self._mean = total / count
            if not math.isfinite(self._mean):
                raise InputError(f"{self.where}: the tomogram holds NaN or infinite values")
        return self._mean

    def close(self) -> None:
        self._cache.clear()


def plain_zarr_opener(path: Path) -> tuple[tuple[int, int, int], float, Any]:
    """For `extract --tomograms x.zarr`: the shape and pixel size (Å) of the finest level of a local
    OME-Zarr directory, and a function that opens that level's array for reading."""
    group = open_group(path)
    levels = read_levels(group, str(path))
    finest = levels[0]
    array = open_array(group, finest, str(path))
    shape = tuple(int(s) for s in array.shape)
    pixel = finest.scale if finest.scale > 0 and math.isfinite(finest.scale) else math.nan
    return shape, pixel, lambda: open_array(open_group(path), finest, str(path))  # type: ignore[return-value]
