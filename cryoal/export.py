"""STAR export of ranked selections (`select --format star`) and predictions (`predict --format star`).

The output is a RELION 5 style particle STAR file that the next tool in a pipeline reads:

- `data_general` and `data_optics` (and any other non-particle block) come back as they were
  in the STAR manifests the pool was ingested from (`Pool.star_blocks`). A pool made without a
  STAR file gets a minimal optics block (`rlnOpticsGroup` 1, `rlnImagePixelSize` = the pool's
  voxel size, `rlnImageSize` = the box, `rlnImageDimensionality`) when its voxel size is known,
  and subtomogram pools a `data_general` block with `rlnTomoSubTomosAre2DStacks` 0.
- `data_particles` has one row per exported particle with every original column of that
  particle, verbatim and in the manifest's order (the pool's `meta/<column>` datasets), then the
  columns cryoal knows but the manifest lacked (`rlnImageName` from the source file, `k@stack`
  for item k of a stack; `rlnTomoName`; `rlnCoordinateX/Y/Z` in pixels when the manifest had
  no coordinate columns), then the cryoal columns:

  | column | select | predict |
  |---|---|---|
  | `rlnCryoalParticleId` | particle id | particle id |
  | `rlnCryoalRank`, `rlnCryoalScore`, `rlnCryoalScheme` | rank (from 1), raw score, scheme | |
  | `rlnCryoalPredictedClass`, `rlnCryoalPredictedName`, `rlnCryoalConfidence` | predicted class | |
  | `rlnClassNumber` | (the manifest's, if any) | predicted class (replaces the manifest's) |
  | `rlnMaxValueProbDistribution` | | probability of the predicted class |
  | `rlnCryoalClassName` | | predicted class name |
  | `rlnCryoalProbClass<k>` | | probability of class number k |

Class numbers: when every class name of the pool is a positive integer (classes that came from a
RELION `rlnClassNumber` column), a class's number is its name, so the numbering of the input is
kept; otherwise it is the class's position in the pool's class list, counted from 1.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryoal.io.star import Table, write_star

PARTICLES = "particles"
_POSITIVE_INT = re.compile(r"^[1-9]\d*$")
_STACK_SOURCE = re.compile(r"^(.*)#(\d+)$")
_COORD_COLUMNS = ("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ")
_CENTERED = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")


def class_numbers(class_names: Sequence[str]) -> list[int]:
    """RELION class numbers of the pool's classes (see the module docstring for the rule)."""
    names = [str(n) for n in class_names]
    if names and all(_POSITIVE_INT.match(n) for n in names) and len(set(names)) == len(names):
        return [int(n) for n in names]
    return list(range(1, len(names) + 1))


def format_float(value: float) -> str:
    """A float as STAR text: 7 significant digits (float32 precision), empty for NaN."""
    value = float(value)
    return "" if math.isnan(value) else f"{value:.7g}"


def star_label(column: str) -> str:
    """A manifest column name as a STAR label (no whitespace)."""
    return re.sub(r"\s+", "_", column.strip()) or "column"


def _image_name(source: str) -> str:
    m = _STACK_SOURCE.match(source)
    return f"{int(m.group(2))}@{m.group(1)}" if m else source


def particle_columns(pool, indices: np.ndarray) -> Table:
    """The particle rows `indices` of `pool`: original manifest columns, then what cryoal knows."""
    idx = np.asarray(indices, dtype=np.int64)
    table: Table = {}
    for col in pool.meta_columns:
        table[star_label(col)] = [str(v) for v in pool.meta(col)[idx]]
    if "rlnImageName" not in table:
        table["rlnImageName"] = [_image_name(str(s)) for s in pool.sources[idx]]
    tomos = pool.tomos[idx]
    if "rlnTomoName" not in table and any(tomos):
        table["rlnTomoName"] = [str(t) for t in tomos]
    has_coords = any(c in table for c in (*_COORD_COLUMNS, *_CENTERED))
    xyz = pool.coords[idx]
    if not has_coords and np.isfinite(xyz).any():
        for axis, col in enumerate(_COORD_COLUMNS):
            table[col] = [format_float(v) for v in xyz[:, axis]]
    return table


def _merge_tables(tables: list[tuple[str, Table]], block: str, warnings: list[str]) -> Table:
    """Rows of several manifests' copies of one block, identical rows once, columns united."""
    columns: list[str] = []
    for _, t in tables:
        columns += [c for c in t if c not in columns]
    rows: list[tuple[str, ...]] = []
    origin: dict[str, str] = {}
    for source, t in tables:
        n = len(next(iter(t.values()))) if t else 0
        for r in range(n):
            row = tuple(t[c][r] if c in t else "" for c in columns)
            if row in rows:
                continue
            group = row[columns.index("rlnOpticsGroup")] if "rlnOpticsGroup" in columns else None
            if group is not None and group in origin:
                warnings.append(
                    f"optics group {group} differs between {origin[group]} and {source}; "
                    f"data_{block} keeps both rows"
                )
            if group is not None:
                origin.setdefault(group, source)
            rows.append(row)
    return {c: [row[i] for row in rows] for i, c in enumerate(columns)}


