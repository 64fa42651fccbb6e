"""The encoder file `cryoal pretrain -o ENCODER` writes: a pretrained trunk and what it was trained on.

A plain `torch.save` dict, loadable with `weights_only=True`, written atomically:
`{"kind": "cryoal-encoder", "format_version": 1, "arch", "width", "mode", "input_shape", "box",
"embedding_dim", "pool_digest", "pretrain": {...}, "state_dict": trunk weights}`.

`encoder_digest(path)` (16 hex characters of the file's sha256) names an encoder: the pool's
embedding and a model fine-tuned from it (`train --init`, checkpoint key `encoder_digest`) carry it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cryoal.errors import CryoalError
from cryoal.io.atomic import atomic_path
from cryoal.learn.checkpoint import plain

KIND = "cryoal-encoder"
FORMAT_VERSION = 1
REQUIRED = ("arch", "width", "mode", "input_shape", "box", "embedding_dim", "pool_digest", "state_dict")


def encoder_digest(path: str | os.PathLike) -> str:
    """First 16 hex characters of the sha256 of the encoder file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def save_encoder(path: str | os.PathLike, model: nn.Module, *, mode: str, pool_digest: str,
                 embedding_dim: int, pretrain: dict[str, Any]) -> str:
    """Write `model`'s trunk (a classifier built by `build_model`) atomically; returns the digest."""
    shape = [int(s) for s in model.input_shape]
    record = {
        "kind": KIND, "format_version": FORMAT_VERSION, "arch": str(model.arch),
        "width": int(model.arch_kwargs.get("width") or default_width(model)),
        "mode": mode, "input_shape": shape, "box": shape[-1], "embedding_dim": int(embedding_dim),
        "pool_digest": pool_digest, "pretrain": plain(pretrain),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.trunk.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(record, tmp)
    return encoder_digest(path)


def default_width(model: nn.Module) -> int:
    """The width the arch used when none was given (its constructor's default)."""
    import inspect

    return int(inspect.signature(type(model)).parameters["width"].default)


def read_encoder(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check an encoder file; CryoalError (one line, naming the file) otherwise."""
    p = Path(path)
    if not p.is_file():
        raise CryoalError(f"{p}: encoder file not found" if not p.exists() else f"{p}: is not a file")
    try:
        record = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # torch's unpickling text means nothing to a user
        raise CryoalError(f"{p}: truncated or not a cryoal encoder; pass the .pt file that "
                          "`cryoal pretrain -o` wrote") from None
    if not isinstance(record, dict) or record.get("kind") != KIND:
        raise CryoalError(f"{p}: not a cryoal encoder; pass the file `cryoal pretrain -o` wrote")
    if record.get("format_version") != FORMAT_VERSION:
        raise CryoalError(f"{p}: encoder format version {record.get('format_version')}; this cryoal reads "
                          f"version {FORMAT_VERSION}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise CryoalError(f"{p}: corrupt encoder, missing {', '.join(missing)}")
    return record


def check_encoder_fits(record: dict[str, Any], path: str | os.PathLike, *, mode: str,
                       input_shape: tuple[int, ...], arch: str | None = None) -> None:
    """CryoalError naming the encoder when it cannot serve a pool of `mode` and `input_shape`, or `arch`."""
    shape = tuple(int(s) for s in record["input_shape"])
    if record["mode"] != mode:
        raise CryoalError(f"{path}: the encoder was pretrained in {record['mode']} mode, but the pool is in "
                          f"{mode} mode")
    if shape != tuple(int(s) for s in input_shape):
        raise CryoalError(f"{path}: the encoder was pretrained on particles of shape {shape} (box "
                          f"{record['box']}), but the pool holds shape {tuple(input_shape)}; pretrain on "
                          "this pool")
    if arch is not None and arch != record["arch"]:
        raise CryoalError(f"{path}: the encoder is a {record['arch']} trunk, not {arch}; drop --arch or "
                          f"pass --arch {record['arch']}")


def build_from_encoder(record: dict[str, Any], path: str | os.PathLike, n_classes: int) -> nn.Module:
    """A fresh classifier of the encoder's arch and width whose trunk holds the encoder's weights
    (the head stays random: a function of the torch seed)."""
    from cryoal.modes import get_mode

    mode = get_mode(record["mode"])
    model = mode.build_model(record["arch"], record["input_shape"], n_classes, width=int(record["width"]))
    try:
        model.trunk.load_state_dict(record["state_dict"], strict=True)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CryoalError(f"{path}: corrupt encoder, weights do not fit a {record['arch']} trunk "
                          f"({first[:160]})") from None
    return model


def freeze_trunk(model: nn.Module) -> nn.Module:
    """Make `model` a linear probe: its trunk gets no gradient, and `fit` keeps the trunk's
    BatchNorm in eval mode and its statistics as loaded (the `frozen_trunk` flag). Returns `model`.

    Idempotent; a model loaded from saved weights (a warm start) must be frozen again, as the
    flag and `requires_grad` are not part of its weights."""
    model.trunk.requires_grad_(False)
    model.frozen_trunk = True
    return model


__all__ = ["FORMAT_VERSION", "KIND", "build_from_encoder", "check_encoder_fits", "encoder_digest",
           "freeze_trunk", "read_encoder", "save_encoder"]
