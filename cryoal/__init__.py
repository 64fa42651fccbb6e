"""cryoal: active learning for cryo-ET subtomogram classification.

Public API (DESIGN.md section 5): `open_pool`, `load_model`, `score`. Torch is imported only
when `load_model` or `score` is first used.
"""

from __future__ import annotations

from cryoal._version import __version__
from cryoal.io.pool import open_pool

__all__ = ["open_pool", "load_model", "score", "__version__"]


def __getattr__(name: str):
    if name == "load_model":
        from cryoal.learn.checkpoint import load_model

        return load_model
    if name == "score":
        from cryoal.scoring import score

        return score
    raise AttributeError(f"module 'cryoal' has no attribute {name!r}")
