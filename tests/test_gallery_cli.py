"""`cryoal gallery`: pages, captions, modes, the HTML page's data, and bad input."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cryoal.cli import app
from cryoal.gallery import MARKER, build, montage
from cryoal.io.pool import PoolWriter

BOX = 12
CLASSES = ["ball", "rod", "ring"]


def make_pool(path: Path, n: int = 10, *, mode: str = "subtomogram", voxel_size: float = 10.0,
              labelled: int = 0, prefix: str = "p") -> list[str]:
    """A small pool of noisy particles; the first `labelled` are labelled round-robin."""
    rng = np.random.default_rng(0)
    shape = (BOX, BOX, BOX) if mode == "subtomogram" else (BOX, BOX)
    vols = rng.normal(size=(n, *shape)).astype(np.float32)
    ids = [f"{prefix}{k:03d}" for k in range(n)]
    labels = [k % len(CLASSES) if k < labelled else -1 for k in range(n)]
    masks = None
    if mode == "segmentation":
        masks = np.zeros((n, *shape), np.int16)
        masks[:, :, : BOX // 2] = 1  # left half is class 1
    with PoolWriter(path, mode=mode, shape=shape, voxel_size=voxel_size, class_names=CLASSES) as w:
        w.add(vols, ids, [f"src/{i}.mrc" for i in ids], labels=labels, masks=masks)
    return ids


def write_selection(path: Path, ids: list[str], ranks: list[int]) -> None:
    """A CSV in `cryoal select`'s format (DESIGN.md section 4)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "particle_id", "score", "predicted_label", "confidence",
                    "source", "tomo", "x", "y", "z", "label"])
        for pid, r in zip(ids, ranks, strict=True):
            w.writerow([r, pid, 10.0 / r, CLASSES[r % 3], f"{0.5 + 0.01 * r:.6f}", f"src/{pid}.mrc",
                        "", "", "", "", ""])


def run(*args: str):
    return CliRunner().invoke(app, ["gallery", *map(str, args)])


def page_data(index_html: Path) -> dict:
    text = index_html.read_text(encoding="utf-8")
    m = re.search(r'<script id="gallery-data" type="application/json">(.*?)</script>', text, re.S)
    assert m, "no data block in index.html"
    return json.loads(m.group(1))


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture
def pool(tmp_path) -> Path:
    p = tmp_path / "pool.h5"
    make_pool(p, n=10, labelled=6)
    return p


def test_selection_in_rank_order_with_captions_and_pages(tmp_path, pool):
    ids = [f"p{k:03d}" for k in range(7)]
    ranks = [3, 1, 7, 2, 6, 4, 5]  # the file is not sorted by rank: the gallery must sort it
    sel = tmp_path / "to_label.csv"
    write_selection(sel, ids, ranks)
    out = tmp_path / "g"
    r = run(pool, "--from", sel, "-o", out, "--per-page", 3, "--html")
    assert r.exit_code == 0, r.stderr
    by_rank = [pid for _, pid in sorted(zip(ranks, ids, strict=True))]
    marker = json.loads((out / MARKER).read_text())
    assert marker["particle_ids"] == by_rank
    pages = sorted(out.glob("page-*.png"))
    assert [p.name for p in pages] == ["page-001.png", "page-002.png", "page-003.png"]  # 7 at 3 a page
    assert r.stdout.split() == [str(out / p.name) for p in pages] + [str(out / "index.html")]
    data = page_data(out / "index.html")
    assert [it["id"] for it in data["items"]] == by_rank
    assert [it["rank"] for it in data["items"]] == list(range(1, 8))
    first = data["items"][0]
    assert (first["pred"], first["conf"]) == (CLASSES[1 % 3], "0.51")
    assert data["classes"] == CLASSES
    assert data["storageKey"].startswith("cryoal-gallery:pool.h5-")
    assert data["storageKey"].endswith(":" + marker["gallery_id"])
    assert first["img"].startswith("data:image/png;base64,")
    # Page size: a 3-column grid of equal tiles (last page holds 1 tile).
    cols = montage.page_columns(3)
    sizes = [Image.open(p).size for p in pages]
    assert sizes[0] == sizes[1] and sizes[2][0] < sizes[0][0]
    tile_w = (sizes[0][0] - 8) // cols - 8
    cell = BOX * montage.panel_scale((BOX, BOX))
    assert tile_w == montage.GAP + 2 * (cell + montage.GAP)  # 2x2 panels per subtomogram
    assert leftovers(tmp_path) == []


