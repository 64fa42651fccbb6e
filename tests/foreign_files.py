"""MRC files as other software writes them, built byte by byte from the MRC2014 / IMOD header specs.

These deliberately do not use mrcfile's writer: each header is struct-packed field by field, so
the tests check cryoal's reading against an independent description of the format. Every
builder returns a `Fixture`: the file, the (z, y, x) array a correct reader must return, and the
voxel size in Å (NaN when the header does not give one).

Header layout (byte offsets): 0 nx ny nz mode | 16 nxstart nystart nzstart | 28 mx my mz |
40 cella xyz | 52 cellb | 64 mapc mapr maps | 76 dmin dmax dmean | 88 ispg | 92 nsymbt |
96 extra (IMOD: creatid) | 104 exttyp | 108 nversion | 128 nint nreal (IMOD/SerialEM, int16) |
152 imodStamp | 156 imodFlags | 196 origin xyz | 208 "MAP " | 212 machine stamp | 216 rms |
220 nlabl | 224 ten 80-character labels. Old-style IMOD headers (before IMOD 2.6.20) have no
"MAP " and no machine stamp: 196 nwave + 5 wavelengths (int16), 208 zorg xorg yorg (float).
"""

from __future__ import annotations

import bz2
import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMOD_STAMP = 1146047817
MODE_DTYPE = {0: np.int8, 1: np.int16, 2: np.float32, 4: np.complex64, 6: np.uint16, 12: np.float16}


@dataclass
class Fixture:
    path: Path
    expected: np.ndarray  # (z, y, x) as a correct reader returns it (or (n, z, y, x) for stacks)
    voxel_size: float


def header_bytes(
    shape_file: tuple[int, int, int],
    mode: int,
    *,
    order: str = "<",
    voxel_size: float | tuple[float, float, float] = 0.0,
    mxyz: tuple[int, int, int] | None = None,
    mapcrs: tuple[int, int, int] = (1, 2, 3),
    nxyzstart: tuple[int, int, int] = (0, 0, 0),
    ispg: int = 1,
    nsymbt: int = 0,
    exttyp: bytes = b"\0\0\0\0",
    nversion: int = 20140,
    nint_nreal: tuple[int, int] = (0, 0),
    imod: tuple[int, int] | None = None,
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    stamp: bytes | None = b"MAP ",
    machst: bytes | None = None,
    stats: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    labels: tuple[str, ...] = (),
    old_style_origin: tuple[float, float, float] | None = None,
) -> bytes:
    """Pack a 1024-byte MRC header. `shape_file` is (nz, ny, nx) in file order (sections, rows, columns).

    `stamp=None` with `old_style_origin` writes an old-style IMOD header (no MAP, no machine stamp).
    """
    nz, ny, nx = shape_file
    e = order
    mx, my, mz = mxyz if mxyz is not None else (nx, ny, nz)
    vs = voxel_size if isinstance(voxel_size, tuple) else (voxel_size,) * 3
    dmin, dmax, dmean, rms = stats
    buf = bytearray(1024)
    struct.pack_into(f"{e}4i", buf, 0, nx, ny, nz, mode)
    struct.pack_into(f"{e}3i", buf, 16, *nxyzstart)
    struct.pack_into(f"{e}3i", buf, 28, mx, my, mz)
    struct.pack_into(f"{e}3f", buf, 40, vs[0] * mx, vs[1] * my, vs[2] * mz)
    struct.pack_into(f"{e}3f", buf, 52, 90.0, 90.0, 90.0)
    struct.pack_into(f"{e}3i", buf, 64, *mapcrs)
    struct.pack_into(f"{e}3f", buf, 76, dmin, dmax, dmean)
    struct.pack_into(f"{e}2i", buf, 88, ispg, nsymbt)
    buf[104:108] = exttyp
    struct.pack_into(f"{e}i", buf, 108, nversion)
    struct.pack_into(f"{e}2h", buf, 128, *nint_nreal)
    if imod is not None:
        struct.pack_into(f"{e}2i", buf, 152, *imod)
    if stamp is not None:
        struct.pack_into(f"{e}3f", buf, 196, *origin)
        buf[208:212] = stamp
        if machst is None:
            machst = b"\x44\x44\x00\x00" if e == "<" else b"\x11\x11\x00\x00"
        buf[212:216] = machst
        struct.pack_into(f"{e}f", buf, 216, rms)
    else:  # old-style IMOD: wavelengths then the origin as z, x, y
        struct.pack_into(f"{e}6h", buf, 196, 0, 0, 0, 0, 0, 0)
        zo, xo, yo = old_style_origin or (0.0, 0.0, 0.0)
        struct.pack_into(f"{e}3f", buf, 208, zo, xo, yo)
    struct.pack_into(f"{e}i", buf, 220, len(labels))
    for i, text in enumerate(labels[:10]):
        raw = text.encode("ascii")[:80]
        buf[224 + 80 * i : 224 + 80 * i + len(raw)] = raw
    return bytes(buf)


