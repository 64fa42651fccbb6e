"""`cryoal export-copick`: extract -> label -> export -> read back with copick's own API.

Every labelled particle must come back as exactly one point of its class's object at its original
location, and every file of other users (and the tomograms) must stay byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_one_error, cli
from copick_project import SPACING, build_project, full_positions, require, tree_digest

from cryoal.io.pool import open_pool

copick = require("copick")


@pytest.fixture
def project(tmp_path) -> Path:
    return build_project(tmp_path / "proj")


@pytest.fixture
def pool(tmp_path, project) -> Path:
    out = tmp_path / "pool.h5"
    res = cli("extract", "--copick", project, "--voxel-spacing", SPACING, "-o", out, "--box", 8)
    assert res.exit_code == 0, res.output
    return out


def not_cryoal(path: Path) -> bool:
    """Files that an export may write: cryoal's own pick files (and the config, when adding)."""
    return path.name.startswith(("cryoal_", "cryoal-predicted_"))


def label(pool: Path, tmp: Path, rows: dict[str, str], *extra) -> None:
    csv = tmp / "labels.csv"
    csv.write_text("particle_id,label\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    res = cli("label", pool, csv, *extra)
    assert res.exit_code == 0, res.output


def read_points(config: Path, user: str, session: str) -> dict[tuple[str, str], tuple]:
    """(run, object) -> (locations (n, 3), scores, instance ids), read with copick's API."""
    root = copick.from_file(str(config))
    out = {}
    for run in root.runs:
        for p in run.get_picks(user_id=user, session_id=session):
            out[(run.name, p.pickable_object_name)] = (p.numpy()[0], p.scores(), p.instance_ids())
    return out


def expected_locations(pool_path: Path) -> dict[str, np.ndarray]:
    positions = full_positions()
    with open_pool(pool_path) as pool:
        out = {}
        for i, pid in enumerate(pool.particle_ids):
            cols = ("copick_object", "copick_user", "copick_session")
            key = (pool.tomos[i], *(pool.meta(c)[i] for c in cols))
            out[pid] = positions[key][int(pool.meta("copick_point")[i])]
    return out


def test_round_trip_labels_back_as_picks(tmp_path, project, pool):
    overlay = project.parent / "overlay"
    before = tree_digest(project.parent, skip=not_cryoal)
    with open_pool(pool) as p:
        ids = list(p.particle_ids)
    labels = {pid: ("ribosome" if n % 2 else "apo_ferritin") for n, pid in enumerate(ids[:7])}
    label(pool, tmp_path, labels)

    res = cli("export-copick", pool, project, "--session", "round1", "--add-objects")
    assert res.exit_code == 0, res.output
    assert "added object apo-ferritin (label 4)" in res.stdout

    # the config gained exactly one object (the next free label) and nothing else changed in it
    config = json.loads(project.read_text())
    assert [o["name"] for o in config["pickable_objects"]] == ["ribosome", "apoferritin", "membrane",
                                                               "apo-ferritin"]
    assert config["pickable_objects"][-1]["label"] == 4
    after = tree_digest(project.parent, skip=not_cryoal)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"copick.json"}  # other users' picks and the tomograms are byte-identical

    want = expected_locations(pool)
    got = read_points(project, "cryoal", "round1")
    assert sum(len(v[0]) for v in got.values()) == len(labels)
    with open_pool(pool) as p:
        for pid, name in labels.items():
            run = p.tomos[int(p.index_of([pid])[0])]
            locations = got[(run, name.replace("_", "-"))][0]
            hits = np.flatnonzero(np.all(np.abs(locations - want[pid]) <= 1e-3, axis=1))
            assert hits.size == 1, (pid, locations, want[pid])
    assert not list(overlay.rglob(".*.tmp-*"))  # no temporary file left behind


def test_round_trip_labels_from_object_lands_on_the_same_voxel(tmp_path, project):
    """extract --labels-from-object -> export -> extract the exported picks: same boxes."""
    pool = tmp_path / "seed.h5"
    assert cli("extract", "--copick", project, "--voxel-spacing", SPACING, "--labels-from-object",
               "-o", pool, "--box", 8).exit_code == 0
    res = cli("export-copick", pool, project, "--session", "s1")
    assert res.exit_code == 0, res.output
    again = tmp_path / "again.h5"
    res = cli("extract", "--copick", project, "--voxel-spacing", SPACING, "--user", "cryoal", "-o", again,
              "--box", 8)
    assert res.exit_code == 0, res.output
    with open_pool(pool) as a, open_pool(again) as b:
        assert len(a) == len(b)
        def key(p, i):
            return (p.tomos[i], p.meta("copick_object")[i], *np.round(p.coords[i], 3))

        index_a = {key(a, i): i for i in range(len(a))}
        for j in range(len(b)):
            i = index_a[key(b, j)]
            np.testing.assert_array_equal(a.read([i]), b.read([j]))


