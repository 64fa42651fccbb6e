"""MRC / CCP4 reading for ingest, with one clear error per bad file.

Reading uses `mrcfile`: its header layout and shape rules always, and `mrcfile.open` (strict
mode) for every file except the plainest: an uncompressed MRC2014 file under 16 MB that passes
all of mrcfile's strict checks and whose header accounts for its size to the byte is read in
one call (mrcfile's per-field header access costs more than reading a 32^3 volume). When
`mrcfile` refuses a file, the header is examined again only to say *why* in one line; a file
is never accepted because of that.
The one exception is a legacy header (no MRC2000 ``MAP `` stamp, or an unrecognised machine
stamp, as old IMOD and CCP4 programs wrote): it is read only if, for exactly one byte order,
its dimensions, mode and extended-header size account for the file's size to the byte.

Rules (see also docs/commands.md, "ingest, label, status"):
- Modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16) and 12 (float16) are read. Mode 0 is
  signed (MRC2014) unless the header carries the IMOD stamp with the "signed bytes" flag
  clear, in which case it is unsigned, as IMOD writes it.
- Arrays come back as (z, y, x) float32. A header whose MAPC/MAPR/MAPS is not 1 2 3 (some
  CCP4/EMDB maps) is transposed to that order; 0 0 0 (unset) counts as 1 2 3.
- Voxel size is CELLA.x / MX in Å, NaN when the header leaves it 0.
- What a file holds: with ISPG 401-630 (MRC2014 volume stack) it is a stack of NZ/MZ volumes
  of MZ sections. With `stack=True`, a file of cubes NX×NX×(k·NX) is a stack of k volumes.
  Otherwise a file with NZ > 1 is ONE volume, whatever its suffix; a file with NZ = 1 is a 2D
  image, which is an error where a volume is expected. In image mode every section of a
  file is one image.
- Stack items are numbered from 1, as in RELION's ``k@stack.mrcs``.
- A file longer than its header says is refused as corrupt, as is a shorter (truncated) one.
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
import stat
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import mrcfile
import mrcfile.utils
import numpy as np
from mrcfile.dtypes import HEADER_DTYPE

from cryoal.errors import InputError

MRC_SUFFIXES = (".mrc", ".mrcs", ".rec", ".map", ".st", ".ali", ".ccp4")
COMPRESSED_SUFFIXES = (".gz", ".bz2")
SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_MODE_DTYPES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}
_OTHER_MODE_BYTES = {3: 4, 4: 8, 101: 0.5}  # known but unsupported: complex and 4-bit data
_COMPRESSED_CLASSES = {"GzipMrcFile": "gzip", "Bzip2MrcFile": "bzip2"}
IMOD_STAMP = 1146047817  # the ASCII bytes "IMOD" read as a little-endian int32
_FIELDS = HEADER_DTYPE.names
# Files above this size are memory-mapped so that one stack item is read without the rest.
MMAP_THRESHOLD = 16 * 1024 * 1024
# Read plain MRC2014 files below that size in one call (see MrcFile._open_plain); False: mrcfile only.
FAST_PATH = True
# "MAP " and the machine stamp's first two bytes -> byte order, as mrcfile accepts them
_PLAIN_STAMPS = {b"MAP \x44\x44": "<", b"MAP \x44\x41": "<", b"MAP \x11\x11": ">"}
# the header record in each byte order, built once (a 56-field dtype costs microseconds per file)
_HEADER_DTYPES = {order: HEADER_DTYPE.newbyteorder(order) for order in "<>"}


def is_mrc_name(path: str | os.PathLike) -> bool:
    """True when the file name ends in an MRC suffix, optionally followed by .gz or .bz2."""
    name = os.path.basename(os.fspath(path)).lower()
    for comp in COMPRESSED_SUFFIXES:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return name.endswith(MRC_SUFFIXES)


def mrc_stem(path: str | os.PathLike) -> str:
    """File name without its MRC suffix and compression suffix: ``a/p01.mrc.gz`` -> ``p01``."""
    name = os.path.basename(os.fspath(path))
    low = name.lower()
    for comp in COMPRESSED_SUFFIXES:
        if low.endswith(comp):
            name, low = name[: -len(comp)], low[: -len(comp)]
            break
    for suffix in MRC_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


@dataclass(slots=True)
class MrcHeader:
    """What cryoal needs from an MRC header. nx, ny, nz are in file order (columns, rows, sections)."""

    path: str
    nx: int
    ny: int
    nz: int
    mode: int
    mz: int
    ispg: int
    voxel_size: float
    axis_order: tuple[int, int, int]
    nsymbt: int
    exttyp: str
    byte_order: str
    unsigned_bytes: bool
    legacy: bool
    compression: str | None

    @property
    def is_volume_stack(self) -> bool:
        """MRC2014 volume stack (ISPG 401-630)."""
        return 401 <= self.ispg <= 630

    @property
    def data_bytes(self) -> int:
        return self.nx * self.ny * self.nz * np.dtype(_MODE_DTYPES[self.mode]).itemsize

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(z, y, x) sizes of the whole data block once transposed to the standard axis order."""
        sizes = {axis: n for axis, n in zip(self.axis_order, (self.nx, self.ny, self.nz), strict=True)}
        return sizes[3], sizes[2], sizes[1]