def test_limit_and_ids_file(tmp_path, pool):
    sel = tmp_path / "to_label.csv"
    write_selection(sel, [f"p{k:03d}" for k in range(6)], [1, 2, 3, 4, 5, 6])
    r = run(pool, "--from", sel, "-o", tmp_path / "g", "--limit", 2)
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "g" / MARKER).read_text())["particle_ids"] == ["p000", "p001"]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("p009\np004\n\np002\n")
    r = run(pool, "--ids", f"@{ids_file}", "-o", tmp_path / "g2")
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "g2" / MARKER).read_text())["particle_ids"] == ["p009", "p004", "p002"]


def test_labelled_examples_per_class(tmp_path, pool):
    r = run(pool, "--labelled", "--per-class", 1, "-o", tmp_path / "g", "--html")
    assert r.exit_code == 0, r.stderr
    items = page_data(tmp_path / "g" / "index.html")["items"]
    # Labels were k % 3 for k < 6: one example of each class, in class order.
    assert [it["label"] for it in items] == CLASSES
    assert all(int(it["id"][1:]) % 3 == k for k, it in enumerate(items))


def test_predictions_caption(tmp_path, pool):
    pred = tmp_path / "predictions.csv"
    with open(pred, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["particle_id", "predicted_label", "confidence", "p_ball", "p_rod", "p_ring"])
        for k in range(10):
            w.writerow([f"p{k:03d}", "ring", 0.123456 + k / 100, 0.1, 0.2, 0.7])
    r = run(pool, "--ids", "p004,p002", "--predictions", pred, "-o", tmp_path / "g", "--html")
    assert r.exit_code == 0, r.stderr
    items = page_data(tmp_path / "g" / "index.html")["items"]
    got = [(it["id"], it["pred"], it["conf"]) for it in items]
    assert got == [("p004", "ring", "0.16"), ("p002", "ring", "0.14")]


def test_html_is_self_contained(tmp_path, pool):
    r = run(pool, "--ids", "p001", "-o", tmp_path / "g", "--html")
    assert r.exit_code == 0, r.stderr
    text = (tmp_path / "g" / "index.html").read_text()
    assert "http://" not in text and "https://" not in text  # no network, no CDN
    assert not re.search(r"<(script|img|link)[^>]*\b(src|href)=\"(?!data:)", text)
    assert "__CRYOAL_" not in text  # every placeholder filled
    assert "Export labels" in text and "localStorage" in text


def test_image_mode_one_view_per_tile(tmp_path):
    p = tmp_path / "img.h5"
    make_pool(p, n=4, mode="image")
    r = run(p, "--ids", "p000,p001,p002,p003", "-o", tmp_path / "g", "--html", "--per-page", 4)
    assert r.exit_code == 0, r.stderr
    item = page_data(tmp_path / "g" / "index.html")["items"][0]
    cell = BOX * montage.panel_scale((BOX, BOX))
    assert (item["w"], item["h"]) == (cell + 2 * montage.GAP, cell + 2 * montage.GAP)


def _coloured(img: Image.Image) -> np.ndarray:
    a = np.asarray(img.convert("RGB")).astype(int)
    return (np.abs(a[..., 0] - a[..., 1]) > 20) | (np.abs(a[..., 1] - a[..., 2]) > 20)


