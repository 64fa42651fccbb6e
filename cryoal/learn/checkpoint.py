"""Checkpoints (DESIGN.md section 5): a plain `torch.save` dict, loadable with `weights_only=True`.

Keys: format_version (2), arch, mode, class_names, input_shape (one particle, no channel), box,
voxel_size, n_classes, state_dict, metrics, cryoal_version, arch_kwargs, temperature (version 2:
the fitted softmax temperature, `cryoal.learn.calibration`; a version-1 file loads uncalibrated, T = 1,
with one warning line). Only plain Python types
and tensors are stored, so `torch.load(path, weights_only=True)` reads it without executing code.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cryoal.errors import CryoalError
from cryoal.io.atomic import atomic_path

if TYPE_CHECKING:
    from cryoal.io.pool import Pool

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no temperature
REQUIRED_KEYS = ("format_version", "arch", "mode", "class_names", "input_shape", "n_classes", "state_dict")


def plain(value: Any) -> Any:
    """Convert numpy/torch scalars and arrays, tuples and nested containers to plain Python types."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return plain(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return plain(value.tolist())
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict) -> None:
    """Write `model` and its metadata to `path` atomically.

    `meta` must give `mode`, `class_names`, `input_shape`; `box`, `voxel_size`, `metrics` are
    recommended. `arch`, `arch_kwargs`, `n_classes` default to what `build_model` recorded on the model.
    """
    from cryoal._version import __version__
    from cryoal.learn.calibration import temperature_of

    meta = dict(meta)
    for key in ("mode", "class_names", "input_shape"):
        if key not in meta:
            raise ValueError(f"checkpoint metadata needs '{key}'")
    input_shape = [int(s) for s in meta["input_shape"]]
    record = {
        "format_version": FORMAT_VERSION,
        "arch": str(meta.get("arch", getattr(model, "arch", ""))),
        "mode": str(meta["mode"]),
        "class_names": [str(c) for c in meta["class_names"]],
        "input_shape": input_shape,
        "box": int(meta.get("box", input_shape[-1])),
        "voxel_size": float(meta.get("voxel_size", math.nan)),
        "n_classes": int(meta.get("n_classes", getattr(model, "n_classes", len(meta["class_names"])))),
        "metrics": plain(meta.get("metrics", {})),
        "cryoal_version": __version__,
        "arch_kwargs": plain(meta.get("arch_kwargs", getattr(model, "arch_kwargs", {}))),
        "temperature": float(meta.get("temperature", temperature_of(model))),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    if not record["arch"]:
        raise ValueError("checkpoint metadata needs 'arch' (the model was not made by build_model)")
    for key, value in meta.items():  # keep any extra metadata (e.g. training settings), made plain
        if key not in record and key != "state_dict":
            record[key] = plain(value)
    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def save_weights(path: str | os.PathLike, model: nn.Module, extra: dict | None = None) -> None:
    """Write a bare weight state atomically: the state dict, the fitted temperature and `extra`
    (plain values). The benchmark keeps these between cycles; a user's model is `save_checkpoint`."""
    from cryoal.learn.calibration import temperature_of

    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "temperature": temperature_of(model), **(extra or {})},
                   tmp)


