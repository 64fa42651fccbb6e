"""Finding, checking and memory-mapping tomograms.

`--tomograms` is one of:

* a directory: tomogram `NAME` is the file `NAME` + `.mrc`/`.rec`/`.mrcs`/`.map`, optionally
  `.gz`/`.bz2`, or the same with a `rec_` prefix (RELION 5's name); the directory itself only,
  not its subdirectories. Two matching files for one name is an error (which one was meant?).
* a STAR file with `rlnTomoName` + `rlnTomoReconstructedTomogram` (RELION 5 `tomograms.star`)
  or a CSV/TSV with `tomo,path`: paths are relative to that file's directory.
* a single MRC file: every pick is in that tomogram (the picks may then lack a tomogram column).

A tomogram may also be an OME-Zarr directory (`NAME.zarr`, as the CryoET Data Portal serves it),
wherever an MRC file is accepted; its finest level is read lazily, chunk by chunk (`omezarr`).

A plain tomogram is read through `mrcfile.mmap`, so only the boxes are read. Pages read through
the map count towards the process's resident memory until they are unmapped, so the reader drops
them from the map (`madvise(MADV_DONTNEED)`; the OS page cache keeps them) as it goes: peak
memory then stays flat whatever the tomogram size. A gzip/bzip2 tomogram cannot be mapped and
is read whole.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import InputError
from cryoal.extract.boxes import cut_box
from cryoal.io.omezarr import ArrayReader, is_zarr, plain_zarr_opener
from cryoal.io.preprocess import box_start
from cryoal.io.star import read_star
from cryoal.io.tables import read_csv

MRC_SUFFIXES = (".mrc", ".rec", ".mrcs", ".map")
COMPRESSED_SUFFIXES = ("", ".gz", ".bz2")
MAPPING_SUFFIXES = (".star", ".csv", ".tsv", ".txt")
NAME_PREFIXES = ("", "rec_")
# The edge-fill mean reads every k-th z-slice, k chosen so that at most this many voxels are read;
# tomograms up to this size get their exact mean.
MEAN_SAMPLE_VOXELS = 16 * 1024 * 1024
# Most tomogram bytes kept mapped while cutting boxes (see TomogramReader).
MAPPED_BUDGET = 128 * 1024 * 1024

Warn = Callable[[str], None]


def _no_warn(message: str) -> None:
    pass


# ------------------------------------------------------------------------------------------
# Lookup: tomogram name -> file
# ------------------------------------------------------------------------------------------


def _candidates(directory: Path, name: str) -> list[Path]:
    found = []
    for prefix in NAME_PREFIXES:
        for suffix in MRC_SUFFIXES:
            for comp in COMPRESSED_SUFFIXES:
                path = directory / f"{prefix}{name}{suffix}{comp}"
                if path.is_file():
                    found.append(path)
        zarr_dir = directory / f"{prefix}{name}.zarr"
        if zarr_dir.is_dir():
            found.append(zarr_dir)
    return found


def _mapping_table(spec: Path) -> dict[str, str]:
    if spec.suffix.lower() == ".star":
        for block in read_star(spec).values():
            if "rlnTomoName" in block and "rlnTomoReconstructedTomogram" in block:
                return dict(zip(block["rlnTomoName"], block["rlnTomoReconstructedTomogram"], strict=True))
        raise InputError(f"{spec}: no block with rlnTomoName and rlnTomoReconstructedTomogram columns")
    table = read_csv(spec)
    for name_col, path_col in (("tomo", "path"), ("rlnTomoName", "rlnTomoReconstructedTomogram")):
        if name_col in table and path_col in table:
            return dict(zip(table[name_col], table[path_col], strict=True))
    raise InputError(
        f"{spec}: a tomogram list needs columns tomo,path (or rlnTomoName,rlnTomoReconstructedTomogram)"
    )


def resolve_tomograms(spec: str | os.PathLike, names: list[str], picks_path: Path) -> dict[str, Path]:
    """Map every distinct tomogram name in `names` (picks file order) to a file path.

    Raises InputError naming the pick's tomogram (and its first row in `picks_path`) when no file
    matches. Files are not opened here.
    """
    spec = Path(spec)
    if not spec.exists():
        raise InputError(f"{spec}: --tomograms not found (give a directory, a tomogram list or an MRC file)")
    first_row: dict[str, int] = {}
    for i, name in enumerate(names):
        first_row.setdefault(name, i + 1)
    out: dict[str, Path] = {}
    if spec.is_dir() and not is_zarr(spec):
        for name, row in first_row.items():
            found = _candidates(spec, name)
            if not found:
                raise InputError(
                    f"{picks_path}: tomogram '{name}' (row {row}) matches no file in {spec} "
                    f"(looked for {name}.mrc/.rec/.mrcs/.map, also .gz/.bz2, {name}.zarr and rec_{name}.*)"
                )
            if len(found) > 1:
                raise InputError(
                    f"{spec}: tomogram '{name}' matches several files ({', '.join(p.name for p in found)}); "
                    "give --tomograms a tomo,path list to choose"
                )
            out[name] = found[0]
        return out
    if spec.suffix.lower() in MAPPING_SUFFIXES:
        mapping = _mapping_table(spec)
        for name, row in first_row.items():
            if name not in mapping:
                raise InputError(f"{picks_path}: tomogram '{name}' (row {row}) is not listed in {spec}")
            path = Path(mapping[name])
            out[name] = path if path.is_absolute() else spec.parent / path
        return out
    # A single tomogram file.
    if len(first_row) > 1:
        listed = ", ".join(list(first_row)[:4])
        raise InputError(
            f"{picks_path}: picks name {len(first_row)} tomograms ({listed}...) but --tomograms is one file "
            f"({spec}); give a directory or a tomo,path list"
        )
    return {name: spec for name in first_row}


# ------------------------------------------------------------------------------------------
# Header check and memory-mapped reading
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TomogramInfo:
    """What the header says about one tomogram (checked: a readable 3D MRC of the right size)."""

    name: str
    path: Path
    shape: tuple[int, int, int]  # (D, H, W) = (z, y, x)
    pixel_size: float  # Å, NaN when the header says 0
    compressed: bool
    # For an OME-Zarr tomogram: opens its (lazy) zarr array. None: an MRC file.
    opener: Callable[[], object] | None = field(default=None, compare=False, repr=False)


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(3)
    return magic[:2] == b"\x1f\x8b" or magic == b"BZh"


def _forward_warnings(caught: list[warnings.WarningMessage], path: Path, warn: Warn) -> None:
    for w in caught:
        warn(f"{path}: {w.message}")


@contextlib.contextmanager
def _mrc_errors(path: Path, name: str) -> Iterator[None]:
    """Turn mrcfile/numpy failures into one InputError naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: tomogram file not found (tomogram '{name}')")
    try:
        yield
    except InputError:
        raise
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable MRC tomogram ({detail})") from None


