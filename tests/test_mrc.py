"""MRC reading against files built byte by byte as other software writes them (tests/foreign_files.py)."""

from __future__ import annotations

import math
import struct

import foreign_files as ff
import mrcfile
import numpy as np
import pytest

from cryoal.errors import InputError
from cryoal.io import mrc
from cryoal.io.mrc import is_mrc_name, iter_stack, mrc_stem, open_mrc, read_header_info, read_volume


@pytest.fixture(params=[True, False], ids=["plain-reader", "mrcfile-only"])
def reader(request, monkeypatch):
    """Run a test through the one-call reader of plain files and through mrcfile.open alone."""
    monkeypatch.setattr(mrc, "FAST_PATH", request.param)
    return request.param


def _check(fx: ff.Fixture) -> None:
    vol, voxel = read_volume(fx.path)
    assert vol.dtype == np.float32 and vol.flags.c_contiguous
    assert vol.shape == fx.expected.shape
    np.testing.assert_array_equal(vol, fx.expected)
    assert voxel == pytest.approx(fx.voxel_size, rel=1e-6)


@pytest.mark.parametrize(
    "builder",
    [
        ff.emdb_map, ff.int8_signed, ff.big_endian, ff.float16, ff.uint16, ff.imod_tomogram,
        lambda d: ff.imod_tomogram(d, signed_flag=True), ff.imod_old_style,
        lambda d: ff.imod_old_style(d, ">"), ff.ccp4_axis_order, lambda d: ff.ccp4_axis_order(d, (3, 1, 2)),
        lambda d: ff.ccp4_axis_order(d, (1, 3, 2)), lambda d: ff.gzipped(ff.emdb_map(d)),
        lambda d: ff.bzipped(ff.big_endian(d)),
    ],
    ids=[
        "emdb", "int8", "big-endian", "float16", "uint16", "imod-unsigned-bytes", "imod-signed-bytes",
        "imod-old-style", "imod-old-style-big-endian", "ccp4-231", "ccp4-312", "ccp4-132", "gzip", "bzip2",
    ],
)
def test_foreign_volumes_read_exactly(tmp_path, builder, reader):
    _check(builder(tmp_path))


def test_every_fixture_in_the_catalogue_reads(tmp_path, reader):
    for fx in ff.all_volume_fixtures(tmp_path):
        _check(fx)


def test_imod_unsigned_bytes_differ_from_a_naive_signed_read(tmp_path):
    fx = ff.imod_tomogram(tmp_path)
    assert fx.expected.max() > 127  # the case where reading mode 0 as int8 goes wrong
    naive = mrcfile.read(fx.path)
    assert naive.dtype == np.int8 and naive.min() < 0
    vol, _ = read_volume(fx.path)
    assert vol.min() >= 0 and vol.max() == fx.expected.max()
    assert read_header_info(fx.path).unsigned_bytes


def test_mode0_without_imod_stamp_is_signed(tmp_path):
    fx = ff.int8_signed(tmp_path)
    vol, _ = read_volume(fx.path)
    assert vol.min() < 0
    assert not read_header_info(fx.path).unsigned_bytes


def test_nonstandard_axis_order_is_transposed_to_zyx(tmp_path):
    fx = ff.ccp4_axis_order(tmp_path, (2, 3, 1))
    raw = mrcfile.read(fx.path)  # file order: sections along x, rows along z, columns along y
    assert raw.shape == (14, 10, 12)
    vol, _ = read_volume(fx.path)
    assert vol.shape == (10, 12, 14)
    # an independent index check: file[s, r, c] holds spatial x=s, z=r, y=c
    assert vol[3, 5, 7] == raw[7, 3, 5]
    assert read_header_info(fx.path).spatial_shape == (10, 12, 14)


def test_fei_extended_header_and_2d_image(tmp_path, reader):
    fx = ff.fei_micrograph(tmp_path)
    h = read_header_info(fx.path)
    assert (h.exttyp, h.nsymbt, h.nz, h.mode) == ("FEI1", 768, 1, 1)
    assert h.voxel_size == pytest.approx(0.83)
    with pytest.raises(InputError, match=r"FoilHole_1234_Data_5678\.mrc: a 2D image \(64x48\) where a 3D"):
        read_volume(fx.path)
    with open_mrc(fx.path, kind="image") as f:
        assert f.n_items == 1 and not f.is_stack
        np.testing.assert_array_equal(f.item(0), fx.expected[0])


