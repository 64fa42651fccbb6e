"""Benchmark scheme names: a score, a pick and a calibration in one name.

`<scheme>[:<pick>][:uncalibrated]`, e.g. `expected:power`, `expected:balanced:uncalibrated`:
- `<scheme>` is a `cryoal select --scheme` (the registry's names);
- `<pick>` is a `--pick` (`cryoal.scoring.picks`); without it the variant does what
  `cryoal select --scheme <scheme>` does by default (`picks.default_pick`: power-balanced, or
  cluster-power on a pool with a usable embedding, and top for `random`), so a bare name measures
  what users get; `expected:top` is the paper's rule.
  The embedding picks (`expected:cluster`, `expected:cluster-power`) and `typiclust` read the
  pool's embeddings (`cryoal pretrain`), as `select` does;
- `uncalibrated` is `--no-calibration` (raw logits instead of the fitted temperature).
`<scheme>-balanced` (the older spelling) is an alias of `<scheme>:balanced`. The name as written
is what curves.csv and the tables show.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryoal.errors import OptionError
from cryoal.scoring.picks import PICKS

BALANCED_SUFFIX = "-balanced"
UNCALIBRATED = "uncalibrated"


@dataclass(frozen=True)
class Variant:
    """One benchmark scheme: what `select` is called with."""

    name: str
    scheme: str
    pick: str | None  # None: select's default for the scheme
    calibrated: bool = True


def parse_variant(name: str, known: tuple[str, ...], batch: tuple[str, ...] | None = None) -> Variant:
    """The Variant a benchmark scheme name stands for; OptionError naming what is wrong. `batch`:
    the schemes that take no pick (default: the registry's batch schemes)."""
    if batch is None:
        from cryoal.scoring.registry import batch_schemes

        batch = batch_schemes()
    parts = name.split(":")
    calibrated = True
    if len(parts) > 1 and parts[-1] == UNCALIBRATED:
        calibrated, parts = False, parts[:-1]
    if len(parts) > 2:
        raise OptionError(f"--schemes: '{name}': expected <scheme>[:<pick>][:{UNCALIBRATED}]")
    scheme, pick = parts[0], (parts[1] if len(parts) == 2 else None)
    if pick is None and scheme.endswith(BALANCED_SUFFIX) and scheme not in known:
        scheme, pick = scheme.removesuffix(BALANCED_SUFFIX), "balanced"
    if scheme not in known:
        raise OptionError(f"--schemes: unknown scheme '{name}'; choose from {', '.join(known)}, "
                          f"optionally as <scheme>:<pick>[:{UNCALIBRATED}]")
    if pick is not None and pick not in PICKS:
        raise OptionError(f"--schemes: '{name}': unknown pick '{pick}'; choose from {', '.join(PICKS)}")
    if pick is not None and scheme in batch:
        raise OptionError(f"--schemes: '{name}': {scheme} already builds a diverse batch; "
                          "a pick applies to score-based schemes")
    return Variant(name, scheme, pick, calibrated)


__all__ = ["BALANCED_SUFFIX", "UNCALIBRATED", "Variant", "parse_variant"]
