"""Tabular manifests: CSV/TSV and STAR particle tables as `{column: [values]}`, and atomic CSV output."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from cryoal.errors import InputError
from cryoal.io.atomic import atomic_open
from cryoal.io.star import Table, particles_block, read_star, read_text_file

STAR_SUFFIXES = (".star",)


def is_star(path: str | os.PathLike) -> bool:
    """True for a `.star` file name."""
    return Path(path).suffix.lower() in STAR_SUFFIXES


def read_csv(path: str | os.PathLike) -> Table:
    """Read a CSV (or TSV) with a header row. Accepts a UTF-8 BOM (spreadsheet exports)."""
    path = Path(path)
    text = read_text_file(path, "a UTF-8 text table")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InputError(f"{path}: empty table (no header row)")
    delimiter = "\t" if "\t" in lines[0] and "," not in lines[0] else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    if len(set(header)) != len(header):
        raise InputError(f"{path}: duplicate column names in header {header}")
    table: Table = {h: [] for h in header}
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{path}:{lineno}: row has {len(row)} fields, header has {len(header)}")
        for h, v in zip(header, row, strict=True):
            table[h].append(v.strip())
    return table


def read_table(path: str | os.PathLike) -> Table:
    """Read a manifest: a STAR file's particle table, or a CSV/TSV with a header row."""
    if Path(path).is_dir():  # else the user sees the OS's bare "Is a directory"
        raise InputError(f"{path}: is a directory; give a table file (CSV, TSV or STAR)")
    if is_star(path):
        return particles_block(read_star(path), str(path))
    return read_csv(path)


def table_len(table: Table) -> int:
    """Number of rows of a table."""
    return len(next(iter(table.values()))) if table else 0


def write_csv(path: str | os.PathLike, columns: dict[str, Sequence]) -> None:
    """Write columns as a CSV with a header, atomically. Values are written with `str()`."""
    names = list(columns)
    n = {len(columns[c]) for c in names}
    if len(n) > 1:
        raise ValueError(f"columns have different lengths {sorted(n)}")
    with atomic_open(path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(zip(*(columns[c] for c in names), strict=True))
