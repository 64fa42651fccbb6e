"""Picks files: which tomogram, where, and in which coordinate convention.

Accepted (the first match wins, in this order):

* RELION 5 particle STAR: `rlnTomoName` + `rlnCenteredCoordinate{X,Y,Z}Angst`, Å from the
  tomogram centre. The tomogram pixel is `Å / tomogram_pixel_size + size/2`, with size =
  (W, H, D) for (x, y, z); size/2 is RELION's centre, in 0-based voxel indices.
* RELION 4 / generic STAR or CSV: `rlnTomoName` + `rlnCoordinate{X,Y,Z}`, in pixels.
* CSV/TSV: `tomo,x,y,z`, in pixels.

Pixel coordinates are 0-based voxel indices, `vol[z, y, x]` sitting at (x, y, z) (cryoal's
convention; this matches RELION's own centre at size/2 above). Pixel coordinates of another
binning than the tomogram's are rescaled by `coord_pixel_size / tomogram_pixel_size`.
`rlnOrigin{X,Y,Z}Angst` columns, when present, are subtracted (RELION: the particle centre is
the coordinate minus the origin shift).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoal.errors import InputError
from cryoal.io.star import Table, particles_block, read_star
from cryoal.io.tables import is_star, read_csv, table_len

CENTRED_ANGST = tuple(f"rlnCenteredCoordinate{a}Angst" for a in "XYZ")
RELION_PIXELS = tuple(f"rlnCoordinate{a}" for a in "XYZ")
CSV_PIXELS = ("x", "y", "z")
ORIGIN_ANGST = tuple(f"rlnOrigin{a}Angst" for a in "XYZ")
TOMO_COLUMNS = ("rlnTomoName", "tomo")
ID_COLUMNS = ("rlnTomoParticleName", "particle_id")


@dataclass(frozen=True)
class Convention:
    """How a picks file gives positions: its coordinate columns and their unit."""

    columns: tuple[str, str, str]
    in_angstrom: bool  # True: Å from the tomogram centre (RELION 5); False: 0-based pixels

    def describe(self, pixel_size: float, coord_pixel_size: float | None) -> str:
        """The assumption spelled out, for error messages ('... assuming <this>: wrong units?')."""
        if self.in_angstrom:
            return f"{self.columns[0]} in Å from the tomogram centre with pixel size {pixel_size:g} Å"
        if coord_pixel_size is not None:
            return f"{self.columns[0]} in 0-based pixels of {coord_pixel_size:g} Å (--coord-pixel-size)"
        size = "unknown size" if math.isnan(pixel_size) else f"{pixel_size:g} Å"
        return (
            f"{self.columns[0]} in 0-based pixels of the tomogram ({size}; use --coord-pixel-size "
            "if the picks are at another binning)"
        )


@dataclass
class Picks:
    """A parsed picks file: one entry per row, in file order."""

    path: Path
    table: Table  # every column, verbatim
    convention: Convention
    tomo_names: list[str]  # "" when the file has no tomogram column
    raw_xyz: np.ndarray  # (N, 3) float64 values of the coordinate columns
    origin_angst: np.ndarray | None  # (N, 3) rlnOrigin*Angst shifts, or None
    particle_ids: list[str]
    labels: list[str] | None = None  # a class name per pick (copick --labels-from-object), else None

    def __len__(self) -> int:
        return len(self.tomo_names)


def _find_convention(table: Table, path: Path) -> Convention:
    for columns, angst in ((CENTRED_ANGST, True), (RELION_PIXELS, False), (CSV_PIXELS, False)):
        if all(c in table for c in columns):
            return Convention(columns, angst)  # type: ignore[arg-type]
    raise InputError(
        f"{path}: no coordinate columns; expected rlnCenteredCoordinate{{X,Y,Z}}Angst (RELION 5, Å "
        "from the tomogram centre), rlnCoordinate{X,Y,Z} (pixels) or x,y,z (pixels)"
    )


def _floats(table: Table, columns: tuple[str, ...], path: Path) -> np.ndarray:
    n = table_len(table)
    out = np.empty((n, len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        for i, text in enumerate(table[col]):
            try:
                out[i, j] = float(text)
            except ValueError:
                raise InputError(f"{path}: row {i + 1}, column {col}: {text!r} is not a number") from None
            if not math.isfinite(out[i, j]):
                raise InputError(f"{path}: row {i + 1}, column {col}: {text!r} is not finite")
    return out


def _particle_ids(table: Table, tomos: list[str], path: Path) -> list[str]:
    column = next((c for c in ID_COLUMNS if c in table), None)
    if column is not None:
        ids = list(table[column])
        for i, pid in enumerate(ids):
            if not pid:
                raise InputError(f"{path}: row {i + 1} has an empty {column}")
    else:
        # <tomo>_<n>, n counting the picks of that tomogram in file order from 1 (stable ids:
        # picks skipped later, outside or at an edge, keep their number).
        counts: dict[str, int] = {}
        ids = []
        for tomo in tomos:
            counts[tomo] = counts.get(tomo, 0) + 1
            ids.append(f"{tomo}_{counts[tomo]}")
    seen: set[str] = set()
    for pid in ids:
        if pid in seen:
            raise InputError(f"{path}: particle id '{pid}' appears more than once")
        seen.add(pid)
    return ids


def read_picks(path: str | os.PathLike, default_tomo: str | None = None) -> Picks:
    """Read a picks file (STAR or CSV/TSV). `default_tomo` names the tomogram of every pick when
    the file has no tomogram column (only allowed when a single tomogram file is given)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: picks file not found")
    table = particles_block(read_star(path), str(path)) if is_star(path) else read_csv(path)
    if table_len(table) == 0:
        raise InputError(f"{path}: no picks in the file")
    convention = _find_convention(table, path)
    tomo_col = next((c for c in TOMO_COLUMNS if c in table), None)
    if tomo_col is not None:
        tomos = list(table[tomo_col])
        for i, name in enumerate(tomos):
            if not name:
                raise InputError(f"{path}: row {i + 1} has an empty {tomo_col}")
    elif default_tomo is not None:
        tomos = [default_tomo] * table_len(table)
    else:
        raise InputError(
            f"{path}: no tomogram column (rlnTomoName or tomo); add one, or give --tomograms a single file"
        )
    origin = _floats(table, ORIGIN_ANGST, path) if all(c in table for c in ORIGIN_ANGST) else None
    if origin is not None and not origin.any():
        origin = None  # all-zero shifts (unrefined picks): nothing to apply, no pixel size needed
    return Picks(
        path=path,
        table=table,
        convention=convention,
        tomo_names=tomos,
        raw_xyz=_floats(table, convention.columns, path),
        origin_angst=origin,
        particle_ids=_particle_ids(table, tomos, path),
    )


def to_tomogram_pixels(
    raw_xyz: np.ndarray,
    convention: Convention,
    shape_zyx: tuple[int, int, int],
    pixel_size: float,
    coord_pixel_size: float | None = None,
    origin_angst: np.ndarray | None = None,
) -> np.ndarray:
    """Convert pick coordinates to 0-based tomogram pixels (x, y, z), float64, (N, 3).

    `pixel_size` is the tomogram's (Å, NaN if unknown); `coord_pixel_size` that of pixel
    coordinates when they are of another binning (None: the tomogram's).
    """
    raw = np.asarray(raw_xyz, dtype=np.float64).reshape(-1, 3)
    size_xyz = np.asarray(shape_zyx[::-1], dtype=np.float64)
    if convention.in_angstrom:
        angst = raw if origin_angst is None else raw - origin_angst
        return angst / pixel_size + size_xyz / 2
    pixels = raw
    coord_px = pixel_size if coord_pixel_size is None else coord_pixel_size
    if origin_angst is not None:
        pixels = pixels - origin_angst / coord_px
    if coord_pixel_size is not None:
        pixels = pixels * (coord_pixel_size / pixel_size)
    return pixels