# ------------------------------------------------------------------------------------------
# Opening: mrcfile first, a byte-exact legacy reader second, a one-line diagnosis otherwise
# ------------------------------------------------------------------------------------------


def _compression_of(path: Path) -> str | None:
    with open(path, "rb") as fh:
        start = fh.read(212)
    if start[208:212] == b"MAP ":
        return None
    if start[:2] == b"\x1f\x8b":
        return "gzip"
    if start[:3] == b"BZh":
        return "bzip2"
    return None


def _opener(compression: str | None):
    return {"gzip": gzip.open, "bzip2": bz2.open}.get(compression or "", open)


def _probe(path: Path, compression: str | None) -> tuple[bytes, int]:
    """The first 1024 bytes and the total (decompressed) size, streaming: big files are never held whole.

    InputError if a compressed stream is corrupt or cut short.
    """
    try:
        with _opener(compression)(path, "rb") as fh:
            head = fh.read(1024)
            size = len(head)
            while chunk := fh.read(1 << 22):
                size += len(chunk)
        return head, size
    except (EOFError, OSError, zlib.error, ValueError) as exc:
        raise InputError(f"{path}: corrupt or truncated {compression} data ({exc})") from None


def _header_dict(record) -> dict:
    return dict(zip(_FIELDS, record.item(), strict=True))


def _mode_itemsize(mode: int) -> float | None:
    if mode in _MODE_DTYPES:
        return np.dtype(_MODE_DTYPES[mode]).itemsize
    return _OTHER_MODE_BYTES.get(mode)


def _expected_size(h: dict) -> float | None:
    size = _mode_itemsize(int(h["mode"]))
    if size is None or min(h["nx"], h["ny"], h["nz"]) < 1 or h["nsymbt"] < 0:
        return None
    return 1024 + int(h["nsymbt"]) + int(h["nx"]) * int(h["ny"]) * int(h["nz"]) * size


def _legacy_header(head: bytes, size: int) -> tuple[dict, str] | None:
    """The byte order for which a stamp-less header accounts for the file size to the byte, if one does."""
    for order in ("<", ">"):
        h = _header_dict(np.frombuffer(head, dtype=_HEADER_DTYPES[order])[0])
        if _expected_size(h) == size:
            return h, order
    return None


def _diagnose(path: Path, head: bytes, size: int, exc: BaseException) -> InputError:
    """Turn mrcfile's refusal into one line that says what is wrong with the file."""
    name = str(path)
    if size < 1024:
        what = "empty file" if not size else f"only {size} bytes"
        return InputError(f"{name}: not an MRC file ({what}; an MRC header alone is 1024 bytes)")
    h_le = _header_dict(np.frombuffer(head, dtype=_HEADER_DTYPES["<"])[0])
    stamp_ok = h_le["map"][:3] == b"MAP"
    machst = bytes(h_le["machst"])
    order = "<" if machst[:1] == b"\x44" else ">" if machst[:2] == b"\x11\x11" else None
    if not stamp_ok or order is None:
        return InputError(
            f"{name}: not an MRC file (no 'MAP ' identifier at byte 208 or unknown byte order, "
            "and the header does not account for the file size)"
        )
    h = _header_dict(np.frombuffer(head, dtype=_HEADER_DTYPES[order])[0])
    mode = int(h["mode"])
    if mode not in _MODE_DTYPES:
        return _unsupported_mode(name, mode)
    if min(h["nx"], h["ny"], h["nz"]) < 1 or h["nsymbt"] < 0:
        return InputError(
            f"{name}: corrupt MRC header (size {h['nx']}x{h['ny']}x{h['nz']}, extended header {h['nsymbt']})"
        )
    expected = _expected_size(h)
    if expected is not None and size < expected:
        return InputError(
            f"{name}: truncated MRC file: the header ({h['nx']}x{h['ny']}x{h['nz']}, mode {mode}) "
            f"needs {int(expected)} bytes, the file has {size}"
        )
    return InputError(f"{name}: corrupt MRC file ({exc})")


