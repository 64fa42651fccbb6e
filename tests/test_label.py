"""`cryoal label` and `cryoal.labels.set_labels`: names or 1-based numbers, rounds, all-or-nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.errors import InputError
from cryoal.io.pool import PoolWriter, open_pool
from cryoal.labels import resolve_labels, set_labels

IDS = [f"p{i}" for i in range(8)]


def make_pool(path: Path, class_names=("ribosome", "proteasome", "empty"), labels=None) -> Path:
    vols = np.random.default_rng(0).standard_normal((len(IDS), 4, 4, 4)).astype(np.float32)
    with PoolWriter(path, shape=(4, 4, 4), class_names=list(class_names)) as w:
        w.add(vols, IDS, [f"/d/{i}.mrc" for i in IDS], labels=labels)
    return path


def run(*args):
    return CliRunner().invoke(app, ["label", *map(str, args)])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_one_error(res, *culprits: str) -> None:
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for c in culprits:
        assert c in lines[0], (c, lines[0])
    assert "Traceback" not in res.output


def test_select_csv_with_filled_label_column_works_as_is(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    csv = write_csv(
        tmp_path / "to_label.csv",
        "rank,particle_id,score,predicted_label,confidence,source,tomo,x,y,z,label\n"
        "1,p3,0.9,ribosome,0.4,/d/p3.mrc,,,,,proteasome\n"
        "2,p0,0.8,empty,0.5,/d/p0.mrc,,,,,1\n"  # class number 1 = ribosome
        "3,p5,0.7,empty,0.6,/d/p5.mrc,,,,,\n"  # not labelled yet: skipped
        "4,p6,0.6,empty,0.6,/d/p6.mrc,,,,, empty \n",  # surrounding spaces ignored
    )
    res = run(pool, csv)
    assert res.exit_code == 0, res.output
    assert "round 0: labelled 3 particles (ribosome: 1, proteasome: 1, empty: 1)" in res.stdout
    assert "1 empty skipped" in res.stdout and "3 of 8 labelled" in res.stdout
    with open_pool(pool) as p:
        assert list(p.labels) == [0, -1, -1, 1, -1, -1, 2, -1]
        assert list(p.label_rounds) == [0, -1, -1, 0, -1, -1, 0, -1]
        assert p.class_names == ["ribosome", "proteasome", "empty"]


def test_rounds_and_relabelling(tmp_path):
    pool = make_pool(tmp_path / "pool.h5", labels=[0, 0, -1, -1, -1, -1, -1, -1])  # ingest labels: round 0
    res = run(pool, write_csv(tmp_path / "a.csv", "particle_id,label\np0,ribosome\np1,empty\np2,2\n"))
    assert res.exit_code == 0, res.output
    assert "round 1:" in res.stdout and "1 relabelled" in res.stdout  # p1 was ribosome
    res = run(pool, write_csv(tmp_path / "b.csv", "particle_id,label\np2,3\n"))
    assert "round 2:" in res.stdout and "1 relabelled" in res.stdout
    with open_pool(pool) as p:
        assert list(p.labels[:3]) == [0, 2, 2]
        assert list(p.label_rounds[:3]) == [1, 1, 2]


def test_unknown_id_rejects_whole_file(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    before = digest(pool)
    csv = write_csv(tmp_path / "l.csv", "particle_id,label\np1,ribosome\nnot_there,empty\n")
    assert_one_error(run(pool, csv), "l.csv", "unknown particle id 'not_there'", "row 2")
    assert digest(pool) == before
    assert not [f for f in tmp_path.iterdir() if ".tmp-" in f.name]


def test_unknown_class_needs_add_classes(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    before = digest(pool)
    csv = write_csv(tmp_path / "l.csv", "particle_id,label\np1,ribosome\np2,tric\np3,apo\np4,3\n")
    assert_one_error(run(pool, csv), "l.csv", "unknown class", "--add-classes")
    assert digest(pool) == before
    res = run(pool, csv, "--add-classes")
    assert res.exit_code == 0, res.output
    assert "new classes: apo, tric" in res.stdout  # sorted
    with open_pool(pool) as p:
        assert p.class_names == ["ribosome", "proteasome", "empty", "apo", "tric"]
        assert list(p.labels[1:5]) == [0, 4, 3, 2]


@pytest.mark.parametrize("number", ["4", "6", "0"])
def test_a_number_out_of_range_is_refused_even_with_add_classes(tmp_path, number):
    """A number is a class number: beyond 1..C it is a mistake, never a new class called "6"."""
    pool = make_pool(tmp_path / "pool.h5")
    before = digest(pool)
    csv = write_csv(tmp_path / "l.csv", f"particle_id,label\np1,ribosome\np2,tric\np4,{number}\n")
    for extra in ((), ("--add-classes",)):
        res = run(pool, csv, *extra)
        assert_one_error(res, "l.csv", f"label '{number}' is a class number out of range", "1-3",
                         "even with --add-classes")
        assert digest(pool) == before


def test_pool_without_classes_takes_new_names(tmp_path):
    pool = make_pool(tmp_path / "pool.h5", class_names=())
    res = run(pool, write_csv(tmp_path / "l.csv", "particle_id,label\np0,b\np1,a\np2,b\n"))
    assert res.exit_code == 0, res.output
    with open_pool(pool) as p:
        assert p.class_names == ["a", "b"] and list(p.labels[:3]) == [1, 0, 1]
    # numeric names sort as numbers, and then numbers match by name
    pool2 = make_pool(tmp_path / "pool2.h5", class_names=())
    assert run(pool2, write_csv(tmp_path / "n.csv", "particle_id,label\np0,10\np1,2\n")).exit_code == 0
    with open_pool(pool2) as p:
        assert p.class_names == ["2", "10"] and list(p.labels[:2]) == [1, 0]


def test_duplicate_ids_in_one_file(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    same = write_csv(tmp_path / "same.csv", "particle_id,label\np1,empty\np1,3\n")  # same class twice
    assert run(pool, same).exit_code == 0
    before = digest(pool)
    clash = write_csv(tmp_path / "clash.csv", "particle_id,label\np2,empty\np2,ribosome\n")
    assert_one_error(run(pool, clash), "clash.csv", "'p2' is given two different labels")
    assert digest(pool) == before


def test_missing_columns_and_empty_imports(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    before = digest(pool)
    assert_one_error(run(pool, write_csv(tmp_path / "a.csv", "id,label\np1,x\n")), "a.csv", "'particle_id'")
    assert_one_error(run(pool, write_csv(tmp_path / "b.csv", "particle_id\np1\n")), "b.csv", "'label'")
    assert_one_error(run(pool, write_csv(tmp_path / "c.csv", "particle_id,label\n")), "c.csv", "no rows")
    res = run(pool, write_csv(tmp_path / "d.csv", "particle_id,label\np1,\np2,\n"))
    assert res.exit_code == 0 and "no labels" in res.stdout and "pool unchanged" in res.stdout
    assert digest(pool) == before
    assert_one_error(run(pool, tmp_path / "missing.csv"), "missing.csv", "file not found")


def test_bad_pools(tmp_path):
    csv = write_csv(tmp_path / "l.csv", "particle_id,label\np1,ribosome\n")
    assert_one_error(run(tmp_path / "none.h5", csv), "none.h5", "not found")
    pool = make_pool(tmp_path / "pool.h5")
    with h5py.File(pool, "r+") as h5:
        h5.attrs["format_version"] = 3
    before = digest(pool)
    assert_one_error(run(pool, csv), "pool.h5", "format version 3")
    assert digest(pool) == before


def test_tsv_and_gallery_style_export(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    tsv = write_csv(tmp_path / "l.tsv", "particle_id\tlabel\tnote\np7\t2\tlooks like a barrel\n")
    assert run(pool, tsv).exit_code == 0
    gallery = write_csv(tmp_path / "labels.csv", "particle_id,label,key\np6,ribosome,1\n")
    assert run(pool, gallery).exit_code == 0
    with open_pool(pool) as p:
        assert p.labels[7] == 1 and p.labels[6] == 0


def test_api_matches_a_slow_reference(tmp_path):
    """Random imports through set_labels against a plain-dict model of the rules."""
    pool = make_pool(tmp_path / "pool.h5", class_names=("a", "b", "c"))
    rng = np.random.default_rng(7)
    model_labels = {pid: None for pid in IDS}
    model_round = {pid: -1 for pid in IDS}
    names = ["a", "b", "c"]
    expected_round = -1
    for _ in range(4):
        ids = list(rng.choice(IDS, size=5, replace=False))
        raw = [str(rng.choice(["a", "b", "c", "1", "2", "3", ""])) for _ in ids]
        summary = set_labels(pool, ids, raw)
        expect_set = 0
        for pid, lab in zip(ids, raw, strict=True):
            if lab == "":
                continue
            cls = names[int(lab) - 1] if lab.isdigit() else lab
            model_labels[pid] = cls
            model_round[pid] = summary.round
            expect_set += 1
        expected_round += 1 if expect_set else 0  # an import of only empty labels starts no round
        assert summary.n_set == expect_set and summary.n_skipped == 5 - expect_set
        assert summary.round == expected_round
        with open_pool(pool) as p:
            got = {
                pid: (p.class_names[k] if k >= 0 else None)
                for pid, k in zip(p.particle_ids, p.labels, strict=True)
            }
            rounds = dict(zip(p.particle_ids, p.label_rounds.tolist(), strict=True))
        assert got == model_labels and rounds == model_round


def test_resolve_labels_rules():
    idx, names = resolve_labels(["b", "2", "", " a ", "3"], ["a", "b", "c"], add_classes=False, where="x")
    assert list(idx) == [1, 1, -1, 0, 2] and names == ["a", "b", "c"]
    for add in (False, True):
        with pytest.raises(InputError, match="x: label '4' is a class number out of range"):
            resolve_labels(["4"], ["a", "b", "c"], add_classes=add, where="x")
        with pytest.raises(InputError, match="label '0' is a class number out of range"):
            resolve_labels(["0"], ["a"], add_classes=add, where="x")
    idx, names = resolve_labels(["3", "1"], [], add_classes=False, where="x")  # no classes yet: names
    assert names == ["1", "3"] and list(idx) == [1, 0]
    idx, names = resolve_labels(["z", "y", "z"], [], add_classes=False, where="x")
    assert names == ["y", "z"] and list(idx) == [1, 0, 1]


def test_pool_api_module_sets_labels(tmp_path):
    """`cryoal.pool` is the scripts' API: open, append, read batches and set labels."""
    import cryoal.pool as api

    pool = make_pool(tmp_path / "pool.h5")
    summary = api.set_labels(pool, ["p2", "p5"], ["empty", "1"])
    assert summary.n_set == 2 and summary.round == 0 and summary.per_class == {"ribosome": 1, "empty": 1}
    with api.open_pool(pool) as p:
        assert list(p.labels) == [-1, -1, 2, -1, -1, 0, -1, -1]
        batches = list(p.iter_batches(3))
        assert [len(i) for i, _ in batches] == [3, 3, 2]


def test_a_directory_for_the_table_is_named(tmp_path):
    pool = make_pool(tmp_path / "pool.h5")
    (tmp_path / "adir").mkdir()
    res = run(pool, tmp_path / "adir")
    assert_one_error(res, "adir: is a directory; give a table file (CSV, TSV or STAR)")