def test_selection_and_predictions(tmp_path, project, pool):
    # no labels in the pool: the selection and predictions alone are exported
    with open_pool(pool) as p:
        ids = list(p.particle_ids)
        tomos = {pid: p.tomos[i] for i, pid in enumerate(ids)}
    picked = ids[::2]
    sel = tmp_path / "to_label.csv"
    sel.write_text("rank,particle_id,score,label\n" + "".join(
        f"{r},{pid},{10.0 - r / 4},\n" for r, pid in enumerate(picked, start=1)))
    pred = tmp_path / "predictions.csv"
    pred.write_text("particle_id,predicted_label,confidence,p_ribosome,p_apoferritin\n" + "".join(
        f"{pid},{'ribosome' if n % 3 else 'apoferritin'},{0.5 + n / 100},0.5,0.5\n"
        for n, pid in enumerate(ids)))
    res = cli("export-copick", pool, project, "--session", "s2", "--selection", sel, "--predictions", pred)
    assert res.exit_code == 0, res.output
    assert "added object cryoal-to-label" in res.stdout

    want = expected_locations(pool)
    got = read_points(project, "cryoal", "s2")
    assert {obj for _, obj in got} == {"cryoal-to-label"}
    for run in ("TS_01", "TS_02"):
        in_run = [pid for pid in picked if tomos[pid] == run]
        locations, scores, instance = got[(run, "cryoal-to-label")]
        ranks = [picked.index(pid) + 1 for pid in in_run]
        assert instance.tolist() == ranks  # rank order kept
        np.testing.assert_allclose(scores, [10.0 - r / 4 for r in ranks])
        np.testing.assert_allclose(locations, [want[pid] for pid in in_run], atol=1e-3)

    predicted = read_points(project, "cryoal-predicted", "s2")
    assert sum(len(v[0]) for v in predicted.values()) == len(ids)
    for n, pid in enumerate(ids):
        obj = "ribosome" if n % 3 else "apoferritin"
        locations, scores, _ = predicted[(tomos[pid], obj)]
        k = np.flatnonzero(np.all(np.abs(locations - want[pid]) <= 1e-3, axis=1))
        assert k.size == 1 and scores[k[0]] == pytest.approx(0.5 + n / 100)


def test_existing_session_refused_unless_overwrite(tmp_path, project, pool):
    with open_pool(pool) as p:
        ids = list(p.particle_ids)
    label(pool, tmp_path, {ids[0]: "ribosome", ids[1]: "apoferritin"})
    assert cli("export-copick", pool, project, "--session", "s3").exit_code == 0
    state = tree_digest(project.parent)
    res = cli("export-copick", pool, project, "--session", "s3")
    assert_one_error(res, "copick.json", "already has session 's3'", "--overwrite")
    assert tree_digest(project.parent) == state

    # relabel: apoferritin disappears from the labels; --overwrite replaces the session and drops
    # its stale file, and leaves everyone else's picks alone
    others = tree_digest(project.parent, skip=not_cryoal)
    label(pool, tmp_path, {ids[1]: "ribosome"})
    res = cli("export-copick", pool, project, "--session", "s3", "--overwrite")
    assert res.exit_code == 0, res.output
    got = read_points(project, "cryoal", "s3")
    assert set(got) == {("TS_01", "ribosome")} and len(got[("TS_01", "ribosome")][0]) == 2
    assert tree_digest(project.parent, skip=not_cryoal) == others


def _bad_export(kind: str, tmp: Path, project: Path, pool: Path) -> tuple[list, str]:
    with open_pool(pool) as p:
        ids = list(p.particle_ids)
    if kind == "missing-object":
        label(pool, tmp, {ids[0]: "proteasome"})
        return [pool, project], "object 'proteasome' is not in the config"
    label(pool, tmp, {ids[0]: "ribosome"})
    if kind == "config-not-json":
        bad = tmp / "bad.json"
        bad.write_text("[1, 2")
        return [pool, bad], "bad.json: not a copick config"
    if kind == "bad-session-name":
        return [pool, project, "--session", "my_session"], "--session 'my_session'"
    if kind == "unknown-id-in-selection":
        sel = tmp / "sel.csv"
        sel.write_text("rank,particle_id,score\n1,nope,0.5\n")
        return [pool, project, "--selection", sel], "sel.csv: row 2: particle id 'nope'"
    if kind == "unknown-run":
        other = tmp / "other"
        from copick_project import write_config

        return [pool, write_config(other)], "no run 'TS_01'"
    if kind == "pool-missing":
        return [tmp / "none.h5", project], "none.h5: pool file not found"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing-object", "config-not-json", "bad-session-name",
                                  "unknown-id-in-selection", "unknown-run", "pool-missing"])
def test_bad_export_one_line_exit_1_nothing_written(kind, tmp_path, project, pool):
    args, culprit = _bad_export(kind, tmp_path, project, pool)
    state = tree_digest(tmp_path, skip=lambda p: p.suffix in (".h5", ".lock", ".csv"))
    res = cli("export-copick", *args)
    assert_one_error(res, culprit)
    assert tree_digest(tmp_path, skip=lambda p: p.suffix in (".h5", ".lock", ".csv")) == state


def test_pool_not_from_copick_needs_pixel_size(tmp_path, project, pool):
    """A pool extracted from MRC + STAR knows only pixel coords: --pixel-size converts them."""
    from test_copick import level_array, write_reference

    arrays = {run: level_array(project, run, SPACING) for run in ("TS_01", "TS_02")}
    star, tomo_dir = write_reference(tmp_path, project, arrays, SPACING)
    mrc_pool = tmp_path / "mrc.h5"
    assert cli("extract", star, "-t", tomo_dir, "-o", mrc_pool, "--box", 8).exit_code == 0
    with open_pool(mrc_pool) as p:
        first = p.particle_ids[0]
    label(mrc_pool, tmp_path, {first: "ribosome"})
    assert_one_error(cli("export-copick", mrc_pool, project, "--session", "m"), "--pixel-size")
    res = cli("export-copick", mrc_pool, project, "--session", "m", "--pixel-size", SPACING)
    assert res.exit_code == 0, res.output
    (run, obj), (locations, _, _) = next(iter(read_points(project, "cryoal", "m").items()))
    np.testing.assert_allclose(locations[0], expected_locations(pool)[first], atol=1e-3)