def data_bytes(file_order: np.ndarray, mode: int, order: str = "<") -> bytes:
    """Voxel data in file order (sections, rows, columns), fastest index last, in the given byte order."""
    dt = np.dtype(MODE_DTYPE[mode]).newbyteorder(order)
    return np.ascontiguousarray(file_order, dtype=dt).tobytes()


def _stats(a: np.ndarray) -> tuple[float, float, float, float]:
    f = a.astype(np.float64)
    return float(f.min()), float(f.max()), float(f.mean()), float(f.std())


def write(path: Path, *parts: bytes) -> Path:
    path.write_bytes(b"".join(parts))
    return path


def smooth_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """An asymmetric float volume (a few blobs on a gradient) so axis mix-ups show."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    v = 0.05 * x + 0.02 * y - 0.03 * z
    for _ in range(4):
        c = [rng.uniform(0, n) for n in shape]
        v += rng.uniform(0.5, 2) * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 6.0)
    return v + 0.1 * rng.standard_normal(shape)


# ------------------------------------------------------------------------------------------
# Files as other programs write them
# ------------------------------------------------------------------------------------------


def fei_micrograph(dirpath: Path) -> Fixture:
    """Thermo Fisher/FEI EPU-style 2D int16 image with an FEI1 extended header (one 768-byte block)."""
    rng = np.random.default_rng(1)
    img = rng.integers(-2000, 30000, size=(1, 48, 64)).astype(np.int16)
    ext = bytearray(768)
    struct.pack_into("<iii", ext, 0, 768, 0, 0b1111)  # metadata size, version, bitmask
    struct.pack_into("<d", ext, 12, 44897.5)  # timestamp (days)
    ext[20:36] = b"Titan Krios G4\0\0"
    hdr = header_bytes(
        img.shape, 1, voxel_size=0.83, ispg=0, nsymbt=len(ext), exttyp=b"FEI1", nversion=20140,
        stats=_stats(img), labels=("Fei Company",),
    )
    path = write(dirpath / "FoilHole_1234_Data_5678.mrc", hdr, bytes(ext), data_bytes(img, 1))
    return Fixture(path, img.astype(np.float32), 0.83)


def imod_tomogram(dirpath: Path, signed_flag: bool = False) -> Fixture:
    """IMOD `.rec` of unsigned bytes (trimvol -c): mode 0 with the IMOD stamp, signed flag clear.

    With `signed_flag`, the imodFlags bit says the bytes are signed (IMOD >= 4.2.23 can write that).
    """
    rng = np.random.default_rng(2)
    shape = (12, 14, 16)  # (z, y, x)
    if signed_flag:
        vol = rng.integers(-128, 128, size=shape).astype(np.int8)
        raw = vol
    else:
        vol = rng.integers(0, 256, size=shape).astype(np.uint8)
        raw = vol.view(np.int8)  # the same bytes; mode 0 is nominally int8
    hdr = header_bytes(
        shape, 0, voxel_size=13.6, ispg=0, imod=(IMOD_STAMP, 1 if signed_flag else 0),
        machst=b"\x44\x41\x00\x00", origin=(-108.8, -95.2, -81.6), stats=_stats(vol),
        labels=("Tilt axis angle = 85.3, binning = 4  spacing = 13.6", "trimvol: Trim volume"),
    )
    name = "tomo_signed.rec" if signed_flag else "tomo_rec.rec"
    path = write(dirpath / name, hdr, raw.tobytes())
    return Fixture(path, vol.astype(np.float32), 13.6)


def serialem_tilt_series(dirpath: Path) -> Fixture:
    """SerialEM/IMOD `.st` tilt series: int16, 5 tilts, SERI extended header with tilt angles."""
    rng = np.random.default_rng(3)
    shape = (5, 20, 24)
    data = rng.integers(-500, 4000, size=shape).astype(np.int16)
    nint, nreal = 2, 1  # 2 bytes per section, flag 1 = tilt angle * 100
    ext = bytearray(1024)
    for i, angle in enumerate((-60, -30, 0, 30, 60)):
        struct.pack_into("<h", ext, i * nint, angle * 100)
    hdr = header_bytes(
        shape, 1, voxel_size=3.42, ispg=0, nsymbt=len(ext), exttyp=b"SERI", nint_nreal=(nint, nreal),
        imod=(IMOD_STAMP, 0), machst=b"\x44\x41\x00\x00", stats=_stats(data),
        labels=("SerialEM: Digitized on EMBL Krios", "Tilt axis angle = 84.7"),
    )
    path = write(dirpath / "TS_01.st", hdr, bytes(ext), data_bytes(data, 1))
    return Fixture(path, data.astype(np.float32), 3.42)


def imod_old_style(dirpath: Path, order: str = "<") -> Fixture:
    """Pre-MRC2000 header as IMOD <= 2.6.19 wrote it: no MAP stamp, no machine stamp, origin at 208."""
    rng = np.random.default_rng(4)
    shape = (6, 10, 12)
    vol = rng.integers(-3000, 3000, size=shape).astype(np.int16)
    hdr = header_bytes(
        shape, 1, order=order, voxel_size=5.0, ispg=0, nversion=0, stamp=None,
        old_style_origin=(-17.0, 12.5, -3.25), stats=_stats(vol), labels=("Imod: old style header",),
    )
    name = "old_imod_le.mrc" if order == "<" else "old_imod_be.mrc"
    path = write(dirpath / name, hdr, data_bytes(vol, 1, order))
    return Fixture(path, vol.astype(np.float32), 5.0)


def emdb_map(dirpath: Path, name: str = "emd_12345.map") -> Fixture:
    """EMDB-style map: float32, MAPC/MAPR/MAPS 1 2 3, nonzero NXSTART, origin, 1.06 Å voxels, non-cubic."""
    vol = smooth_volume((16, 18, 20), seed=5).astype(np.float32)
    hdr = header_bytes(
        vol.shape, 2, voxel_size=1.06, nxyzstart=(-10, -9, -8), ispg=1, origin=(0.0, 0.0, 0.0),
        stats=_stats(vol), labels=("::::EMDATABANK.org::::EMD-12345::::",),
    )
    path = write(dirpath / name, hdr, data_bytes(vol, 2))
    return Fixture(path, vol, 1.06)


def ccp4_axis_order(dirpath: Path, mapcrs: tuple[int, int, int] = (2, 3, 1)) -> Fixture:
    """A CCP4 map stored in a non-standard axis order: the file's columns run along spatial axis mapc."""
    vol = smooth_volume((10, 12, 14), seed=6).astype(np.float32)  # spatial (z, y, x)
    # file axes (section, row, column) hold spatial axes (maps, mapr, mapc); spatial axis a is vol axis 3 - a
    mapc, mapr, maps = mapcrs
    file_order = vol.transpose(3 - maps, 3 - mapr, 3 - mapc)
    mxyz = (vol.shape[2], vol.shape[1], vol.shape[0])
    hdr = header_bytes(
        file_order.shape, 2, voxel_size=2.0, mxyz=mxyz, mapcrs=mapcrs, stats=_stats(vol),
        labels=("ccp4 map, sections along " + "xyz"[maps - 1],),
    )
    path = write(dirpath / f"ccp4_{''.join(map(str, mapcrs))}.map", hdr, data_bytes(file_order, 2))
    return Fixture(path, vol, 2.0)


