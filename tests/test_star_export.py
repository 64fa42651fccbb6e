"""STAR export (cryoal.export): every original column kept, RELION blocks written back, read by `starfile`.

The end-to-end round trip through `ingest`, `select` and `predict` is in test_star_export_cli.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import starfile

from cryoal.export import (
    class_numbers,
    format_float,
    particle_columns,
    star_path_for,
    write_predictions_star,
    write_selection_star,
)
from cryoal.io.pool import PoolWriter, open_pool

OPTICS = {
    "rlnOpticsGroup": ["1", "2"], "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
    "rlnImagePixelSize": ["1.35", "2.7"], "rlnImageSize": ["8", "8"], "rlnImageDimensionality": ["3", "3"],
}


def _star_pool(path, n=5, names=("2", "5")):
    """A pool as ingest makes it from a RELION STAR file: meta columns in manifest order, optics kept."""
    rng = np.random.default_rng(0)
    meta = {  # deliberately not alphabetical: the export must keep this order
        "rlnTomoName": [f"ts_{i % 2}" for i in range(n)],
        "rlnImageName": [f"Subtomograms/p{i}.mrc" for i in range(n)],
        "rlnCenteredCoordinateXAngst": [f"{10.5 * i}" for i in range(n)],
        "rlnOpticsGroup": ["1", "2", "1", "2", "1"][:n],
        "rlnClassNumber": ["2", "5", "", "", "2"][:n],
        "myNote": [f"note {i}" for i in range(n)],  # a value with a space must survive quoting
    }
    with PoolWriter(path, shape=(8, 8, 8), class_names=list(names), voxel_size=1.35, compression=None) as w:
        w.add(rng.standard_normal((n, 8, 8, 8), dtype=np.float32), [f"id{i}" for i in range(n)],
              [f"/data/Subtomograms/p{i}.mrc" for i in range(n)], tomos=meta["rlnTomoName"], meta=meta)
        w.add_star_blocks("/data/particles.star", {"general": {"rlnTomoSubTomosAre2DStacks": ["0"]},
                                                   "optics": OPTICS})
    return meta


def _plain_pool(path, n=4):
    """A pool made from bare MRC files and a stack: no STAR columns at all."""
    rng = np.random.default_rng(0)
    with PoolWriter(path, shape=(8, 8, 8), class_names=["ribo", "proteasome"], voxel_size=10.0,
                    compression=None) as w:
        coords = np.array([[1, 2, 3], [4.5, 5, 6], [np.nan] * 3, [7, 8, 9]], np.float32)[:n]
        w.add(rng.standard_normal((n, 8, 8, 8), dtype=np.float32), [f"q{i}" for i in range(n)],
              ["/d/a.mrc", "/d/stack.mrcs#1", "/d/stack.mrcs#2", "/d/b.mrc"][:n],
              tomos=["t1", "t1", "", "t2"][:n], coords=coords)


def test_class_numbers_keep_relion_numbering():
    assert class_numbers(["2", "5", "7"]) == [2, 5, 7]       # names from an rlnClassNumber column
    assert class_numbers(["ribo", "proteasome"]) == [1, 2]   # names: position from 1
    assert class_numbers(["1", "x"]) == [1, 2]
    assert class_numbers(["0", "1"]) == [1, 2]               # 0 is no RELION class number
    assert class_numbers(["3", "3"]) == [1, 2]


def test_format_float():
    assert format_float(0.1234567891) == "0.1234568"
    assert format_float(np.float32(2.5)) == "2.5"
    assert format_float(math.nan) == ""


def test_star_path_for():
    assert star_path_for("out/to_label.csv").as_posix() == "out/to_label.star"
    assert star_path_for("sel").as_posix() == "sel.star"


def test_particle_columns_keep_manifest_columns_in_order(tmp_path):
    path = tmp_path / "pool.h5"
    meta = _star_pool(path)
    with open_pool(path) as pool:
        table = particle_columns(pool, np.array([3, 0]))
    assert list(table) == list(meta)  # nothing added: the manifest had image, tomo and coordinates
    for col, values in meta.items():
        assert table[col] == [values[3], values[0]]


def test_particle_columns_fill_in_what_a_bare_pool_knows(tmp_path):
    path = tmp_path / "pool.h5"
    _plain_pool(path)
    with open_pool(path) as pool:
        table = particle_columns(pool, np.arange(4))
    assert table["rlnImageName"] == ["/d/a.mrc", "1@/d/stack.mrcs", "2@/d/stack.mrcs", "/d/b.mrc"]
    assert table["rlnTomoName"] == ["t1", "t1", "", "t2"]
    assert table["rlnCoordinateX"] == ["1", "4.5", "", "7"]
    assert table["rlnCoordinateZ"] == ["3", "6", "", "9"]


def test_selection_star_read_by_starfile(tmp_path):
    path = tmp_path / "pool.h5"
    meta = _star_pool(path)
    out = tmp_path / "sel.star"
    order = np.array([4, 1, 2])
    with open_pool(path) as pool:
        warnings = write_selection_star(
            out, pool, order, scheme="entropy", scores=["0.9", "0.5", "0.25"], predicted=[1, 0, 1],
            confidence=["0.8", "0.7", "0.6"], class_names=pool.class_names,
        )
    assert warnings == []
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["general", "optics", "particles"]
    assert int(blocks["general"]["rlnTomoSubTomosAre2DStacks"].iloc[0]) == 0
    optics = blocks["optics"]
    assert optics["rlnImagePixelSize"].tolist() == [1.35, 2.7]
    assert optics["rlnOpticsGroupName"].tolist() == OPTICS["rlnOpticsGroupName"]
    parts = blocks["particles"]
    assert list(parts.columns) == [*meta, "rlnCryoalParticleId", "rlnCryoalRank", "rlnCryoalScore",
                                   "rlnCryoalScheme", "rlnCryoalPredictedClass", "rlnCryoalPredictedName",
                                   "rlnCryoalConfidence"]
    assert parts["rlnCryoalParticleId"].tolist() == ["id4", "id1", "id2"]
    assert parts["rlnCryoalRank"].tolist() == [1, 2, 3]
    assert parts["rlnCryoalScore"].tolist() == [0.9, 0.5, 0.25]
    assert parts["rlnCryoalPredictedClass"].tolist() == [5, 2, 5]  # class names "2","5" keep their numbers
    assert parts["rlnImageName"].tolist() == [meta["rlnImageName"][i] for i in order]
    assert parts["myNote"].tolist() == ["note 4", "note 1", "note 2"]
    assert parts["rlnCenteredCoordinateXAngst"].tolist() == [42.0, 10.5, 21.0]
    # an empty original value comes back empty (starfile reads '""' as an empty string or NaN)
    assert pd.isna(parts["rlnClassNumber"].iloc[2]) or parts["rlnClassNumber"].iloc[2] == ""


def test_prediction_star_writes_rln_class_number(tmp_path):
    path = tmp_path / "pool.h5"
    _plain_pool(path)
    out = tmp_path / "pred.star"
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    with open_pool(path) as pool:
        write_predictions_star(out, pool, np.arange(4), probs, pool.class_names)
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["general", "optics", "particles"]
    optics = blocks["optics"]  # synthesised from the pool: voxel size and box
    assert optics["rlnImagePixelSize"].tolist() == [10.0] and optics["rlnImageSize"].tolist() == [8]
    parts = blocks["particles"]
    assert parts["rlnClassNumber"].tolist() == [1, 2, 1, 2]
    assert parts["rlnCryoalClassName"].tolist() == ["ribo", "proteasome", "ribo", "proteasome"]
    np.testing.assert_allclose(parts["rlnMaxValueProbDistribution"], [0.9, 0.8, 0.6, 0.7], rtol=1e-6)
    np.testing.assert_allclose(parts["rlnCryoalProbClass1"], probs[:, 0], rtol=1e-6)
    np.testing.assert_allclose(parts["rlnCryoalProbClass2"], probs[:, 1], rtol=1e-6)
    assert parts["rlnOpticsGroup"].tolist() == [1, 1, 1, 1]
    assert parts["rlnImageName"].tolist()[1] == "1@/d/stack.mrcs"


def test_prediction_star_replaces_the_manifest_class_in_place(tmp_path):
    path = tmp_path / "pool.h5"
    meta = _star_pool(path)
    out = tmp_path / "pred.star"
    probs = np.tile([[0.3, 0.7]], (5, 1))
    with open_pool(path) as pool:
        write_predictions_star(out, pool, np.arange(5), probs, pool.class_names)
    parts = starfile.read(out, always_dict=True)["particles"]
    assert list(parts.columns)[: len(meta)] == list(meta)  # same position as in the manifest
    assert parts["rlnClassNumber"].tolist() == [5] * 5
    assert "rlnCryoalProbClass2" in parts and "rlnCryoalProbClass5" in parts


def test_conflicting_optics_from_two_manifests_are_kept_and_reported(tmp_path):
    path = tmp_path / "pool.h5"
    _star_pool(path)
    with PoolWriter(path, append=True) as w:
        w.add(np.zeros((1, 8, 8, 8), np.float32) + 1, ["extra"], ["/e.mrc"], meta={"rlnOpticsGroup": ["1"]})
        w.add_star_blocks("/other/particles.star", {"optics": {**OPTICS, "rlnImagePixelSize": ["9", "2.7"]}})
    with open_pool(path) as pool:
        assert list(pool.star_blocks) == ["/data/particles.star", "/other/particles.star"]
        warnings = write_selection_star(
            tmp_path / "s.star", pool, np.array([5]), scheme="random", scores=["1"], predicted=[0],
            confidence=["1"], class_names=pool.class_names,
        )
    assert len(warnings) == 1 and "optics group 1 differs" in warnings[0]
    optics = starfile.read(tmp_path / "s.star", always_dict=True)["optics"]
    assert optics["rlnImagePixelSize"].tolist() == [1.35, 2.7, 9.0]  # identical rows once, others kept
