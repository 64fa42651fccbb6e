"""Checkpoint round trip (weights_only=True), metadata, and every way a checkpoint can be bad."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

import cryoal
from cryoal.errors import CryoalError
from cryoal.io.pool import PoolWriter, open_pool
from cryoal.learn.checkpoint import FORMAT_VERSION, check_model_matches_pool, load_model, save_checkpoint
from cryoal.models import build_model

KEYS = {
    "format_version", "arch", "mode", "class_names", "input_shape", "box", "voxel_size", "n_classes",
    "state_dict", "metrics", "cryoal_version", "arch_kwargs", "temperature",
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model_and_meta():
    torch.manual_seed(0)
    model = build_model("rb3d", (12, 12, 12), 3, width=8)
    with torch.no_grad():  # non-default BN statistics, so a lost buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    meta = {
        "mode": "subtomogram", "class_names": ["a", "b", "c"], "input_shape": (12, 12, 12), "box": 12,
        "voxel_size": 10.5,
        "metrics": {"val_accuracy": np.float64(0.75), "confusion_matrix": np.eye(3, dtype=np.int64),
                    "per_class_accuracy": {"a": np.float32(0.5), "b": None}, "loss": math.nan},
    }
    return model, meta


def test_round_trip_weights_only(tmp_path) -> None:
    model, meta = _model_and_meta()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == KEYS
    assert raw["format_version"] == FORMAT_VERSION and raw["arch"] == "rb3d"
    assert raw["input_shape"] == [12, 12, 12] and raw["n_classes"] == 3 and raw["box"] == 12
    assert raw["arch_kwargs"] == {"width": 8}
    assert raw["metrics"]["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert type(raw["metrics"]["val_accuracy"]) is float

    loaded, info = cryoal.load_model(path)  # the public, lazily imported API
    assert not loaded.training
    assert "state_dict" not in info and info["class_names"] == ["a", "b", "c"] and info["voxel_size"] == 10.5
    assert info["metrics"]["per_class_accuracy"] == {"a": 0.5, "b": None}
    model.eval()
    x = torch.randn(4, 1, 12, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_save_is_atomic(tmp_path, monkeypatch) -> None:
    model, meta = _model_and_meta()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, model, meta)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no temporary left behind


def test_output_dir_missing(tmp_path) -> None:
    model, meta = _model_and_meta()
    with pytest.raises(CryoalError, match="does not exist"):
        save_checkpoint(tmp_path / "nope" / "m.pt", model, meta)


def _write_record(path, **changes) -> None:
    model, meta = _model_and_meta()
    save_checkpoint(path, model, meta)
    raw = torch.load(path, weights_only=True)
    raw.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del raw[k]
    torch.save(raw, path)


def test_bad_checkpoints(tmp_path) -> None:
    with pytest.raises(CryoalError, match="model file not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(CryoalError, match="is a directory"):
        load_model(tmp_path)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CryoalError, match="garbage.pt: truncated or not a cryoal checkpoint"):
        load_model(garbage)

    model, meta = _model_and_meta()
    good = tmp_path / "good.pt"
    save_checkpoint(good, model, meta)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CryoalError, match="truncated.pt: truncated or not a cryoal checkpoint") as info:
        load_model(truncated)
    message = str(info.value)  # one short line saying what to do, none of torch's internal text
    assert "\n" not in message and len(message) - len(str(truncated)) < 150 and "cryoal train -o" in message
    assert "miniz" not in message and "internal" not in message

    pool = tmp_path / "pool.h5"  # `select -m pool.h5`: the file type is named, not UnpicklingError
    with h5py.File(pool, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(CryoalError, match="pool.h5: an HDF5 file .a pool.., not a cryoal checkpoint") as info:
        load_model(pool)
    assert "Unpickling" not in str(info.value)

    not_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(CryoalError, match="no format_version"):
        load_model(not_dict)

    v3 = tmp_path / "v3.pt"
    _write_record(v3, format_version=3)
    with pytest.raises(CryoalError, match="format version 3"):
        load_model(v3)

    no_arch = tmp_path / "no_arch.pt"
    _write_record(no_arch, arch=None)
    with pytest.raises(CryoalError, match="missing arch"):
        load_model(no_arch)

    wrong_weights = tmp_path / "wrong.pt"
    _write_record(wrong_weights, arch="resnet3d")
    with pytest.raises(CryoalError, match="weights do not fit the 'resnet3d' model"):
        load_model(wrong_weights)

    unknown_mode = tmp_path / "mode.pt"
    _write_record(unknown_mode, mode="volumetric")
    with pytest.raises(CryoalError, match="mode 'volumetric' is not supported"):
        load_model(unknown_mode)

    # code objects are refused by weights_only loading: a checkpoint never executes code
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": np.float64}, evil)
    with pytest.raises(CryoalError, match="evil.pt"):
        load_model(evil)


def _pool(path, mode: str, shape: tuple[int, ...]) -> None:
    with PoolWriter(path, mode=mode, shape=shape, class_names=["a", "b", "c"]) as w:
        w.add(np.zeros((2, *shape), np.float32), ["p0", "p1"], ["s0", "s1"])


def test_check_model_matches_pool(tmp_path) -> None:
    _, meta = _model_and_meta()
    meta = {**meta, "input_shape": [12, 12, 12]}
    _pool(tmp_path / "ok.h5", "subtomogram", (12, 12, 12))
    _pool(tmp_path / "box.h5", "subtomogram", (16, 16, 16))
    _pool(tmp_path / "img.h5", "image", (12, 12))
    with open_pool(tmp_path / "ok.h5") as p:
        check_model_matches_pool(meta, p)
    with open_pool(tmp_path / "box.h5") as p, pytest.raises(CryoalError) as err:
        check_model_matches_pool(meta, p)
    assert "(12, 12, 12)" in str(err.value) and "(16, 16, 16)" in str(err.value)
    assert "box.h5" in str(err.value)
    with open_pool(tmp_path / "img.h5") as p, pytest.raises(CryoalError) as err:
        check_model_matches_pool(meta, p)
    assert "subtomogram mode" in str(err.value) and "image mode" in str(err.value)