def int8_signed(dirpath: Path) -> Fixture:
    """MRC2014 mode 0 without an IMOD stamp: signed bytes, negative values included."""
    vol = np.random.default_rng(7).integers(-128, 128, size=(8, 9, 10)).astype(np.int8)
    hdr = header_bytes(vol.shape, 0, voxel_size=4.0, stats=_stats(vol))
    return Fixture(write(dirpath / "int8.mrc", hdr, data_bytes(vol, 0)), vol.astype(np.float32), 4.0)


def big_endian(dirpath: Path) -> Fixture:
    """Big-endian float32 (machine stamp 0x11 0x11), as written on old SGI/IBM machines."""
    vol = smooth_volume((8, 10, 12), seed=8).astype(np.float32)
    hdr = header_bytes(vol.shape, 2, order=">", voxel_size=7.5, stats=_stats(vol))
    return Fixture(write(dirpath / "big_endian.mrc", hdr, data_bytes(vol, 2, ">")), vol, 7.5)


def float16(dirpath: Path) -> Fixture:
    """Mode 12 half floats."""
    vol = smooth_volume((8, 8, 10), seed=9).astype(np.float16)
    hdr = header_bytes(vol.shape, 12, voxel_size=2.5, stats=_stats(vol))
    return Fixture(write(dirpath / "half.mrc", hdr, data_bytes(vol, 12)), vol.astype(np.float32), 2.5)