def _shape_and_pixel(mrc, path: Path, warn: Warn) -> tuple[tuple[int, int, int], float]:
    import mrcfile.utils

    shape = tuple(int(s) for s in mrcfile.utils.data_shape_from_header(mrc.header))
    if len(shape) == 2 or (len(shape) == 3 and shape[0] == 1):
        raise InputError(f"{path}: a 2D image ({shape[-1]}×{shape[-2]}), not a 3D tomogram")
    if len(shape) != 3:
        raise InputError(f"{path}: a stack of {shape[0]} volumes, not one tomogram")
    vs = mrc.voxel_size
    sizes = [float(vs.x), float(vs.y), float(vs.z)]
    if sizes[0] > 0 and any(abs(s - sizes[0]) > 1e-3 * sizes[0] for s in sizes[1:] if s > 0):
        warn(f"{path}: anisotropic voxel size {sizes} Å; using x ({sizes[0]:g} Å)")
    pixel = sizes[0] if sizes[0] > 0 and math.isfinite(sizes[0]) else math.nan
    return shape, pixel  # type: ignore[return-value]


def inspect_tomogram(name: str, path: Path, warn: Warn = _no_warn) -> TomogramInfo:
    """Check that `path` is a 3D MRC whose data block is complete; read its shape and pixel size.

    Only the header is read (`mrcfile.open(header_only=True, permissive=False)`); the file size
    of a plain file is checked against it. A compressed file's data is checked when it is read.
    """
    if is_zarr(path):
        shape, pixel, opener = plain_zarr_opener(path)
        return TomogramInfo(name=name, path=path, shape=shape, pixel_size=pixel, compressed=False,
                            opener=opener)
    import mrcfile
    import mrcfile.utils

    with _mrc_errors(path, name):
        compressed = _is_compressed(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(path, mode="r", permissive=False, header_only=True) as mrc:
                shape, pixel = _shape_and_pixel(mrc, path, warn)
                itemsize = mrcfile.utils.data_dtype_from_header(mrc.header).itemsize
                header_bytes = int(mrc.header.nbytes) + int(mrc.header.nsymbt)
        _forward_warnings(caught, path, warn)
        if not compressed:
            expected = header_bytes + math.prod(shape) * itemsize
            actual = path.stat().st_size
            if actual < expected:
                raise InputError(
                    f"{path}: truncated: {actual} bytes, but its header describes {expected} "
                    f"({shape[2]}×{shape[1]}×{shape[0]} voxels)"
                )
    return TomogramInfo(name=name, path=path, shape=shape, pixel_size=pixel, compressed=compressed)


class _MappedMeter:
    """Resident file-backed (and shared) memory of this process, read from /proc/self/statm with
    one pread per call; `None` where /proc is not available."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> int | None:
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 256, 0).split()[2]) * mmap.PAGESIZE
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class TomogramReader:
    """An open tomogram: `data` (z, y, x) is a memory map (or, for a compressed file, an array).

    Cut boxes with `box()` in increasing z order. Pages read through the map count as this
    process's memory until unmapped, and the kernel maps whole page-cache folios (up to 2 MiB
    each on recent Linux) around every voxel read, so `box()` keeps the mapped part small:
    - slices behind the box being cut are unmapped as the reading front moves (in z order
      they are not read again, so this costs no re-reads);
    - if the mapped pages still exceed `budget` bytes (many boxes in one z-range of a large
      slice), everything is unmapped. The OS page cache keeps the data: a re-read is a cheap
      minor fault, not disk I/O.
    """

    def __init__(self, mrc, info: TomogramInfo, budget: int):
        self._mrc = mrc
        self.info = info
        self.data: np.ndarray = mrc.data
        self.budget = budget
        self._mean: float | None = None
        self._map = getattr(self.data, "_mmap", None)  # numpy.memmap keeps its mmap.mmap here
        self._can_release = self._map is not None and hasattr(self._map, "madvise") and hasattr(
            mmap, "MADV_DONTNEED"
        )
        # numpy maps from the offset rounded down to the allocation granularity.
        offset = int(getattr(self.data, "offset", 0))
        self._data_start = offset % mmap.ALLOCATIONGRANULARITY
        self._slice_bytes = int(np.prod(self.data.shape[1:])) * self.data.itemsize
        self._released_to = 0  # slices [0, _released_to) are unmapped
        self._meter = _MappedMeter()
        self._baseline = self._meter()
        self._estimate = 0  # bytes read since the last release, where /proc is not available

    def release(self) -> None:
        """Unmap every page read so far, so that they stop counting as this process's memory."""
        if self._can_release:
            self._map.madvise(mmap.MADV_DONTNEED)
        self._estimate = 0

    def _release_before(self, z: int) -> None:
        if not self._can_release or z <= self._released_to:
            return
        start = self._data_start + self._released_to * self._slice_bytes
        start -= start % mmap.PAGESIZE
        end = self._data_start + z * self._slice_bytes
        end -= end % mmap.PAGESIZE  # keep the page holding the start of slice z
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)
        self._released_to = z

    def close(self) -> None:
        self._meter.close()

    def read_ahead(self, centres_xyz: np.ndarray, size: int) -> None:
        """Ask the kernel to start reading the boxes at `centres_xyz` (an (n, 3) array) now.

        `madvise(MADV_WILLNEED)` on the byte range of each box row block (one call per box and
        z-slice) starts asynchronous disk reads and returns at once, so a cold tomogram is read
        while the previous batch is z-scored and written to the pool, instead of after it.
        It only fills the page cache; nothing is mapped, so memory accounting is unchanged.
        """
        if self._map is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        depth, height, width = self.data.shape
        row_bytes = width * self.data.itemsize
        limit = len(self._map)
        for _x0, y0, z0 in box_start(np.asarray(centres_xyz), size):
            yl, yh = max(int(y0), 0), min(int(y0) + size, height)
            if yl >= yh:
                continue
            for z in range(max(int(z0), 0), min(int(z0) + size, depth)):
                start = self._data_start + z * self._slice_bytes + yl * row_bytes
                end = min(self._data_start + z * self._slice_bytes + yh * row_bytes, limit)
                start -= start % mmap.PAGESIZE
                if end > start:
                    self._map.madvise(mmap.MADV_WILLNEED, start, end - start)

    def _mapped(self) -> int:
        now = self._meter()
        if now is None or self._baseline is None:
            return self._estimate
        return now - self._baseline

    def box(self, centre_xyz: np.ndarray, size: int, fill: float) -> tuple[np.ndarray, bool]:
        """`cut_box` on this tomogram, keeping the mapped pages within the budget."""
        z0 = int(centre_xyz[2]) - size // 2
        self._release_before(max(0, z0))
        out, edge = cut_box(self.data, centre_xyz, size, fill)
        self._estimate += size * (size * self.data.shape[2] * self.data.itemsize + 2 * 1024 * 1024)
        if self._mapped() > self.budget:
            self.release()
        return out, edge

    def mean(self) -> float:
        """The tomogram's mean, the edge fill value: exact up to MEAN_SAMPLE_VOXELS voxels, else the
        mean of every k-th z-slice (k = ceil(voxels / MEAN_SAMPLE_VOXELS)). Computed once, lazily."""
        if self._mean is None:
            depth = self.data.shape[0]
            step = max(1, math.ceil(self.data.size / MEAN_SAMPLE_VOXELS))
            total, count = 0.0, 0
            for z in range(0, depth, step):
                total += float(np.sum(self.data[z], dtype=np.float64))
                count += self.data[z].size
                self.release()
            self._mean = total / count
            if not math.isfinite(self._mean):
                raise InputError(f"{self.info.path}: the tomogram holds NaN or infinite values")
        return self._mean