def test_segmentation_overlays_pool_mask_or_given_masks(tmp_path):
    p = tmp_path / "seg.h5"
    make_pool(p, n=3, mode="segmentation")
    r = run(p, "--ids", "p000", "-o", tmp_path / "g", "--html")
    assert r.exit_code == 0, r.stderr
    page = Image.open(tmp_path / "g" / "page-001.png")
    col = _coloured(page)
    assert col.any()
    # The pool's mask covers the left half (x < BOX/2): the colour sits in the left half of the
    # right-hand (image + mask) panel, never in the plain image panel on the left.
    cell = BOX * montage.panel_scale((BOX, BOX))
    ys, xs = np.nonzero(col)
    pad = 8
    x0 = pad + montage.GAP + cell + montage.GAP  # left edge of the overlay panel on the page
    assert xs.min() >= x0 and xs.max() < x0 + cell // 2
    # --masks replaces the pool's mask: all-background predictions colour nothing.
    npy = tmp_path / "pred.npy"
    np.save(npy, np.zeros((3, BOX, BOX), np.int64))
    r = run(p, "--ids", "p000", "-o", tmp_path / "g", "--masks", npy)
    assert r.exit_code == 0, r.stderr
    assert not _coloured(Image.open(tmp_path / "g" / "page-001.png")).any()
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, BOX, BOX), np.int64))
    r = run(p, "--ids", "p000", "-o", tmp_path / "g3", "--masks", bad)
    assert r.exit_code == 1 and "bad.npy" in r.stderr and "(3, 12, 12)" in r.stderr
    assert not (tmp_path / "g3").exists()


@pytest.mark.parametrize("box", [8, 33, 200])
def test_any_box_size(tmp_path, box):
    p = tmp_path / "pool.h5"
    vols = np.random.default_rng(0).normal(size=(2, box, box, box)).astype(np.float32)
    with PoolWriter(p, shape=(box,) * 3, voxel_size=float("nan")) as w:
        w.add(vols, ["a", "b"], ["s1", "s2"])
    r = run(p, "--ids", "a,b", "-o", tmp_path / "g", "--html")
    assert r.exit_code == 0, r.stderr
    item = page_data(tmp_path / "g" / "index.html")["items"][0]
    cell = round(box * montage.panel_scale((box, box)))
    assert item["w"] == montage.GAP + 2 * (cell + montage.GAP)
    assert 96 <= cell <= 160 or cell == box


# ---- bad input: one line, exit 1, nothing written ------------------------------------------------


def assert_one_line_error(r, *needles):
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_unknown_ids(tmp_path, pool):
    r = run(pool, "--ids", "p001,nope,p002,nope2", "-o", tmp_path / "g")
    assert_one_line_error(r, "'nope'", "1 more", "pool.h5")
    assert not (tmp_path / "g").exists() and leftovers(tmp_path) == []


def test_selection_from_another_pool(tmp_path, pool):
    other = tmp_path / "other.h5"
    make_pool(other, n=5, prefix="q")
    sel = tmp_path / "to_label.csv"
    write_selection(sel, ["q000", "q001", "q002"], [1, 2, 3])
    r = run(pool, "--from", sel, "-o", tmp_path / "g")
    assert_one_line_error(r, "to_label.csv", "another pool", "'q000'")
    assert not (tmp_path / "g").exists() and leftovers(tmp_path) == []
    write_selection(sel, ["p000", "p000"], [1, 2])
    assert_one_line_error(run(pool, "--from", sel, "-o", tmp_path / "g"), "listed twice")


def test_predictions_from_another_pool(tmp_path, pool):
    pred = tmp_path / "predictions.csv"
    pred.write_text("particle_id,predicted_label,confidence\nq000,ball,0.9\n")
    r = run(pool, "--ids", "p000", "--predictions", pred, "-o", tmp_path / "g")
    assert_one_line_error(r, "predictions.csv", "'p000'")
    assert not (tmp_path / "g").exists()


