"""Benchmark outputs: curves.csv, selections.csv, summary.csv, curves.png, run.json and the rich table.

Every file is written atomically, so Ctrl-C at any moment leaves each one either as it was or
complete.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cryoal.benchmark.metrics import aubc
from cryoal.errors import InputError
from cryoal.io.atomic import atomic_open, atomic_path

CURVE_COLUMNS = ("scheme", "seed", "cycle", "n_labeled", "accuracy", "macro_f1")
SELECTION_COLUMNS = ("scheme", "seed", "cycle", "rank", "particle_id")
SUMMARY_COLUMNS = ("scheme", "aubc_mean", "aubc_std", "final_acc_mean", "final_acc_std")


@dataclass(frozen=True)
class CurveRow:
    """One point of a learning curve: the test scores after training at `cycle`."""

    scheme: str
    seed: int
    cycle: int
    n_labeled: int
    accuracy: float
    macro_f1: float

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.scheme, self.seed, self.cycle)


@dataclass(frozen=True)
class Selection:
    """One particle picked by `scheme` after training at `cycle` (revealed for cycle + 1)."""

    scheme: str
    seed: int
    cycle: int
    rank: int
    particle_id: str


@dataclass(frozen=True)
class SchemeSummary:
    """AUBC and final accuracy of one scheme, mean and standard deviation over seeds."""

    scheme: str
    aubc_mean: float
    aubc_std: float
    final_acc_mean: float
    final_acc_std: float
    n_seeds: int


# -- CSV files ------------------------------------------------------------------------------


def _write_rows(path: Path, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


def _read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or tuple(reader.fieldnames) != tuple(columns):
                raise InputError(f"{path}: expected columns {','.join(columns)}, found {reader.fieldnames}")
            return list(reader)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None


def write_curves(path: str | os.PathLike, rows: Sequence[CurveRow]) -> None:
    """Rewrite curves.csv (atomically) with every finished point, in a stable order."""
    ordered = sorted(rows, key=lambda r: (r.seed, r.scheme, r.cycle))
    _write_rows(Path(path), CURVE_COLUMNS, (
        (r.scheme, r.seed, r.cycle, r.n_labeled, repr(r.accuracy), repr(r.macro_f1)) for r in ordered
    ))


def read_curves(path: str | os.PathLike) -> list[CurveRow]:
    """Read curves.csv back (for --resume)."""
    path = Path(path)
    out = []
    for lineno, rec in enumerate(_read_rows(path, CURVE_COLUMNS), start=2):
        try:
            out.append(CurveRow(
                rec["scheme"], int(rec["seed"]), int(rec["cycle"]), int(rec["n_labeled"]),
                float(rec["accuracy"]), float(rec["macro_f1"]),
            ))
        except (TypeError, ValueError):
            raise InputError(f"{path}:{lineno}: malformed row {rec}") from None
    return out


def write_selections(path: str | os.PathLike, rows: Sequence[Selection]) -> None:
    """Rewrite selections.csv: the ids each scheme picked at each cycle, in rank order."""
    ordered = sorted(rows, key=lambda r: (r.seed, r.scheme, r.cycle, r.rank))
    _write_rows(Path(path), SELECTION_COLUMNS, (
        (r.scheme, r.seed, r.cycle, r.rank, r.particle_id) for r in ordered
    ))


def read_selections(path: str | os.PathLike) -> list[Selection]:
    """Read selections.csv back (for --resume)."""
    path = Path(path)
    out = []
    for lineno, rec in enumerate(_read_rows(path, SELECTION_COLUMNS), start=2):
        try:
            out.append(Selection(
                rec["scheme"], int(rec["seed"]), int(rec["cycle"]), int(rec["rank"]), rec["particle_id"]
            ))
        except (TypeError, ValueError):
            raise InputError(f"{path}:{lineno}: malformed row {rec}") from None
    return out


# -- summary --------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    # sample standard deviation over seeds (ddof=1); one seed has no spread to report
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def curve_arrays(
    rows: Sequence[CurveRow], scheme: str, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_labeled, accuracy, macro_f1) of one (scheme, seed) curve, sorted by cycle."""
    pts = sorted((r for r in rows if r.scheme == scheme and r.seed == seed), key=lambda r: r.cycle)
    return (
        np.array([r.n_labeled for r in pts], dtype=np.float64),
        np.array([r.accuracy for r in pts], dtype=np.float64),
        np.array([r.macro_f1 for r in pts], dtype=np.float64),
    )


