"""Simulated membranes: the images, masks and files the segmentation examples start from."""

from __future__ import annotations

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.io.images import read_image, read_mask
from cryoal.io.tables import read_table
from cryoal.simulate.membranes import LEAFLET_SEPARATION, membrane_image, simulate_membranes


def test_membranes_are_deterministic_and_masks_mark_the_bilayer():
    a_img, a_mask = simulate_membranes(6, 32, 2, snr=1.0, seed=3)
    b_img, b_mask = simulate_membranes(6, 32, 2, snr=1.0, seed=3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert not np.array_equal(a_img, simulate_membranes(6, 32, 2, snr=1.0, seed=4)[0])
    assert set(np.unique(a_mask)) <= {0, 1}
    # noiseless: the dark density sits on the membrane pixels
    rng = np.random.default_rng(0)
    clean, mask = membrane_image(rng, (48, 48), 2)
    assert mask.any()
    assert clean[mask == 1].mean() < 0.2 * clean[mask == 0].mean() - 0.1
    assert LEAFLET_SEPARATION > 0


def test_3d_patches():
    img, mask = simulate_membranes(2, 16, 3, snr=2.0, seed=0)
    assert img.shape == mask.shape == (2, 16, 16, 16)
    assert img.dtype == np.float32 and mask.dtype == np.int16


def test_simulate_membranes_cli_writes_manifest_and_truth(tmp_path):
    out = tmp_path / "mem"
    res = CliRunner().invoke(app, ["simulate", str(out), "--membranes", "5", "--box", "16", "--snr", "1",
                                   "--seed-labels", "2"])
    assert res.exit_code == 0, res.output
    manifest = read_table(out / "images.csv")
    truth = read_table(out / "truth_masks.csv")
    assert manifest["particle_id"] == truth["particle_id"] == [f"mem{i:04d}" for i in range(1, 6)]
    assert [bool(m) for m in manifest["mask_path"]] == [True, True, False, False, False]
    first_mask = read_mask(out / truth["mask_path"][0], kind="image")
    assert first_mask.shape == read_image(out / manifest["path"][0]).shape == (16, 16)
    assert np.asarray(Image.open(out / truth["mask_path"][0])).dtype == np.uint8
    res = CliRunner().invoke(app, ["simulate", str(out), "--membranes", "5"])
    assert res.exit_code == 1 and "not empty" in res.output