def test_serialem_tilt_series_as_images_and_as_one_volume(tmp_path, reader):
    fx = ff.serialem_tilt_series(tmp_path)
    h = read_header_info(fx.path)
    assert (h.exttyp, h.nsymbt) == ("SERI", 1024)
    with open_mrc(fx.path, kind="image") as f:
        assert f.n_items == 5 and f.is_stack
        for k in range(5):
            np.testing.assert_array_equal(f.item(k), fx.expected[k])
    vol, _ = read_volume(fx.path)  # without a stack header, an MRC with NZ > 1 is one volume
    np.testing.assert_array_equal(vol, fx.expected)


def test_volume_stack_ispg_401(tmp_path, reader):
    fx = ff.volume_stack(tmp_path, n=3, box=8)
    got = list(iter_stack(fx.path))
    assert [k for k, _ in got] == [1, 2, 3]
    for (_, vol), want in zip(got, fx.expected, strict=True):
        np.testing.assert_array_equal(vol, want)
    with pytest.raises(InputError, match="stack of 3 volumes"):
        read_volume(fx.path)
    with pytest.raises(InputError, match="image mode needs 2D images"):
        open_mrc(fx.path, kind="image")


def test_cube_stack_needs_the_stack_flag(tmp_path):
    fx = ff.cube_stack_no_ispg(tmp_path, n=2, box=8)
    with open_mrc(fx.path) as f:
        assert f.n_items == 1 and f.item(0).shape == (16, 8, 8)
    got = list(iter_stack(fx.path, stack=True))
    assert len(got) == 2
    for (_, vol), want in zip(got, fx.expected, strict=True):
        np.testing.assert_array_equal(vol, want)
    with pytest.raises(InputError, match="--stack needs cubes"):
        open_mrc(ff.emdb_map(tmp_path).path, stack=True)


def test_memory_mapped_path_for_big_files(tmp_path, monkeypatch):
    monkeypatch.setattr(mrc, "MMAP_THRESHOLD", 0)
    fx = ff.volume_stack(tmp_path, n=4, box=8)
    with open_mrc(fx.path) as f:
        assert f._closer.__class__.__name__ == "MrcMemmap"
        np.testing.assert_array_equal(f.item(2), fx.expected[2])
    _check(ff.big_endian(tmp_path))
    with pytest.raises(InputError, match="truncated"):
        read_volume(ff.truncated(tmp_path))


def test_file_written_by_mrcfile(tmp_path):
    vol = ff.smooth_volume((6, 7, 8)).astype(np.float32)
    path = tmp_path / "by_mrcfile.mrc"
    mrcfile.write(path, vol, voxel_size=4.2)
    got, voxel = read_volume(path)
    np.testing.assert_array_equal(got, vol)
    assert voxel == pytest.approx(4.2)


def test_voxel_size_nan_when_header_has_none(tmp_path):
    vol = ff.smooth_volume((4, 4, 4)).astype(np.float32)
    path = ff.plain_volume(tmp_path / "nocell.mrc", vol, voxel_size=0)
    _, voxel = read_volume(path)
    assert math.isnan(voxel)


def test_zero_machine_stamp_is_read_only_when_sizes_agree(tmp_path):
    vol = ff.smooth_volume((5, 6, 7)).astype(np.float32)
    hdr = ff.header_bytes(vol.shape, 2, voxel_size=3.0, machst=b"\0\0\0\0")
    good = ff.write(tmp_path / "zero_stamp.mrc", hdr, ff.data_bytes(vol, 2))
    got, _ = read_volume(good)
    np.testing.assert_array_equal(got, vol)
    assert read_header_info(good).legacy
    bad = ff.write(tmp_path / "zero_stamp_short.mrc", hdr, ff.data_bytes(vol, 2)[:-4])
    with pytest.raises(InputError, match="zero_stamp_short.mrc: not an MRC file"):
        read_volume(bad)


BAD_FILES = [
    (ff.truncated, r"truncated MRC file: the header \(8x8x8, mode 2\) needs 3072 bytes, the file has 2972"),
    (ff.truncated_ext_header, "truncated MRC file"),
    (ff.longer_than_header, "512 bytes larger than expected"),
    (ff.not_mrc_text, "not an MRC file"),
    (ff.png_file, "not an MRC file"),
    (ff.complex_map, r"complex \(mode 4\) data is not supported"),
    (ff.bad_axis_order, r"invalid axis order MAPC/MAPR/MAPS = \(1, 1, 3\)"),
    (ff.truncated_gzip, "corrupt or truncated gzip data"),
]