def uint16(dirpath: Path) -> Fixture:
    """Mode 6 unsigned 16-bit, with values above 32767 (would wrap if read as int16)."""
    vol = np.random.default_rng(10).integers(0, 65536, size=(8, 8, 8)).astype(np.uint16)
    hdr = header_bytes(vol.shape, 6, voxel_size=1.7, stats=_stats(vol))
    return Fixture(write(dirpath / "uint16.mrc", hdr, data_bytes(vol, 6)), vol.astype(np.float32), 1.7)


def volume_stack(dirpath: Path, n: int = 3, box: int = 8) -> Fixture:
    """MRC2014 volume stack (ISPG 401): n volumes of MZ = box sections each; expected is (n, z, y, x)."""
    vols = np.stack([smooth_volume((box, box, box), seed=20 + i) for i in range(n)]).astype(np.float32)
    hdr = header_bytes(
        (n * box, box, box), 2, voxel_size=3.0, mxyz=(box, box, box), ispg=401, stats=_stats(vols),
    )
    return Fixture(write(dirpath / "subtomos.mrcs", hdr, data_bytes(vols.reshape(n * box, box, box), 2)),
                   vols, 3.0)


def cube_stack_no_ispg(dirpath: Path, n: int = 2, box: int = 8) -> Fixture:
    """A stack of cubes written without the volume-stack ISPG (needs --stack); expected (n, z, y, x)."""
    vols = np.stack([smooth_volume((box, box, box), seed=40 + i) for i in range(n)]).astype(np.float32)
    hdr = header_bytes((n * box, box, box), 2, voxel_size=3.0, ispg=0)
    return Fixture(write(dirpath / "cubes.mrcs", hdr, data_bytes(vols.reshape(n * box, box, box), 2)),
                   vols, 3.0)


def gzipped(fx: Fixture) -> Fixture:
    """The same file gzip-compressed beside the original (`.gz` appended)."""
    out = fx.path.with_name(fx.path.name + ".gz")
    out.write_bytes(gzip.compress(fx.path.read_bytes()))
    return Fixture(out, fx.expected, fx.voxel_size)


def bzipped(fx: Fixture) -> Fixture:
    """The same file bzip2-compressed beside the original (`.bz2` appended)."""
    out = fx.path.with_name(fx.path.name + ".bz2")
    out.write_bytes(bz2.compress(fx.path.read_bytes()))
    return Fixture(out, fx.expected, fx.voxel_size)


