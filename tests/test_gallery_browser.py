"""The labelling page in a real browser: label by keyboard and click, reload, export, `cryoal label`.

Needs Debian's chromium (`scripts/ensure_chromium.sh`, which CI runs) and Playwright's Python
package; Playwright's own browser download is never used. Without them the test is skipped,
with the reason, never passed.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryoal.io.pool import PoolWriter, open_pool

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CLASSES = ["ball", "rod", "ring"]
BOX = 12


def chromium_path() -> str | None:
    for cand in (os.environ.get("CRYOAL_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _skip_or_fail(reason: str) -> None:
    # CI sets CRYOAL_REQUIRE_BROWSER: there a missing browser is a failure, never a silent skip.
    if os.environ.get("CRYOAL_REQUIRE_BROWSER"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("Playwright's Python package is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        _skip_or_fail("no system Chromium found (run scripts/ensure_chromium.sh, or set CRYOAL_CHROMIUM)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def cryoal(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryoal", *map(str, args)], capture_output=True, text=True)


TRAINING_LABELS = {f"tomo1_{k:03d}": CLASSES[k % 3] for k in range(10, 16)}  # 2 per class


@pytest.fixture(scope="module")
def real_selection(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A real `cryoal select` output: 16 particles, 6 labelled, a 1-epoch model, the top 8 by entropy."""
    base = tmp_path_factory.mktemp("selection")
    pool = base / "pool.h5"
    ids = [f"tomo1_{k:03d}" for k in range(16)]
    vols = np.random.default_rng(0).normal(size=(16, BOX, BOX, BOX)).astype(np.float32)
    labels = [CLASSES.index(TRAINING_LABELS[i]) if i in TRAINING_LABELS else -1 for i in ids]
    with PoolWriter(pool, shape=(BOX,) * 3, voxel_size=10.0, class_names=CLASSES) as w:
        w.add(vols, ids, [f"src/{i}.mrc" for i in ids], labels=np.array(labels))
    model, sel = base / "model.pt", base / "to_label.csv"
    for args in (("train", pool, "-o", model, "--epochs", "1", "--val-fraction", "0", "--batch-size", "6",
                  "--seed", "0", "--device", "cpu"),
                 ("select", pool, "-m", model, "--scheme", "entropy", "-n", "8", "-o", sel,
                  "--device", "cpu")):
        r = cryoal(*args)
        assert r.returncode == 0, r.stderr
    with open(sel, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["rank"]) for r in rows] == list(range(1, 9))
    return pool, sel, [r["particle_id"] for r in rows]


@pytest.fixture
def make_selection(real_selection, tmp_path):
    """A private copy of the pool (labelling changes it) with the real selection CSV and its rank order."""
    pool, sel, order = real_selection
    shutil.copy(pool, tmp_path / "pool.h5")
    return tmp_path / "pool.h5", sel, order


def open_page(context, index: Path):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page, errors


def card_labels(page) -> list[str]:
    return page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.label)")


