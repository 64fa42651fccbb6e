"""STAR and CSV manifests (cryoal.io.star, .tables), checked against RELION-style files and `starfile`."""

from __future__ import annotations

import pytest
import starfile

from cryoal.errors import InputError
from cryoal.io.star import format_star, merge_optics, parse_star, particles_block, read_star, write_star
from cryoal.io.tables import read_csv, read_table, table_len, write_csv

RELION31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnImageDimensionality #5
opticsGroup1            1     1.350000    64     3
opticsGroup2            2     2.700000    32     3

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnCoordinateZ #4
_rlnTomoName #5
_rlnOpticsGroup #6
_rlnClassNumber #7
Subtomograms/ts_01/1_subtomo.mrc   100.000000   200.000000    50.000000  ts_01     1     2
Subtomograms/ts_01/2_subtomo.mrc   110.500000   210.000000    55.000000  ts_01     1     1
Subtomograms/ts_02/1_subtomo.mrc    10.000000    20.000000     5.000000  ts_02     2     3
"""

RELION5 = """
# version 50001

data_general

_rlnTomoSubTomosAre2DStacks                       1

# version 50001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnTomoTiltSeriesPixelSize #3
1 optics1 1.5

# version 50001

data_particles

loop_
_rlnTomoName #1
_rlnCenteredCoordinateXAngst #2
_rlnCenteredCoordinateYAngst #3
_rlnCenteredCoordinateZAngst #4
_rlnTomoParticleName #5
_rlnOpticsGroup #6
TS_01  -120.5  33.0  12.25  TS_01/1  1
TS_01    80.0 -10.0   0.00  TS_01/2  1
"""


def test_relion31_optics_and_particles(tmp_path):
    path = tmp_path / "run_data.star"
    path.write_text(RELION31)
    blocks = read_star(path)
    assert list(blocks) == ["optics", "particles"]
    parts = particles_block(blocks)
    assert parts["rlnImageName"][1] == "Subtomograms/ts_01/2_subtomo.mrc"
    assert parts["rlnCoordinateX"] == ["100.000000", "110.500000", "10.000000"]
    assert list(parts) == [
        "rlnImageName", "rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ", "rlnTomoName",
        "rlnOpticsGroup", "rlnClassNumber",
    ]
    optics = merge_optics(blocks, parts)
    assert optics["rlnImagePixelSize"] == ["1.350000", "1.350000", "2.700000"]
    assert optics["rlnOpticsGroupName"] == ["opticsGroup1", "opticsGroup1", "opticsGroup2"]
    assert "rlnOpticsGroup" not in optics
    # read_table gives the particles block of a STAR file
    assert read_table(path) == parts
    # an independent reader agrees on every value
    ref = starfile.read(path, always_dict=True)
    for col in parts:
        assert [str(v) for v in parts[col]] == [_norm(v) for v in ref["particles"][col]]


def _norm(value) -> str:
    # starfile parses numbers; compare as the text written in the file
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def test_relion5_general_block_is_one_row(tmp_path):
    path = tmp_path / "particles.star"
    path.write_text(RELION5)
    blocks = read_star(path)
    assert blocks["general"] == {"rlnTomoSubTomosAre2DStacks": ["1"]}
    parts = particles_block(blocks)
    assert parts["rlnTomoParticleName"] == ["TS_01/1", "TS_01/2"]
    assert parts["rlnCenteredCoordinateXAngst"] == ["-120.5", "80.0"]
    assert merge_optics(blocks, parts)["rlnTomoTiltSeriesPixelSize"] == ["1.5", "1.5"]


def test_particles_block_without_the_name_is_the_largest_loop():
    blocks = parse_star("data_a\nloop_\n_x\n1\ndata_b\nloop_\n_y\n1\n2\n3\n")
    assert particles_block(blocks) == {"y": ["1", "2", "3"]}
    with pytest.raises(InputError, match="no data"):
        particles_block({"empty": {}}, "e.star")


def test_quoted_values_and_comments():
    text = (
        "data_particles\nloop_\n_rlnImageName #1\n_rlnComment #2\n"
        "'dir with space/p 1.mrc' \"a # not a comment\"\n"
        "plain.mrc \"\"\n"
        "# a comment line\n"
        "p3.mrc x  # trailing comment\n"
    )
    t = parse_star(text)["particles"]
    assert t["rlnImageName"] == ["dir with space/p 1.mrc", "plain.mrc", "p3.mrc"]
    assert t["rlnComment"] == ["a # not a comment", "", "x"]


def test_round_trip_keeps_blocks_columns_and_awkward_values(tmp_path):
    blocks = {
        "optics": {"rlnOpticsGroup": ["1"], "rlnImagePixelSize": ["10.0"]},
        "particles": {
            "rlnImageName": ["a b/p1.mrc", "p2.mrc", "3@stack.mrcs"],
            "note": ["", "#hash", "_under"],
            "quote": ['say "hi"', "it's", "data_x"],
        },
    }
    path = tmp_path / "out.star"
    write_star(path, blocks)
    assert read_star(path) == blocks
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file
    # starfile reads what we write
    ref = starfile.read(path, always_dict=True)
    assert list(ref["particles"]["rlnImageName"]) == blocks["particles"]["rlnImageName"]
    with pytest.raises(ValueError, match="different lengths"):
        format_star({"b": {"x": [1, 2], "y": [1]}})


@pytest.mark.parametrize(
    "text,message",
    [
        ("loop_\n_x\n1\n", r"bad.star:1: content before the first data_ block"),
        ("data_p\nloop_\n_a\n_b\n1 2\n3\n", r"bad.star:6: row has 1 values but the loop has 2 columns"),
        ("data_p\n_a 1\n5 6\n", r"bad.star:3: unexpected data outside a loop"),
    ],
)
def test_bad_star_syntax_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.star"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        read_star(path)


def test_star_missing_or_binary(tmp_path):
    with pytest.raises(InputError, match="nope.star: file not found"):
        read_star(tmp_path / "nope.star")
    binary = tmp_path / "bin.star"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(InputError, match="not a text STAR file"):
        read_star(binary)


def test_csv_tsv_bom_and_errors(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("\ufeffparticle_id,label\np1,ribosome\n\np2,\n", encoding="utf-8")
    assert read_csv(csv_path) == {"particle_id": ["p1", "p2"], "label": ["ribosome", ""]}
    tsv = tmp_path / "t.tsv"
    tsv.write_text("path\ttomo\na.mrc\tT1\n")
    assert read_table(tsv) == {"path": ["a.mrc"], "tomo": ["T1"]}
    quoted = tmp_path / "q.csv"
    quoted.write_text('particle_id,label\n"p,1","a ""b"""\n')
    assert read_csv(quoted) == {"particle_id": ["p,1"], "label": ['a "b"']}
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2,3\n")
    with pytest.raises(InputError, match=r"bad.csv:2: row has 3 fields, header has 2"):
        read_csv(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("a,a\n1,2\n")
    with pytest.raises(InputError, match="duplicate column"):
        read_csv(dup)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty table"):
        read_csv(empty)
    with pytest.raises(InputError, match="file not found"):
        read_table(tmp_path / "missing.csv")


def test_write_csv_round_trip(tmp_path):
    cols = {"rank": [1, 2], "particle_id": ["p,1", "p2"], "label": ["", 'x "y"']}
    path = tmp_path / "o.csv"
    write_csv(path, cols)
    back = read_csv(path)
    assert back == {k: [str(v) for v in vals] for k, vals in cols.items()}
    assert table_len(back) == 2
    with pytest.raises(ValueError):
        write_csv(tmp_path / "x.csv", {"a": [1], "b": [1, 2]})