def seed_band(
    rows: Sequence[CurveRow], scheme: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(n_labeled (M,), mean (2, M), std (2, M)) over seeds of one scheme's accuracy (row 0) and
    macro-F1 (row 1) curves; None when the scheme has no rows. Seeds may have finished different
    numbers of cycles (an interrupted run): only the common part is kept."""
    seeds = sorted({r.seed for r in rows if r.scheme == scheme})
    curves = [curve_arrays(rows, scheme, s) for s in seeds]
    if not curves:
        return None
    m = min(len(c[0]) for c in curves)
    vals = np.stack([np.stack([c[1][:m], c[2][:m]]) for c in curves])  # (seeds, 2, M)
    std = vals.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(vals.shape[1:])
    return curves[0][0][:m], vals.mean(axis=0), std


def summarize(rows: Sequence[CurveRow], schemes: Sequence[str] | None = None) -> list[SchemeSummary]:
    """Per scheme: AUBC of each seed's accuracy curve and its final accuracy, mean ± std over seeds."""
    if schemes is None:
        schemes = list(dict.fromkeys(r.scheme for r in rows))
    out = []
    for scheme in schemes:
        seeds = sorted({r.seed for r in rows if r.scheme == scheme})
        areas, finals = [], []
        for seed in seeds:
            n, acc, _ = curve_arrays(rows, scheme, seed)
            areas.append(aubc(n, acc))
            finals.append(acc[-1])
        a_mean, a_std = _mean_std(areas)
        f_mean, f_std = _mean_std(finals)
        out.append(SchemeSummary(scheme, a_mean, a_std, f_mean, f_std, len(seeds)))
    return out


def write_summary(path: str | os.PathLike, summary: Sequence[SchemeSummary]) -> None:
    """Write summary.csv (atomically)."""
    _write_rows(Path(path), SUMMARY_COLUMNS, (
        (s.scheme, *(f"{v:.6f}" for v in (s.aubc_mean, s.aubc_std, s.final_acc_mean, s.final_acc_std)))
        for s in summary
    ))


def summary_table(summary: Sequence[SchemeSummary], title: str = "AL benchmark (test split)"):
    """A rich Table: one row per scheme, best mean AUBC marked."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("scheme")
    table.add_column("AUBC", justify="right")
    table.add_column("final accuracy", justify="right")
    table.add_column("seeds", justify="right")
    best = max((s.aubc_mean for s in summary if not math.isnan(s.aubc_mean)), default=math.nan)
    for s in summary:
        mark = " *" if s.aubc_mean == best else ""
        table.add_row(
            s.scheme, f"{s.aubc_mean:.3f} ± {s.aubc_std:.3f}{mark}",
            f"{s.final_acc_mean:.3f} ± {s.final_acc_std:.3f}", str(s.n_seeds),
        )
    return table


# -- plot -----------------------------------------------------------------------------------


def plot_curves(path: str | os.PathLike, rows: Sequence[CurveRow], schemes: Sequence[str] | None = None,
                title: str = "") -> None:
    """curves.png: test accuracy and macro-F1 vs labels, mean ± std over seeds, one line per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if schemes is None:
        schemes = list(dict.fromkeys(r.scheme for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for k, scheme in enumerate(schemes):
        band = seed_band(rows, scheme)
        if band is None:
            continue
        n, means, stds = band
        color = f"C{k % 10}"
        for ax, mean, std in zip(axes, means, stds, strict=True):
            ax.plot(n, mean, "-o", ms=3, color=color, label=scheme)
            ax.fill_between(n, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
    for ax, name in zip(axes, ("test accuracy", "test macro-F1"), strict=True):
        ax.set_xlabel("labelled particles")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# -- run.json -------------------------------------------------------------------------------


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Write a JSON document atomically (NaN written as null)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    with atomic_open(path, "w") as fh:
        json.dump(clean(data), fh, indent=2)
        fh.write("\n")


def summary_dicts(summary: Sequence[SchemeSummary]) -> list[dict]:
    """The summary as plain dicts (for run.json)."""
    return [asdict(s) for s in summary]