def all_volume_fixtures(dirpath: Path) -> list[Fixture]:
    """Every single-volume fixture (each one file holding one 3D volume)."""
    emdb = emdb_map(dirpath)
    return [
        imod_tomogram(dirpath), imod_tomogram(dirpath, signed_flag=True), imod_old_style(dirpath),
        imod_old_style(dirpath, ">"), emdb, ccp4_axis_order(dirpath), ccp4_axis_order(dirpath, (3, 1, 2)),
        int8_signed(dirpath), big_endian(dirpath), float16(dirpath), uint16(dirpath),
        gzipped(emdb), bzipped(emdb),
    ]


# ------------------------------------------------------------------------------------------
# Bad files
# ------------------------------------------------------------------------------------------


def plain_volume(path: Path, vol: np.ndarray, voxel_size: float = 10.0, mode: int = 2) -> Path:
    """A minimal valid MRC2014 file holding `vol` (z, y, x)."""
    return write(path, header_bytes(vol.shape, mode, voxel_size=voxel_size), data_bytes(vol, mode))


def truncated(dirpath: Path, cut: int = 100) -> Path:
    """A float32 volume with the last `cut` bytes of its data missing."""
    p = plain_volume(dirpath / "truncated.mrc", smooth_volume((8, 8, 8)).astype(np.float32))
    p.write_bytes(p.read_bytes()[:-cut])
    return p


def truncated_ext_header(dirpath: Path) -> Path:
    """An FEI file cut off inside its extended header."""
    fx = fei_micrograph(dirpath)
    p = dirpath / "cut_ext.mrc"
    p.write_bytes(fx.path.read_bytes()[:1024 + 300])
    return p


def longer_than_header(dirpath: Path) -> Path:
    """A volume followed by 512 bytes the header does not account for."""
    p = plain_volume(dirpath / "too_long.mrc", smooth_volume((8, 8, 8)).astype(np.float32))
    p.write_bytes(p.read_bytes() + b"\0" * 512)
    return p


def not_mrc_text(dirpath: Path) -> Path:
    """A text file with an MRC suffix (e.g. a log saved under the wrong name)."""
    p = dirpath / "notes.mrc"
    p.write_text("this is a processing log, not a map\n" * 60)
    return p


def png_file(dirpath: Path) -> Path:
    """A PNG signature and junk, renamed .mrc."""
    p = dirpath / "picture.mrc"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    return p


def complex_map(dirpath: Path) -> Path:
    """Mode 4 (complex64): a valid MRC that is not a density."""
    data = (np.ones((4, 4, 4)) + 1j).astype(np.complex64)
    return write(dirpath / "fft.mrc", header_bytes(data.shape, 4, voxel_size=1.0), data_bytes(data, 4))


def bad_axis_order(dirpath: Path) -> Path:
    """MAPC/MAPR/MAPS = 1 1 3, not a permutation."""
    vol = smooth_volume((6, 6, 6)).astype(np.float32)
    return write(dirpath / "bad_axes.mrc", header_bytes(vol.shape, 2, mapcrs=(1, 1, 3)), data_bytes(vol, 2))


def nan_volume(dirpath: Path, name: str = "nan.mrc", value: float = math.nan, box: int = 8) -> Path:
    """A float32 volume with one NaN (or Inf) voxel."""
    vol = smooth_volume((box, box, box)).astype(np.float32)
    vol[1, 2, 3] = value
    return plain_volume(dirpath / name, vol)


def constant_volume(dirpath: Path, box: int = 8) -> Path:
    """Every voxel equal (e.g. an empty box at a tomogram edge written by another program)."""
    return plain_volume(dirpath / "constant.mrc", np.full((box, box, box), 3.0, np.float32))


def truncated_gzip(dirpath: Path) -> Path:
    """A gzip stream cut in the middle."""
    plain = emdb_map(dirpath, "emd_cut.map")
    fx = gzipped(plain)
    plain.path.unlink()
    fx.path.write_bytes(fx.path.read_bytes()[: len(fx.path.read_bytes()) // 2])
    return fx.path