def header_blocks(pool, particles: Table) -> tuple[dict[str, Table], list[str]]:
    """The non-particle blocks to write before `data_particles`, and warnings about merging them."""
    warnings: list[str] = []
    by_block: dict[str, list[tuple[str, Table]]] = {}
    for source, blocks in pool.star_blocks.items():
        for name, table in blocks.items():
            if name != PARTICLES:
                by_block.setdefault(name, []).append((source, table))
    out = {name: _merge_tables(tables, name, warnings) for name, tables in by_block.items()}
    if "optics" not in out and "rlnOpticsGroup" not in particles and math.isfinite(pool.voxel_size):
        out["optics"] = {
            "rlnOpticsGroup": ["1"], "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [format_float(pool.voxel_size)], "rlnImageSize": [str(pool.box)],
            "rlnImageDimensionality": [str(len(pool.shape))],
        }
        n = len(next(iter(particles.values()))) if particles else 0
        particles["rlnOpticsGroup"] = ["1"] * n
    if "general" not in out and pool.mode == "subtomogram":
        out = {"general": {"rlnTomoSubTomosAre2DStacks": ["0"]}, **out}
    return out, warnings


def _write(path: str | os.PathLike, pool, particles: Table) -> list[str]:
    blocks, warnings = header_blocks(pool, particles)
    blocks[PARTICLES] = particles
    write_star(Path(path), blocks)
    return warnings


def write_selection_star(
    path: str | os.PathLike,
    pool,
    indices: np.ndarray,
    *,
    scheme: str,
    scores: Sequence[str],
    predicted: Sequence[int],
    confidence: Sequence[str],
    class_names: Sequence[str],
) -> list[str]:
    """Write the ranked particles `indices` (rank 1 first) as a STAR file, atomically.

    `scores` and `confidence` are the strings the CSV holds (so both files agree to the digit),
    `predicted` the predicted class indices into the model's `class_names`. Returns warnings
    (e.g. conflicting optics groups).
    """
    idx = np.asarray(indices, dtype=np.int64)
    names = [str(n) for n in class_names]
    numbers = class_numbers(names)
    table = particle_columns(pool, idx)
    table["rlnCryoalParticleId"] = [str(p) for p in pool.particle_ids[idx]]
    table["rlnCryoalRank"] = [str(r) for r in range(1, idx.size + 1)]
    table["rlnCryoalScore"] = list(scores)
    table["rlnCryoalScheme"] = [scheme] * idx.size
    table["rlnCryoalPredictedClass"] = [str(numbers[int(c)]) for c in predicted]
    table["rlnCryoalPredictedName"] = [names[int(c)] for c in predicted]
    table["rlnCryoalConfidence"] = list(confidence)
    return _write(path, pool, table)


def write_predictions_star(
    path: str | os.PathLike,
    pool,
    indices: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
) -> list[str]:
    """Write predictions for particles `indices` (rows of `probs`, (N, C)) as a STAR file, atomically.

    `rlnClassNumber` holds the predicted class number (see `class_numbers`).
    """
    idx = np.asarray(indices, dtype=np.int64)
    probs = np.asarray(probs)
    names = [str(n) for n in class_names]
    numbers = class_numbers(names)
    pred = probs.argmax(axis=1)
    table = particle_columns(pool, idx)
    table["rlnCryoalParticleId"] = [str(p) for p in pool.particle_ids[idx]]
    table["rlnClassNumber"] = [str(numbers[c]) for c in pred]
    table["rlnMaxValueProbDistribution"] = [format_float(v) for v in probs[np.arange(len(pred)), pred]]
    table["rlnCryoalClassName"] = [names[c] for c in pred]
    for k, number in enumerate(numbers):
        table[f"rlnCryoalProbClass{number}"] = [format_float(v) for v in probs[:, k]]
    return _write(path, pool, table)


def star_path_for(csv_path: str | os.PathLike) -> Path:
    """Where `--format both` writes the STAR file: the CSV's path with the suffix `.star`."""
    p = Path(csv_path)
    return p.with_suffix(".star") if p.suffix else p.with_name(p.name + ".star")


__all__ = [
    "class_numbers", "format_float", "header_blocks", "particle_columns", "star_label", "star_path_for",
    "write_predictions_star", "write_selection_star",
]
