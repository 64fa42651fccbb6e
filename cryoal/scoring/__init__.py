"""Scoring: which particles to label next.

`score(model, batch, scheme)` gives, for one batch, the scores `cryoal select` writes.
The schemes live in `registry.SCHEMES`; the gradient-norm engine is `gradnorm.py` over `gram.py`;
how a batch is drawn from the scores is `picks.py`.

The public names are loaded on first use (from `api.py` and `registry.py`), so that importing a
torch-free submodule such as `cryoal.scoring.picks` (the CLI does, for its help text) does not
import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMES", "score", "get_scheme", "as_model_input", "model_device"]
_FROM_API = ("score", "as_model_input", "model_device")
_FROM_REGISTRY = ("SCHEMES", "get_scheme", "BatchScheme", "ScoreContext", "ScoreScheme")


def __getattr__(name: str) -> Any:
    if name in _FROM_API:
        from cryoal.scoring import api

        return getattr(api, name)
    if name in _FROM_REGISTRY:
        from cryoal.scoring import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'cryoal.scoring' has no attribute {name!r}")
