"""STAR round trip through the CLI: ingest a RELION STAR file, then `select --format both|star` and
`predict --format star|both`; every original column comes back, read with the `starfile` package."""

from __future__ import annotations

import csv

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from typer.testing import CliRunner

from cryoal.cli.app import app
from cryoal.io.pool import open_pool

N, BOX = 12, 8
STAR = """# written by a RELION-like tool
data_general

_rlnTomoSubTomosAre2DStacks                       0

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnImageDimensionality #5
1 opticsGroup1 1.350000 8 3
2 opticsGroup2 2.700000 8 3

data_particles

loop_
_rlnTomoName #1
_rlnImageName #2
_rlnCenteredCoordinateXAngst #3
_rlnCenteredCoordinateYAngst #4
_rlnCenteredCoordinateZAngst #5
_rlnAngleRot #6
_rlnOpticsGroup #7
_rlnClassNumber #8
_myLabNote #9
"""


@pytest.fixture(scope="module")
def star_pool(tmp_path_factory):
    """A pool ingested from a STAR manifest with optics, general and unknown columns, and a model."""
    import torch

    from cryoal.learn.checkpoint import save_checkpoint
    from cryoal.models import build_model

    d = tmp_path_factory.mktemp("star")
    (d / "Subtomograms").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        with mrcfile.new(d / "Subtomograms" / f"p{i:02d}.mrc") as m:
            m.set_data(rng.standard_normal((BOX, BOX, BOX)).astype(np.float32))
            m.voxel_size = 1.35
        # labelled: rows 0, 1, 3, 4 (RELION classes 2 and 5); '""' is an empty STAR value
        cls = ("2", "5", '""')[i % 3] if i < 6 else '""'
        rows.append(f"ts_{i % 2} Subtomograms/p{i:02d}.mrc {10.5 * i:.6f} {-3.25 * i:.6f} {i:.6f} "
                    f"{i * 7.5:.6f} {1 + i % 2} {cls} note{i}")
    (d / "particles.star").write_text(STAR + "\n".join(rows) + "\n")
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(d / "particles.star"), "-o", str(d / "pool.h5")])
    assert res.exit_code == 0, res.output
    with open_pool(d / "pool.h5") as pool:
        names = list(pool.class_names)
    torch.manual_seed(0)
    model = build_model("resnet3d", (BOX,) * 3, len(names), width=4)
    save_checkpoint(d / "model.pt", model, {"mode": "subtomogram", "class_names": names,
                                            "input_shape": [BOX] * 3, "box": BOX, "voxel_size": 1.35})
    original = starfile.read(d / "particles.star", always_dict=True)
    return d, original


def _same_values(got: pd.Series, want: pd.Series) -> None:
    """Column values equal as read by starfile (numbers as numbers, empty as NaN or '')."""
    for g, w in zip(got.tolist(), want.tolist(), strict=True):
        if pd.isna(w) or w == "":
            assert pd.isna(g) or g == ""
        else:
            assert g == w


def test_select_star_keeps_every_column_and_matches_the_csv(star_pool, tmp_path):
    d, original = star_pool
    out = tmp_path / "to_label.csv"
    res = CliRunner().invoke(app, ["select", str(d / "pool.h5"), "-m", str(d / "model.pt"), "--scheme",
                                   "max-entropy", "-n", "0", "--device", "cpu", "--format", "both",
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    blocks = starfile.read(tmp_path / "to_label.star", always_dict=True)
    assert list(blocks) == ["general", "optics", "particles"]
    pd.testing.assert_frame_equal(blocks["optics"], original["optics"])
    assert int(blocks["general"]["rlnTomoSubTomosAre2DStacks"].iloc[0]) == 0  # written as a 1-row loop
    parts = blocks["particles"]
    src = original["particles"]
    assert list(parts.columns)[: len(src.columns)] == list(src.columns)  # every column, in order
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(parts) == N - 4  # rows 0,1,3,4 are labelled (class 2 or 5)
    # the STAR rows are the CSV rows, rank for rank
    assert parts["rlnCryoalParticleId"].astype(str).tolist() == [r["particle_id"] for r in rows]
    assert parts["rlnCryoalRank"].tolist() == [int(r["rank"]) for r in rows]
    np.testing.assert_array_equal(parts["rlnCryoalScore"].to_numpy(), [float(r["score"]) for r in rows])
    # each particle's original values, found through its image name
    by_image = src.set_index("rlnImageName")
    for col in src.columns:
        if col != "rlnImageName":
            _same_values(parts[col], by_image.loc[parts["rlnImageName"], col].reset_index(drop=True))


def test_predict_star_writes_class_numbers_of_the_input(star_pool, tmp_path):
    d, original = star_pool
    out = tmp_path / "pred.star"
    res = CliRunner().invoke(app, ["predict", str(d / "pool.h5"), "-m", str(d / "model.pt"), "--device",
                                   "cpu", "--format", "star", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.star"]  # no CSV with --format star
    blocks = starfile.read(out, always_dict=True)
    pd.testing.assert_frame_equal(blocks["optics"], original["optics"])
    parts = blocks["particles"]
    src = original["particles"]
    assert len(parts) == N
    assert list(parts.columns)[: len(src.columns)] == list(src.columns)
    for col in src.columns:
        if col != "rlnClassNumber":  # replaced by the prediction, in place
            _same_values(parts[col], src[col])
    with open_pool(d / "pool.h5") as pool:
        names = list(pool.class_names)
        from cryoal.learn.checkpoint import load_model
        from cryoal.learn.inference import predict_proba

        model, _ = load_model(d / "model.pt")
        probs = predict_proba(model, pool.read(np.arange(N)), "cpu")
    assert sorted(names) == ["2", "5"]  # RELION class numbers: they stay the numbers
    want = [int(names[k]) for k in probs.argmax(1)]
    assert parts["rlnClassNumber"].tolist() == want
    for k, name in enumerate(names):
        np.testing.assert_allclose(parts[f"rlnCryoalProbClass{name}"], probs[:, k], rtol=1e-6, atol=1e-7)


def test_both_formats_write_both_or_neither(star_pool, tmp_path):
    d, _ = star_pool
    csv_out = tmp_path / "pred.csv"
    res = CliRunner().invoke(app, ["predict", str(d / "pool.h5"), "-m", str(d / "model.pt"), "--device",
                                   "cpu", "--format", "both", "-o", str(csv_out)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.csv", "pred.star"]
    with open(csv_out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    parts = starfile.read(tmp_path / "pred.star", always_dict=True)["particles"]
    assert [r["particle_id"] for r in rows] == parts["rlnCryoalParticleId"].astype(str).tolist()
    bad = CliRunner().invoke(app, ["select", str(d / "pool.h5"), "-m", str(d / "model.pt"), "-n", "3",
                                   "--format", "xml", "-o", str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "--format must be one of csv, star, both (got 'xml')" in bad.output
