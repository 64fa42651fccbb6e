"""Files written before the package layout changed still load and give the same numbers.

The fixtures (tests/fixtures/legacy_*) were written by tests/fixtures/make_legacy.py with the
code of that time; legacy_expected.json holds what that code read back from them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cli

import cryoal

pytestmark = pytest.mark.usefixtures("one_omp_thread", "one_torch_thread")

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "legacy_expected.json").read_text())


@pytest.fixture
def files(tmp_path):
    """Copies of the fixtures (commands take a lock beside the pool; keep the tree clean)."""
    for name in ("legacy_pool.h5", "legacy_model.pt"):
        shutil.copyfile(FIXTURES / name, tmp_path / name)
    return tmp_path / "legacy_pool.h5", tmp_path / "legacy_model.pt"


def test_the_pool_opens_with_its_content(files):
    pool = cryoal.open_pool(files[0])
    assert pool.class_names == EXPECTED["class_names"]
    assert pool.box == EXPECTED["box"] and pool.shape == (EXPECTED["box"],) * 3
    assert len(pool) == EXPECTED["n_particles"]
    assert int((pool.labels >= 0).sum()) == EXPECTED["n_labelled"]


def test_the_checkpoint_loads_and_scores_as_before(files):
    pool = cryoal.open_pool(files[0])
    model, meta = cryoal.load_model(files[1])
    assert list(meta["class_names"]) == EXPECTED["class_names"]
    assert meta["temperature"] == pytest.approx(EXPECTED["temperature"])
    with torch.no_grad():
        entropy = cryoal.score(model, pool.read(np.arange(len(pool))), "entropy")
    assert entropy.shape == (EXPECTED["n_particles"],)
    np.testing.assert_allclose(entropy, EXPECTED["entropy"], atol=2e-6)


def test_predict_writes_the_recorded_predictions(files, tmp_path):
    out = tmp_path / "pred.csv"
    res = cli("predict", files[0], "-m", files[1], "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["particle_id"] for r in rows] == [r["particle_id"] for r in EXPECTED["predictions"]]
    assert [r["predicted_label"] for r in rows] == [r["predicted_label"] for r in EXPECTED["predictions"]]
    for got, want in zip(rows, EXPECTED["predictions"], strict=True):
        for name in EXPECTED["class_names"]:
            assert float(got[f"p_{name}"]) == pytest.approx(float(want[f"p_{name}"]), abs=2e-6)


def test_select_ranks_the_unlabelled_by_the_recorded_scores(files, tmp_path):
    out = tmp_path / "sel.csv"
    res = cli("select", files[0], "-m", files[1], "-o", out, "--scheme", "entropy", "-n", "5",
              "--device", "cpu", "--pick", "top")  # top: the recorded scores' order
    assert res.exit_code == 0, res.output
    with open(out, newline="") as f:
        picked = [r["particle_id"] for r in csv.DictReader(f)]
    pool = cryoal.open_pool(files[0])
    ids = list(pool.particle_ids)
    unlabelled = [i for i in range(len(ids)) if pool.labels[i] < 0]
    ranked = sorted(unlabelled, key=lambda i: -EXPECTED["entropy"][i])
    assert picked == [ids[i] for i in ranked[:5]]
