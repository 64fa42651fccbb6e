"""Image and mask reading (PNG, TIFF, NPY, MRC), and the 2D classifier's contract."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
import torch
from PIL import Image

from cryoal.errors import CryoalError, InputError
from cryoal.io.images import (
    ImageFile,
    as_mask,
    check_class_range,
    fit_mask,
    image_stem,
    is_image_name,
    read_image,
    read_mask,
    save_mask_stack,
)
from cryoal.models.cnn2d import build_image_model


def test_names():
    assert is_image_name("a.png") and is_image_name("b.TIFF") and is_image_name("c.npy")
    assert is_image_name("d.mrcs") and is_image_name("e.mrc.gz")
    assert not is_image_name("f.txt")
    assert image_stem("x/p01.png") == "p01" and image_stem("x/p02.mrc.gz") == "p02"


def test_png_grey_8_and_16_bit(tmp_path):
    a8 = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(a8, mode="L").save(tmp_path / "a.png")
    a16 = (np.arange(12 * 10, dtype=np.uint16) * 500).reshape(12, 10)
    Image.fromarray(a16).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), a8.astype(np.float32))
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), a16.astype(np.float32))


def test_png_rgb_becomes_luminance_but_not_a_mask(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "c.png")
    want = np.asarray(Image.fromarray(rgb, mode="RGB").convert("L"), dtype=np.float32)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), want)
    with pytest.raises(InputError, match="colour"):
        read_mask(tmp_path / "c.png", kind="image")


def test_palette_png_mask_gives_indices(tmp_path):
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", kind="image"), idx.astype(np.int16))


def test_tiff_pages_are_images_or_one_volume(tmp_path):
    pages = np.random.default_rng(1).normal(size=(3, 6, 5)).astype(np.float32)
    frames = [Image.fromarray(p, mode="F") for p in pages]
    frames[0].save(tmp_path / "s.tif", save_all=True, append_images=frames[1:])
    with ImageFile(tmp_path / "s.tif", kind="image") as f:
        assert f.n_items == 3 and f.is_stack
        for k in range(3):
            np.testing.assert_array_equal(f.item(k), pages[k])
    with ImageFile(tmp_path / "s.tif", kind="volume") as f:
        assert f.n_items == 1
        np.testing.assert_array_equal(f.item(0), pages)
    with ImageFile(tmp_path / "s.tif", kind="auto") as f:  # a multi-page TIFF is a volume
        assert f.item(0).shape == (3, 6, 5)


def test_npy_image_stack_and_volume(tmp_path):
    stack = np.random.default_rng(2).normal(size=(4, 6, 7)).astype(np.float64)
    np.save(tmp_path / "s.npy", stack)
    with ImageFile(tmp_path / "s.npy", kind="image") as f:
        assert f.n_items == 4 and f.is_stack
        np.testing.assert_allclose(f.item(2), stack[2].astype(np.float32))
    with ImageFile(tmp_path / "s.npy", kind="auto") as f:
        assert f.n_items == 1 and not f.is_stack and f.item(0).shape == (4, 6, 7)
    np.save(tmp_path / "one.npy", stack[0])
    with ImageFile(tmp_path / "one.npy", kind="image") as f:
        assert f.n_items == 1 and not f.is_stack
    np.save(tmp_path / "four.npy", np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(InputError, match="four.npy.*shape"):
        ImageFile(tmp_path / "four.npy", kind="image")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(InputError, match="bad.npy"):
        ImageFile(tmp_path / "bad.npy")


def test_mrc_image_and_stack(tmp_path):
    stack = np.random.default_rng(3).normal(size=(5, 8, 9)).astype(np.float32)
    with mrcfile.new(tmp_path / "s.mrcs") as m:
        m.set_data(stack)
        m.voxel_size = 2.5
    with ImageFile(tmp_path / "s.mrcs", kind="image") as f:
        assert f.n_items == 5 and f.header.voxel_size == pytest.approx(2.5)
        np.testing.assert_array_equal(f.item(4), stack[4])
    with ImageFile(tmp_path / "s.mrcs", kind="auto") as f:  # .mrcs: a stack of images
        assert f.n_items == 5
    with mrcfile.new(tmp_path / "v.mrc") as m:
        m.set_data(stack)
    with ImageFile(tmp_path / "v.mrc", kind="auto") as f:  # NZ > 1 .mrc: one volume
        assert f.n_items == 1 and f.item(0).shape == (5, 8, 9)


def test_as_mask_rules():
    raw = np.array([[0, 1, 255], [2, -1, 0]])
    np.testing.assert_array_equal(as_mask(raw, "m", ignore_index=255), [[0, 1, -1], [2, -1, 0]])
    with pytest.raises(InputError, match="m: negative class id -3"):
        as_mask(np.array([0, -3]), "m")
    with pytest.raises(InputError, match="fractional"):
        as_mask(np.array([0.5, 1.0]), "m")
    np.testing.assert_array_equal(as_mask(np.array([0.0, 2.0]), "m"), [0, 2])
    check_class_range(np.array([0, 1]), 2, "m")
    with pytest.raises(InputError, match="m: class id 2 .* out of range; the pool has 2 classes"):
        check_class_range(np.array([0, 2]), 2, "m")


def test_fit_mask_pads_with_unlabelled_like_fit_box():
    from cryoal.io.preprocess import fit_box

    mask = np.arange(6 * 5).reshape(6, 5).astype(np.int16)
    out = fit_mask(mask, (4, 8))
    # the same centring as the image: where a distinctive image lands, its mask lands
    img = fit_box(np.where(mask == 7, 100.0, 0.0) + np.random.default_rng(0).normal(size=(6, 5)) * 0.01,
                  (4, 8))
    assert np.unravel_index(np.argmax(img), img.shape) == tuple(np.argwhere(out == 7)[0])
    assert (out[:, 0] == -1).all() and out.shape == (4, 8)


@pytest.mark.parametrize("fmt,shape", [("npy", (6, 7)), ("mrc", (6, 7)), ("mrc", (4, 5, 6))])
def test_mask_stack_round_trip(tmp_path, fmt, shape):
    rng = np.random.default_rng(4)
    data = rng.integers(-1, 3, size=(3, *shape)).astype(np.int16)
    path = tmp_path / ("m.npy" if fmt == "npy" else "m.mrcs")
    arr, finish = save_mask_stack(path, 3, shape, fmt)
    arr[:] = data
    finish()
    if fmt == "npy":
        np.testing.assert_array_equal(np.load(path), data)
    else:
        with mrcfile.open(path) as m:
            np.testing.assert_array_equal(m.data, data)
            assert m.is_volume_stack() == (len(shape) == 3)


def test_cnn2d_contract():
    torch.manual_seed(0)
    for shape, pools in (((8, 8), 1), ((16, 16), 2), ((64, 48), 3)):
        model = build_image_model("cnn2d", shape, 4).eval()
        assert model.arch_kwargs["pools"] == pools
        x = torch.randn(3, 1, *shape)
        out = model(x)
        assert out.shape == (3, 4)
        torch.testing.assert_close(out, model.head(model.features(x)))
        assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    with pytest.raises(CryoalError, match="a 2D model was given 3D data"):
        model(torch.randn(2, 1, 8, 64, 48))
    with pytest.raises(CryoalError, match="expects a 2D image shape"):
        build_image_model("cnn2d", (16, 16, 16), 3)