def load_weights(path: str | os.PathLike, model: nn.Module) -> dict:
    """Load a `save_weights` state into `model` (its temperature too: a resumed run scores as the
    first did); returns the whole saved dict."""
    from cryoal.learn.calibration import set_temperature

    blob = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(blob["state_dict"])
    set_temperature(model, float(blob.get("temperature", 1.0)))
    return blob


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def unreadable_checkpoint(path: Path) -> str:
    """The one-line error for a file torch cannot load: what it is, and what to pass instead."""
    with open(path, "rb") as fh:
        head = fh.read(len(_HDF5_MAGIC))
    if head == _HDF5_MAGIC:
        return (f"{path}: an HDF5 file (a pool?), not a cryoal checkpoint; -m takes the .pt file "
                "that `cryoal train -o` wrote")
    return (f"{path}: truncated or not a cryoal checkpoint; pass the .pt file that `cryoal train -o` "
            "wrote (train again if it was cut short)")


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """Load and validate the raw checkpoint dict; CryoalError on a missing, corrupt or foreign file."""
    p = Path(path)
    if not p.exists():
        raise CryoalError(f"{p}: model file not found")
    if p.is_dir():
        raise CryoalError(f"{p}: is a directory, not a model file")
    try:
        record = torch.load(p, map_location=device, weights_only=True)
    except Exception:  # torch's text (miniz, unpickling) means nothing to a user: say what the file is
        raise CryoalError(unreadable_checkpoint(p)) from None
    if not isinstance(record, dict) or "format_version" not in record:
        raise CryoalError(f"{p}: not a cryoal checkpoint (no format_version)")
    if record["format_version"] not in READABLE_VERSIONS:
        raise CryoalError(
            f"{p}: checkpoint format version {record['format_version']}; "
            f"this cryoal reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise CryoalError(f"{p}: corrupt checkpoint, missing {', '.join(missing)}")
    return record


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a checkpoint: returns `(model in eval mode on device, metadata)`.

    The metadata is the checkpoint dict without `state_dict` (class_names, box, mode, input_shape,
    metrics, ...). Raises CryoalError on a missing/corrupt file or an unknown mode/arch.
    """
    from cryoal.learn.calibration import set_temperature
    from cryoal.modes import get_mode

    record = read_checkpoint(path, device)
    mode = get_mode(record["mode"])
    try:
        kwargs = dict(record.get("arch_kwargs") or {})
        model = mode.build_model(record["arch"], record["input_shape"], record["n_classes"], **kwargs)
        model.load_state_dict(record["state_dict"], strict=True)
    except CryoalError as exc:
        raise CryoalError(f"{path}: {exc}") from None
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CryoalError(
            f"{path}: corrupt checkpoint, weights do not fit the '{record['arch']}' model ({first[:160]})"
        ) from None
    model.to(device)
    model.eval()
    meta = {k: v for k, v in record.items() if k != "state_dict"}
    temperature = _temperature(record, path)
    set_temperature(model, temperature)
    meta["temperature"] = temperature
    return model, meta


def _temperature(record: dict, path: str | os.PathLike) -> float:
    """The checkpoint's temperature; 1.0 (one warning line on stderr) for a version-1 file."""
    import sys

    if "temperature" not in record:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: one line, from rank 0
            print(f"warning: {path}: checkpoint format version {record['format_version']} has no fitted "
                  "temperature; probabilities are uncalibrated (retrain to calibrate)", file=sys.stderr)
        return 1.0
    t = float(record["temperature"])
    if not (t > 0 and math.isfinite(t)):
        raise CryoalError(f"{path}: corrupt checkpoint, temperature {t} is not a positive number")
    return t


def check_model_matches_pool(meta: dict, pool) -> None:
    """Raise CryoalError if a model (its checkpoint metadata) cannot read this pool's particles."""
    shape = tuple(int(s) for s in meta["input_shape"])
    if meta["mode"] != pool.mode:
        raise CryoalError(
            f"{pool.path}: the model was trained in {meta['mode']} mode on particles of shape {shape}, "
            f"but this pool is in {pool.mode} mode (shape {tuple(pool.shape)})"
        )
    if len(shape) != len(pool.shape):  # e.g. 3D patches given to a 2D U-Net
        raise CryoalError(
            f"{pool.path}: a {len(shape)}D model (trained on shape {shape}) cannot read this pool's "
            f"{len(pool.shape)}D data (shape {tuple(pool.shape)}); train a model on this pool"
        )
    if shape != tuple(pool.shape):
        raise CryoalError(
            f"{pool.path}: the model was trained on particles of shape {shape} (box {meta.get('box')}), "
            f"but this pool holds shape {tuple(pool.shape)} (box {pool.box}); re-ingest with --box "
            f"{shape[-1]} or train a model on this pool"
        )


@contextlib.contextmanager
def model_and_pool(model_path: str | os.PathLike, pool_path: str | os.PathLike,
                   device: str | torch.device = "cpu") -> Iterator[tuple[nn.Module, dict, Pool]]:
    """The prologue of select and predict: load the model onto `device`, open the pool and check
    that they fit each other (CryoalError otherwise); yields (model, metadata, pool), and the pool
    is closed after the block."""
    from cryoal.io.pool import open_pool

    model, meta = load_model(model_path, device=device)
    with open_pool(pool_path) as pool:
        check_model_matches_pool(meta, pool)
        yield model, meta, pool


__all__ = [
    "FORMAT_VERSION", "check_model_matches_pool", "load_model", "load_weights", "model_and_pool", "plain",
    "read_checkpoint", "save_checkpoint", "save_weights",
]