def test_label_reload_export_import_round_trip(browser, tmp_path, make_selection):
    pool, sel, order = make_selection
    out = tmp_path / "gallery"
    r = cryoal("gallery", pool, "--from", sel, "-o", out, "--html")
    assert r.returncode == 0, r.stderr
    index = out / "index.html"

    context = browser.new_context(accept_downloads=True)
    page, errors = open_page(context, index)
    assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.pid)") == order
    assert page.locator("#progress").inner_text().startswith("0 / 8")

    kb = page.keyboard
    kb.press("1")  # card 0 -> ball, moves on
    kb.press("3")  # card 1 -> ring
    kb.press("s")  # card 2 -> unsure (not exported)
    kb.press("2")  # card 3 -> rod
    # A new class, typed in; it becomes key 4.
    page.fill("#new-class-name", "spiky")
    page.press("#new-class-name", "Enter")
    kb.press("4")  # card 4 -> spiky
    kb.press("1")  # card 5 -> ball ...
    kb.press("ArrowLeft")
    kb.press("Backspace")  # ... then cleared again
    kb.press("ArrowRight")
    kb.press("ArrowRight")  # card 7
    kb.press("9")  # no 9th class: ignored
    page.locator(".card").nth(6).locator("button[data-cls='rod']").click()  # card 6 by click
    expected = {order[0]: "ball", order[1]: "ring", order[3]: "rod", order[4]: "spiky", order[6]: "rod"}
    want_cards = [expected.get(pid, "unsure" if k == 2 else "") for k, pid in enumerate(order)]
    assert card_labels(page) == want_cards
    assert page.locator("#progress").inner_text() == "5 / 8 labelled · 1 unsure"

    page.reload()  # localStorage keeps everything, including the new class
    page.wait_for_selector("body[data-ready='1']")
    assert card_labels(page) == want_cards
    assert page.locator("#progress").inner_text() == "5 / 8 labelled · 1 unsure"
    assert page.locator("#legend").inner_text().split()[-2:] == ["4", "spiky"]
    assert "--add-classes" in page.locator("#help").inner_text()

    with page.expect_download() as dl:
        page.click("#export")
    download = dl.value
    assert download.suggested_filename == "labels.csv"
    labels_csv = tmp_path / "labels.csv"
    download.save_as(labels_csv)
    rows = list(csv.reader(labels_csv.open(newline="")))
    assert rows[0] == ["particle_id", "label"]
    assert rows[1:] == [[pid, expected[pid]] for pid in order if pid in expected]  # gallery order

    # A different gallery (another selection) does not share these labels.
    r = cryoal("gallery", pool, "--ids", ",".join(order[:3]), "-o", tmp_path / "other", "--html")
    assert r.returncode == 0, r.stderr
    other, other_errors = open_page(context, tmp_path / "other" / "index.html")
    assert card_labels(other) == ["", "", ""]
    assert errors == [] and other_errors == []
    context.close()

    r = cryoal("label", pool, labels_csv, "--add-classes")
    assert r.returncode == 0, r.stderr
    with open_pool(pool) as p:
        names = p.class_names
        got = {pid: (names[k] if k >= 0 else None) for pid, k in zip(p.particle_ids, p.labels, strict=True)}
    assert names[:3] == CLASSES and "spiky" in names
    assert {pid: lab for pid, lab in got.items() if lab is not None} == {**TRAINING_LABELS, **expected}


def test_cards_images_and_arrow_navigation(browser, tmp_path, make_selection):
    """One card per particle with its image and class buttons; arrows move along and across rows."""
    pool, sel, order = make_selection
    out = tmp_path / "gallery"
    assert cryoal("gallery", pool, "--from", sel, "-o", out, "--html").returncode == 0
    context = browser.new_context(viewport={"width": 900, "height": 700})
    page, errors = open_page(context, out / "index.html")
    loaded = "im => im.filter(i => i.complete && i.naturalWidth > 0).length"
    assert page.eval_on_selector_all(".card img", loaded) == len(order)
    assert page.locator(".card").first.locator("button[data-cls]").count() == len(CLASSES) + 1  # + unsure
    current = "() => { const c = document.querySelector('.card.current'); " \
              "return [Number(c.dataset.idx), c.offsetLeft, c.offsetTop]; }"
    i0, left0, top0 = page.evaluate(current)
    assert i0 == 0
    page.keyboard.press("ArrowRight")
    assert page.evaluate(current)[0] == 1
    page.keyboard.press("ArrowDown")  # next row, same column
    i, left, top = page.evaluate(current)
    assert i > 1 and top > top0 and left == page.locator(".card").nth(1).evaluate("c => c.offsetLeft")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowLeft")
    assert page.evaluate(current) == [0, left0, top0]
    assert page.screenshot()[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors == []
    context.close()