def _unsupported_mode(name: str, mode: int) -> InputError:
    what = {3: "complex int16 (mode 3)", 4: "complex (mode 4)", 101: "4-bit (mode 101)"}.get(mode)
    modes = ", ".join(f"{m} ({t})" for m, t in SUPPORTED_MODES.items())
    return InputError(f"{name}: {what or f'unknown MRC mode {mode}'} data is not supported; "
                      f"cryoal reads modes {modes}")


class MrcFile:
    """One open MRC file: its header and the items (volumes or images) it holds.

    `kind` is "volume" or "image"; `stack` reads a file of cubes as a stack of volumes.
    Use as a context manager; `item(k)` returns a (z, y, x) (or (y, x)) float32 array.
    """

    def __init__(self, path: str | os.PathLike, kind: str | None = "volume", stack: bool = False):
        if kind not in ("volume", "image", None):  # None: header only, no check of what it holds
            raise ValueError(f"kind must be 'volume' or 'image', not {kind!r}")
        self.path = path if isinstance(path, Path) else Path(path)
        self.name = str(self.path)
        self.kind = kind
        self._closer = None
        try:
            self._open()
            self.header = self._interpret()
            if kind is not None:
                self._layout(stack)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------
    def _open(self) -> None:
        path, name = self.path, self.name
        self._legacy = False
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise InputError(f"{name}: file not found") from None
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{name}: is a directory, not an MRC file")
        size = info.st_size
        if FAST_PATH and size <= MMAP_THRESHOLD and self._open_plain(size):
            return
        # big uncompressed files are memory-mapped, everything else is read whole by mrcfile
        use_mmap = size > MMAP_THRESHOLD and _compression_of(path) is None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mrc = (mrcfile.mmap if use_mmap else mrcfile.open)(path, mode="r", permissive=False)
            except (ValueError, ZeroDivisionError, EOFError, OSError, zlib.error, TypeError) as exc:
                if isinstance(exc, PermissionError):
                    raise InputError(f"{name}: permission denied") from None
                self._compression = _compression_of(path)
                self._open_legacy(exc)
                return
        self._compression = _COMPRESSED_CLASSES.get(type(mrc).__name__)
        self._closer = mrc
        self._raw_header = _header_dict(mrc.header)
        self._byte_order = _byte_order(mrc.header.mode.dtype.byteorder)
        self._data = mrc.data
        self._warnings = [str(w.message) for w in caught]

    def _open_plain(self, size: int) -> bool:
        """Read a plain MRC2014 file in one call, with mrcfile's header layout and shape rules.

        Only a file that passes every check of mrcfile's strict mode (MAP stamp, machine stamp,
        supported mode) and whose header accounts for its size to the byte is read here;
        anything else returns False and goes through mrcfile.open, which also words the errors.
        This skips mrcfile's per-field record access, which costs more than reading a 32^3 file.
        """
        if size < 1024:
            return False
        buf = np.empty(size, dtype=np.uint8)  # not bytearray(size): no need to zero what is read over
        try:
            with open(self.path, "rb") as fh:
                if fh.readinto(buf) != size:
                    return False
        except PermissionError:
            raise InputError(f"{self.path}: permission denied") from None
        order = _PLAIN_STAMPS.get(bytes(buf[208:214]))
        if order is None:
            return False
        h = _header_dict(np.frombuffer(buf, dtype=_HEADER_DTYPES[order], count=1)[0])
        mode, nx, ny, nz, mz, ispg = (int(h[k]) for k in ("mode", "nx", "ny", "nz", "mz", "ispg"))
        if mode not in _MODE_DTYPES or min(nx, ny, nz) < 1 or _expected_size(h) != size:
            return False
        if 401 <= ispg <= 630 and (mz < 1 or nz % mz):
            return False
        dims = SimpleNamespace(nx=nx, ny=ny, nz=nz, mz=mz, ispg=ispg)
        shape = mrcfile.utils.data_shape_from_header(dims)  # mrcfile's rule: 2D image, volume or stack
        dtype = np.dtype(_MODE_DTYPES[mode]).newbyteorder(order)
        self._data = np.frombuffer(buf, dtype=dtype, offset=1024 + int(h["nsymbt"])).reshape(shape)
        self._raw_header, self._byte_order, self._warnings = h, order, []
        self._compression = None
        return True

    def _open_legacy(self, exc: BaseException) -> None:
        compression = self._compression
        head, size = _probe(self.path, compression)
        found = _legacy_header(head, size) if size >= 1024 else None
        stamp_ok = head[208:212] == b"MAP " and head[212:214] in (b"\x44\x44", b"\x44\x41", b"\x11\x11")
        if found is None or stamp_ok:  # not legacy, or a proper MRC2014 header that mrcfile refused
            raise _diagnose(self.path, head, size, exc) from None
        h, order = found
        self._legacy = True
        self._raw_header = h
        self._byte_order = order
        self._warnings = []
        mode = int(h["mode"])
        if mode not in _MODE_DTYPES:
            self._data = None  # _interpret reports the unsupported mode
            return
        with _opener(compression)(self.path, "rb") as fh:
            blob = fh.read()
        dtype = np.dtype(_MODE_DTYPES[mode]).newbyteorder(order)
        data = np.frombuffer(blob, dtype=dtype, offset=1024 + int(h["nsymbt"]))
        nz, ny, nx, mz = int(h["nz"]), int(h["ny"]), int(h["nx"]), int(h["mz"])
        if 401 <= int(h["ispg"]) <= 630 and mz > 0 and nz % mz == 0:
            self._data = data.reshape(nz // mz, mz, ny, nx)
        else:
            self._data = data.reshape(nz, ny, nx)

    def _interpret(self) -> MrcHeader:
        h, name = self._raw_header, self.name
        mode = int(h["mode"])
        if mode not in _MODE_DTYPES:
            raise _unsupported_mode(name, mode)
        axes = tuple(int(v) for v in (h["mapc"], h["mapr"], h["maps"]))
        if axes == (0, 0, 0):
            axes = (1, 2, 3)
        if sorted(axes) != [1, 2, 3]:
            raise InputError(
                f"{name}: invalid axis order MAPC/MAPR/MAPS = {axes}; must be a permutation of 1 2 3"
            )
        ispg, nz, mz = int(h["ispg"]), int(h["nz"]), int(h["mz"])
        if 401 <= ispg <= 630 and (mz < 1 or nz % mz):
            raise InputError(
                f"{name}: volume stack header (ISPG {ispg}) but NZ={nz} is not a multiple of MZ={mz}"
            )
        for msg in self._warnings:
            if "larger than expected" in msg:
                raise InputError(f"{name}: corrupt MRC file: {msg.replace('MRC file is', 'the file is')} "
                                 "from its header")
        unsigned = False
        if mode == 0:  # IMOD writes unsigned bytes unless its flag says signed
            stamp, flags = np.frombuffer(bytes(h["extra2"])[40:48], dtype=f"{self._byte_order}i4")
            unsigned = int(stamp) == IMOD_STAMP and not int(flags) & 1
        cella_x, mx = float(h["cella"][0]), int(h["mx"])
        # CELLA is float32: keep 6 significant digits so 21.2 / 20 reads as 1.06, not 1.0600000381
        voxel = math.nan
        if mx > 0 and cella_x > 0 and math.isfinite(cella_x):
            voxel = float(f"{cella_x / mx:.6g}")
        exttyp = bytes(h["exttyp"]).decode("ascii", "replace").strip("\x00 ")
        return MrcHeader(
            path=name, nx=int(h["nx"]), ny=int(h["ny"]), nz=nz, mode=mode, mz=mz, ispg=ispg,
            voxel_size=voxel, axis_order=axes, nsymbt=int(h["nsymbt"]), exttyp=exttyp,
            byte_order=self._byte_order, unsigned_bytes=unsigned, legacy=self._legacy,
            compression=self._compression,
        )

    # -- what the file holds -------------------------------------------------------------
    def _layout(self, stack: bool) -> None:
        hd, name = self.header, self.name
        data = self._data
        if hd.unsigned_bytes:
            data = data.view(np.uint8)
        if data.ndim == 2:  # mrcfile returns a single image of an image stack header as 2D
            data = data[np.newaxis]
        if data.ndim == 3:
            data = _to_zyx(data, hd.axis_order)
        else:  # volume stack (n, mz, ny, nx)
            data = data.transpose(0, *(1 + a for a in _perm(hd.axis_order)))
        self._array = data
        z, y, x = data.shape[-3:]
        if self.kind == "image":
            if data.ndim == 4:
                raise InputError(
                    f"{name}: holds a stack of 3D volumes (ISPG {hd.ispg}); image mode needs 2D images"
                )
            self.n_items, self.is_stack = z, z > 1
            return
        if data.ndim == 4:
            self.n_items, self.is_stack = data.shape[0], True
        elif stack:
            if x != y or z % x:
                raise InputError(
                    f"{name}: --stack needs cubes stacked along z (NX = NY and NZ a multiple of NX); "
                    f"the file is {x}x{y}x{z}"
                )
            self.n_items, self.is_stack = z // x, True
        elif z == 1:
            raise InputError(f"{name}: a 2D image ({x}x{y}) where a 3D volume is expected")
        else:
            self.n_items, self.is_stack = 1, False
        self._stack_cubes = stack and data.ndim == 3

    # -- items ---------------------------------------------------------------------------
    def item(self, k: int = 0) -> np.ndarray:
        """Item k (0-based) as a float32 (z, y, x) volume or (y, x) image."""
        if not 0 <= k < self.n_items:
            raise InputError(f"{self.path}: item {k + 1} requested but the file holds {self.n_items}")
        a = self._array
        if self.kind == "image":
            part = a[k]
        elif a.ndim == 4:
            part = a[k]
        elif self._stack_cubes:
            n = a.shape[-1]
            part = a[k * n : (k + 1) * n]
        else:
            part = a
        return np.ascontiguousarray(part, dtype=np.float32)

    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        """Every item, as (k 0-based, array)."""
        for k in range(self.n_items):
            yield k, self.item(k)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (memory-mapped data is invalid afterwards)."""
        self._array = None
        self._data = None
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> MrcFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _byte_order(char: str) -> str:
    if char in ("<", ">"):
        return char
    return "<" if np.little_endian else ">"


def _perm(axis_order: tuple[int, int, int]) -> tuple[int, int, int]:
    """Array axes (section, row, column) to take for output axes (z, y, x)."""
    spatial = (axis_order[2], axis_order[1], axis_order[0])  # spatial axis of array axes 0, 1, 2
    return spatial.index(3), spatial.index(2), spatial.index(1)


def _to_zyx(data: np.ndarray, axis_order: tuple[int, int, int]) -> np.ndarray:
    if axis_order == (1, 2, 3):
        return data
    return data.transpose(_perm(axis_order))


# ------------------------------------------------------------------------------------------
# Convenience functions
# ------------------------------------------------------------------------------------------


def open_mrc(path: str | os.PathLike, kind: str = "volume", stack: bool = False) -> MrcFile:
    """Open an MRC file for reading its volumes (or images); InputError naming the file if it is bad."""
    return MrcFile(path, kind=kind, stack=stack)


def read_header_info(path: str | os.PathLike) -> MrcHeader:
    """The header of any valid MRC file (image, volume or stack), after the same checks as reading it."""
    with MrcFile(path, kind=None) as f:
        return f.header


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Read a file holding one 3D volume: ((z, y, x) float32 array, voxel size in Å or NaN)."""
    with MrcFile(path) as f:
        if f.n_items != 1:
            raise InputError(f"{path}: holds a stack of {f.n_items} volumes; read it with iter_stack")
        return f.item(0), f.header.voxel_size


def iter_stack(path: str | os.PathLike, stack: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (k, volume) for every volume in a file, k counted from 1 as in RELION's ``k@file``."""
    with MrcFile(path, stack=stack) as f:
        for k, vol in f.items():
            yield k + 1, vol