@pytest.mark.parametrize("builder,message", BAD_FILES, ids=[b.__name__ for b, _ in BAD_FILES])
def test_bad_files_give_one_clear_error_naming_the_file(tmp_path, builder, message, reader):
    path = builder(tmp_path)
    with pytest.raises(InputError, match=message) as info:
        read_volume(path)
    text = str(info.value)
    assert text.startswith(str(path) + ":") and "\n" not in text


def test_more_bad_files(tmp_path, reader):
    empty = tmp_path / "empty.mrc"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mrc: not an MRC file \\(empty file"):
        read_volume(empty)
    short = tmp_path / "short.mrc"
    short.write_bytes(b"\0" * 100)
    with pytest.raises(InputError, match="only 100 bytes"):
        read_volume(short)
    with pytest.raises(InputError, match="missing.mrc: file not found"):
        read_volume(tmp_path / "missing.mrc")
    with pytest.raises(InputError, match="is a directory"):
        read_volume(tmp_path)
    # mode 3 with a proper header: mrcfile refuses it, the message says why
    hdr = ff.header_bytes((4, 4, 4), 3, voxel_size=1.0)
    m3 = ff.write(tmp_path / "mode3.mrc", hdr, b"\0" * (4 * 4 * 4 * 4))
    with pytest.raises(InputError, match=r"mode3.mrc: complex int16 \(mode 3\) data is not supported"):
        read_volume(m3)
    # a volume stack header whose NZ is not a multiple of MZ
    vol = np.zeros((10, 4, 4), np.float32)
    hdr = ff.header_bytes(vol.shape, 2, mxyz=(4, 4, 4), ispg=401)
    bad_stack = ff.write(tmp_path / "bad_stack.mrcs", hdr, ff.data_bytes(vol, 2))
    with pytest.raises(InputError, match="NZ=10 is not a multiple of MZ=4"):
        read_volume(bad_stack)
    # an old-style header of an unsupported mode is reported as such, not as "not MRC"
    data = np.zeros((2, 3, 3), np.complex64)
    hdr = ff.header_bytes(data.shape, 4, stamp=None)
    legacy4 = ff.write(tmp_path / "legacy_complex.mrc", hdr, ff.data_bytes(data, 4))
    with pytest.raises(InputError, match=r"complex \(mode 4\)"):
        read_volume(legacy4)


def test_header_fields_are_where_the_spec_says(tmp_path):
    # guard the fixture builder itself against offsets drifting: read fields back with struct
    fx = ff.emdb_map(tmp_path)
    raw = fx.path.read_bytes()
    assert struct.unpack_from("<3i", raw, 0) == (20, 18, 16)
    assert struct.unpack_from("<3i", raw, 16) == (-10, -9, -8)
    assert raw[208:212] == b"MAP " and raw[212:214] == b"\x44\x44"
    assert struct.unpack_from("<f", raw, 40)[0] == pytest.approx(20 * 1.06, rel=1e-6)
    with mrcfile.open(fx.path) as m:  # mrcfile agrees with the builder on every field we set
        assert (int(m.header.nxstart), int(m.header.nystart), int(m.header.nzstart)) == (-10, -9, -8)
        assert int(m.header.nversion) == 20140


def test_plain_reader_is_used_and_agrees_with_mrcfile(tmp_path, monkeypatch):
    fx = ff.big_endian(tmp_path)
    with open_mrc(fx.path) as f:
        assert f._closer is None  # read in one call, not through mrcfile.open
        fast = (f.item(0), f.header)
    monkeypatch.setattr(mrc, "FAST_PATH", False)
    with open_mrc(fx.path) as f:
        assert f._closer is not None
        slow = (f.item(0), f.header)
    np.testing.assert_array_equal(fast[0], slow[0])
    assert fast[1] == slow[1]


def test_names():
    assert is_mrc_name("a/b/p01.mrc") and is_mrc_name("x.MRCS") and is_mrc_name("t.rec.gz")
    assert is_mrc_name("ts.st.bz2") and is_mrc_name("emd_1.map")
    assert not is_mrc_name("notes.txt") and not is_mrc_name("p.mrc.zip") and not is_mrc_name("pool.h5")
    assert mrc_stem("a/p01.mrc") == "p01"
    assert mrc_stem("a/p01.mrc.gz") == "p01"
    assert mrc_stem("stack.MRCS") == "stack"
    assert mrc_stem("name.with.dots.map") == "name.with.dots"