@contextlib.contextmanager
def open_tomogram(
    info: TomogramInfo, warn: Warn = _no_warn, budget: int = MAPPED_BUDGET
) -> Iterator[TomogramReader]:
    """Open a checked tomogram for reading boxes: memory-mapped, or read whole (with a warning on
    `warn`) when it is gzip/bzip2-compressed. `budget`: see TomogramReader. An OME-Zarr
    tomogram (`info.opener`) gets an `omezarr.ArrayReader` with the same interface."""
    if info.opener is not None:
        array_reader = ArrayReader(info.opener(), str(info.path))
        try:
            yield array_reader  # type: ignore[misc]
        finally:
            array_reader.close()
        return
    import mrcfile

    # Header warnings were reported by inspect_tomogram already: keep them quiet here.
    with _mrc_errors(info.path, info.name), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if info.compressed:
            warn(
                f"{info.path}: compressed, so it cannot be memory-mapped; reading it whole "
                f"({math.prod(info.shape) / 1e6:.1f} M voxels in memory)"
            )
            mrc = mrcfile.open(info.path, mode="r", permissive=False)
        else:
            mrc = mrcfile.mmap(info.path, mode="r", permissive=False)
    try:
        if mrc.data is None or tuple(mrc.data.shape) != info.shape:
            raise InputError(f"{info.path}: data block does not match the header's dimensions")
        reader = TomogramReader(mrc, info, budget)
        try:
            yield reader
        finally:
            reader.close()
    finally:
        mrc.close()