def test_existing_directory_rules(tmp_path, pool):
    out = tmp_path / "results"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    r = run(pool, "--ids", "p000", "-o", out)
    assert_one_line_error(r, "results", "not a cryoal gallery", "--force")
    assert (out / "precious.txt").read_text() == "keep me" and not (out / MARKER).exists()
    # An earlier gallery is replaced without --force.
    g = tmp_path / "g"
    assert run(pool, "--ids", "p000,p001", "-o", g, "--per-page", 1).exit_code == 0
    assert len(list(g.glob("page-*.png"))) == 2
    assert run(pool, "--ids", "p003", "-o", g).exit_code == 0
    assert [p.name for p in g.glob("page-*.png")] == ["page-001.png"]
    assert json.loads((g / MARKER).read_text())["particle_ids"] == ["p003"]
    # --force replaces anything; an empty directory needs no --force.
    assert run(pool, "--ids", "p000", "-o", out, "--force").exit_code == 0
    assert not (out / "precious.txt").exists() and (out / MARKER).exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(pool, "--ids", "p000", "-o", empty).exit_code == 0
    # Never the directory holding the pool, even with --force; never a file.
    assert_one_line_error(run(pool, "--ids", "p000", "-o", tmp_path, "--force"), "pool.h5")
    assert pool.exists()
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_one_line_error(run(pool, "--ids", "p000", "-o", f, "--force"), "not a directory")
    assert leftovers(tmp_path) == []


def test_failure_mid_render_leaves_previous_gallery(tmp_path, pool, monkeypatch):
    g = tmp_path / "g"
    assert run(pool, "--ids", "p000", "-o", g).exit_code == 0
    before = {p.name: p.read_bytes() for p in g.iterdir()}
    calls = []

    def failing_save(img, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        img.save(path, format="PNG")

    monkeypatch.setattr(build.montage, "save_png", failing_save)
    r = run(pool, "--ids", "p001,p002,p003", "-o", g, "--per-page", 1)
    assert_one_line_error(r, "No space left")
    assert {p.name: p.read_bytes() for p in g.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_usage_and_option_errors(tmp_path, pool):
    r = run(pool, "-o", tmp_path / "g")
    assert r.exit_code == 2 and "--from" in r.stderr
    r = run(pool, "--ids", "p000", "--labelled", "-o", tmp_path / "g")
    assert r.exit_code == 2 and "conflict" in r.stderr
    assert_one_line_error(run(tmp_path / "missing.h5", "--ids", "a", "-o", tmp_path / "g"), "missing.h5")
    nan_pool = tmp_path / "novs.h5"
    make_pool(nan_pool, n=2, voxel_size=math.nan)
    assert_one_line_error(run(nan_pool, "--ids", "p000", "--lowpass", 30, "-o", tmp_path / "g"), "voxel size")
    assert run(nan_pool, "--ids", "p000", "--lowpass", 0, "-o", tmp_path / "g").exit_code == 0
    assert_one_line_error(run(nan_pool, "--labelled", "-o", tmp_path / "h"), "no labelled")
    assert not (tmp_path / "h").exists()
    assert_one_line_error(run(pool, "--ids", "p000", "--masks", tmp_path / "x.npy", "-o", tmp_path / "h"),
                          "segmentation")


def test_slab_and_lowpass_defaults_and_options(tmp_path, pool):
    assert run(pool, "--ids", "p000", "-o", tmp_path / "g").exit_code == 0
    marker = json.loads((tmp_path / "g" / MARKER).read_text())
    assert (marker["slab"], marker["lowpass_A"]) == (BOX // 4, 35.0)  # box/4; 3.5 voxels of 10 Å
    r = run(pool, "--ids", "p000", "-o", tmp_path / "g", "--slab", 5, "--lowpass", 50, "--invert",
            "--clip", 2.5)
    assert r.exit_code == 0, r.stderr
    marker = json.loads((tmp_path / "g" / MARKER).read_text())
    assert (marker["slab"], marker["lowpass_A"]) == (5, 50.0)
