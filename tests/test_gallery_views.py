"""Views, low-pass and contrast of `cryoal.gallery`: checked against slow, obvious references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cryoal.gallery import montage
from cryoal.gallery.views import (
    _slab_range,
    default_slab,
    image_views,
    lowpass,
    mask_planes,
    orthogonal_views,
    particle_views,
    to_uint8,
)


def plant(shape, points, value=1.0):
    vol = np.zeros(shape, np.float32)
    for x, y, z in points:
        vol[z, y, x] = value  # convention: voxel vol[z, y, x] sits at pixel (x, y, z)
    return vol


def l_shape(cz):
    """An L in the plane z = cz: a long arm along +x at y = 2, a short arm along +y at x = 3."""
    arm_x = [(x, 2, cz) for x in range(3, 12)]
    arm_y = [(3, y, cz) for y in range(3, 8)]
    return arm_x + arm_y


def reference_views(shape, points, slab):
    """Per-voxel reference: where each planted unit voxel must land in each display-oriented view."""
    d, h, w = shape
    sz, sy, sx = (_slab_range(n, slab) for n in (d, h, w))
    out = {"XY": np.zeros((h, w)), "XZ": np.zeros((d, w)), "YZ": np.zeros((d, h)), "proj": np.zeros((h, w))}
    for x, y, z in points:
        if sz.start <= z < sz.stop:
            out["XY"][h - 1 - y, x] += 1.0 / (sz.stop - sz.start)  # x right, y up
        if sy.start <= y < sy.stop:
            out["XZ"][d - 1 - z, x] += 1.0 / (sy.stop - sy.start)  # x right, z up
        if sx.start <= x < sx.stop:
            out["YZ"][d - 1 - z, y] += 1.0 / (sx.stop - sx.start)  # y right, z up
        out["proj"][h - 1 - y, x] += 1.0
    return out


@pytest.mark.parametrize("slab", [1, 2, 3, 8])
def test_views_match_per_voxel_reference_on_non_cubic_box(slab):
    shape = (12, 14, 16)  # D, H, W all different: any axis mix-up changes a shape or a position
    rng = np.random.default_rng(slab)
    points = {(int(rng.integers(16)), int(rng.integers(14)), int(rng.integers(12))) for _ in range(60)}
    points |= set(l_shape(6))
    views = orthogonal_views(plant(shape, points), slab)
    ref = reference_views(shape, points, slab)
    for name in ("XY", "XZ", "YZ", "proj"):
        assert views[name].shape == ref[name].shape, name
        np.testing.assert_allclose(views[name], ref[name], atol=1e-6, err_msg=name)


def test_planted_l_reads_correctly_in_xy():
    """The L is recognisable: long arm along the bottom (y small = low on screen), short arm up the left."""
    shape = (16, 16, 16)
    xy = orthogonal_views(plant(shape, l_shape(8)), slab=1)["XY"]
    rows, cols = np.nonzero(xy)
    assert rows.max() == 15 - 2  # the x arm sits at y = 2, i.e. 2 rows above the bottom row
    assert set(cols[rows == 13]) == set(range(3, 12))  # it runs to the right from x = 3 to 11
    assert set(rows[cols == 3]) == {15 - y for y in range(2, 8)}  # the y arm goes up from the corner


def test_off_centre_voxel_only_in_views_whose_slab_holds_it():
    shape = (16, 16, 16)
    vol = plant(shape, [(8, 8, 1)])  # centred in x and y, far below the centre in z
    v = orthogonal_views(vol, slab=4)
    assert v["XY"].max() == 0  # z = 1 is outside the central z slab 6..9
    assert v["proj"][15 - 8, 8] == 1.0  # but the projection sums every plane
    assert v["XZ"][15 - 1, 8] == pytest.approx(0.25)  # z = 1 is near the bottom of XZ
    assert v["YZ"][15 - 1, 8] == pytest.approx(0.25)


def test_slab_range_centres_on_box_centre():
    assert _slab_range(32, 8) == slice(12, 20)  # index 16 = 32 // 2 is inside, 4 planes before it
    assert _slab_range(32, 1) == slice(16, 17)
    assert _slab_range(31, 3) == slice(14, 17)
    assert _slab_range(8, 100) == slice(0, 8)  # clipped to the box
    assert default_slab(32) == 8 and default_slab(64) == 16 and default_slab(2) == 1


def naive_lowpass(data, cutoff):
    """Full complex FFT and a per-frequency loop for the gain."""
    spec = np.fft.fftn(data.astype(np.float64))
    freqs = [np.fft.fftfreq(n) for n in data.shape]
    fc = 1.0 / cutoff
    for idx in np.ndindex(*data.shape):
        f2 = sum(freqs[a][i] ** 2 for a, i in enumerate(idx))
        spec[idx] *= math.exp(-math.log(2) * f2 / fc**2)
    return np.fft.ifftn(spec).real


@pytest.mark.parametrize("shape", [(8, 8, 8), (6, 7, 9), (10, 12), (9, 9)])
def test_lowpass_matches_naive_reference(shape):
    data = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(lowpass(data, 3.5), naive_lowpass(data, 3.5), atol=2e-5)


def test_lowpass_batch_axis_and_identity():
    data = np.random.default_rng(2).normal(size=(3, 8, 8, 8)).astype(np.float32)
    batched = lowpass(data, 3.0, n_spatial=3)
    for k in range(3):
        np.testing.assert_allclose(batched[k], lowpass(data[k], 3.0), atol=1e-6)
    np.testing.assert_array_equal(lowpass(data[0], None), data[0])
    np.testing.assert_array_equal(lowpass(data[0], 0), data[0])
    # The mean (DC) is kept; white noise loses most of its variance at a 3.5-voxel cut-off.
    out = lowpass(data[0], 3.5)
    assert out.mean() == pytest.approx(float(data[0].mean()), abs=1e-5)
    assert out.var() < 0.3 * data[0].var()


def test_to_uint8_percentile_clipping():
    ramp = np.arange(1000, dtype=np.float64).reshape(20, 50)
    lo, hi = np.percentile(ramp, [1, 99])
    out = to_uint8(ramp, clip_percent=1.0)
    expected = np.round(np.clip((ramp - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(to_uint8(ramp, 1.0, invert=True), 255 - expected)
    # One hot pixel must not set the scale: with clipping the rest keeps its contrast.
    spiky = ramp.copy()
    spiky[0, 0] = 1e9
    assert np.median(to_uint8(spiky, 1.0)) > 100
    np.testing.assert_array_equal(to_uint8(np.full((4, 4), 3.0)), np.full((4, 4), 128))


def test_image_mode_single_view_and_masks():
    img = np.zeros((10, 12), np.float32)
    img[1, 9] = 1.0  # y = 1, x = 9
    v = image_views(img)
    assert list(v) == ["image"] and v["image"].shape == (10, 12)
    assert v["image"][10 - 1 - 1, 9] == 1.0  # y up, like the 3D views
    assert list(particle_views(img, 3, None)) == ["image"]
    m = np.zeros((10, 12), np.int16)
    m[1, 9] = 2
    assert mask_planes(m)["image"][8, 9] == 2
    m3 = np.zeros((8, 8, 8), np.int16)
    m3[4, 1, 6] = 1  # z = 4 (centre), y = 1, x = 6
    planes = mask_planes(m3)
    assert planes["XY"][7 - 1, 6] == 1 and planes["XZ"].sum() == 0 and planes["YZ"].sum() == 0


def test_panel_grid_places_views_in_layout():
    """Panels sit at XY top-left, XZ top-right, YZ bottom-left, projection bottom-right.

    Voxel A (x=13, y=8, z=8, bright) lies in the XY, XZ slabs and the projection; voxel B
    (x=8, y=12, z=11, dimmer) only in the YZ slab (and, dimmer than A, in the projection).
    """
    box = 16
    vol = plant((box, box, box), [(13, 8, 8)], value=2.0) + plant((box, box, box), [(8, 12, 11)])
    views = particle_views(vol, slab=4, cutoff_voxels=None)
    grid = np.asarray(montage.panel_grid(views, clip_percent=0.0))
    scale = montage.panel_scale((box, box))
    cell = int(box * scale)
    g = montage.GAP

    def panel(r, c):
        y0, x0 = g + r * (cell + g), g + c * (cell + g)
        return grid[y0 : y0 + cell, x0 : x0 + cell, 0]

    for r, c, col_voxel, row_voxel in ((0, 0, 13, 7), (0, 1, 13, 7), (1, 1, 13, 7), (1, 0, 12, 4)):
        p = panel(r, c)
        yy, xx = np.unravel_index(np.argmax(p), p.shape)
        assert int(xx // scale) == col_voxel and int(yy // scale) == row_voxel, (r, c)
    assert grid.shape == (g + 2 * (cell + g), g + 2 * (cell + g), 3)


def test_overlay_colours_only_foreground_classes():
    grey = np.full((4, 4), 100, np.uint8)
    mask = np.array([[-1, 0, 1, 2]] * 4)
    rgb = montage.overlay_mask(grey, mask)
    assert (rgb[:, :2] == 100).all()  # unlabelled and background stay grey
    for col, cls in ((2, 1), (3, 2)):
        colour = montage.MASK_COLOURS[cls - 1]
        expected = np.round((1 - montage.MASK_ALPHA) * 100 + montage.MASK_ALPHA * colour)
        np.testing.assert_array_equal(rgb[0, col], expected)
