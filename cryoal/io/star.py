"""RELION STAR files: a small reader and writer for the subset RELION uses (data blocks, loops,
key-value pairs, quoted strings, comments).

A file is returned as `{block_name: {column: [values...]}}`, block names without `data_` and
column names without the leading underscore, every value a string. A key-value block becomes
a table of one row. Column order and block order are kept, so a file read and written again
keeps every column.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryoal.errors import InputError
from cryoal.io.atomic import atomic_open

Table = dict[str, list[str]]
_TOKEN = re.compile(r"""'([^']*)'|"([^"]*)"|(\S+)""")


def _split(line: str) -> list[str]:
    if "'" not in line and '"' not in line:
        return line.split()
    out = []
    for m in _TOKEN.finditer(line):
        single, double, bare = m.groups()
        out.append(single if single is not None else double if double is not None else bare)
    return out


def _strip_comment(line: str) -> str:
    # '#' starts a comment, except inside RELION's column numbering ("_rlnX #1") which we drop anyway
    if "#" in line and "'" not in line and '"' not in line:
        line = line.split("#", 1)[0]
    return line.strip()


def read_text_file(path: str | os.PathLike, what: str, origin: str = "") -> str:
    """The text of a UTF-8 file (a BOM from a spreadsheet export is dropped), or InputError naming it.

    `what` says what the file should be ("a text STAR file"), `origin` where its name came from
    (" (from --ids @x)"); both only shape the one-line error.
    """
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found{origin}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not {what}{origin}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not {what}{origin}") from None


def read_star(path: str | os.PathLike) -> dict[str, Table]:
    """Read every data block of a STAR file. Raises InputError naming the file and line on bad syntax."""
    return parse_star(read_text_file(path, "a text STAR file"), str(path))


def parse_star(text: str, name: str = "<star>") -> dict[str, Table]:
    """Parse STAR text (see `read_star`)."""
    blocks: dict[str, Table] = {}
    current: Table | None = None
    in_loop_header = False
    loop_cols: list[str] = []
    in_loop = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("data_"):
            bname = line[5:].strip()
            current = {}
            blocks[bname] = current
            in_loop = in_loop_header = False
            continue
        if current is None:
            raise InputError(f"{name}:{lineno}: content before the first data_ block")
        if line.startswith("loop_"):
            in_loop_header, in_loop, loop_cols = True, False, []
            continue
        if line.startswith("_"):
            tokens = line.split(None, 1)
            col = tokens[0][1:]
            if in_loop_header:
                loop_cols.append(col)
                current[col] = []
            else:  # key-value pair
                rest = _split(tokens[1]) if len(tokens) > 1 else [""]
                current[col] = [rest[0] if rest else ""]
                in_loop = False
            continue
        if in_loop_header:
            in_loop_header, in_loop = False, True
        if not in_loop:
            raise InputError(f"{name}:{lineno}: unexpected data outside a loop: {raw.strip()[:60]!r}")
        values = _split(line)
        if len(values) != len(loop_cols):
            raise InputError(
                f"{name}:{lineno}: row has {len(values)} values but the loop has {len(loop_cols)} columns"
            )
        for col, value in zip(loop_cols, values, strict=True):
            current[col].append(value)
    return blocks


def _format(value: object) -> str:
    text = str(value)
    if text == "":
        return '""'
    if any(ch.isspace() for ch in text) or text[0] in "'\"#_" or text.startswith(("data_", "loop_")):
        return '"' + text + '"' if '"' not in text else "'" + text + "'"
    return text


def format_star(blocks: dict[str, dict[str, Sequence]]) -> str:
    """Render blocks as STAR text, every block as a loop (valid for one-row tables too)."""
    out: list[str] = ["# written by cryoal", ""]
    for bname, table in blocks.items():
        cols = list(table)
        lengths = {len(table[c]) for c in cols}
        if len(lengths) > 1:
            raise ValueError(f"block {bname}: columns have different lengths {sorted(lengths)}")
        out += [f"data_{bname}", "", "loop_"]
        out += [f"_{col} #{i}" for i, col in enumerate(cols, start=1)]
        columns = [[_format(v) for v in table[c]] for c in cols]
        out += ["  ".join(row) for row in zip(*columns, strict=True)] if cols else []
        out.append("")
    return "\n".join(out) + "\n"


def write_star(path: str | os.PathLike, blocks: dict[str, dict[str, Sequence]]) -> None:
    """Write blocks to a STAR file atomically (temporary file, then rename)."""
    text = format_star(blocks)
    with atomic_open(path, "w") as fh:
        fh.write(text)


def particles_block(blocks: dict[str, Table], name: str = "<star>") -> Table:
    """The particle table of a STAR file: `data_particles` if present, else the largest loop."""
    if "particles" in blocks:
        return blocks["particles"]
    tables = [t for t in blocks.values() if t]
    if not tables:
        raise InputError(f"{name}: STAR file has no data")
    return max(tables, key=lambda t: len(next(iter(t.values()))))


def merge_optics(blocks: dict[str, Table], table: Table) -> Table:
    """Per-row optics values (e.g. rlnImagePixelSize) joined on rlnOpticsGroup, RELION 3.1+ style.

    Returns only the optics columns that the particle table lacks, one value per particle row.
    """
    optics = blocks.get("optics")
    if not optics or "rlnOpticsGroup" not in optics or "rlnOpticsGroup" not in table:
        return {}
    rows = {g: i for i, g in enumerate(optics["rlnOpticsGroup"])}
    out: Table = {}
    for col in optics:
        if col in table or col == "rlnOpticsGroup":
            continue
        out[col] = [optics[col][rows[g]] if g in rows else "" for g in table["rlnOpticsGroup"]]
    return out
