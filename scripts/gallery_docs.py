"""Regenerate the README's gallery figures (docs/gallery-*.png) from simulated data.

    .venv/bin/python scripts/gallery_docs.py

Simulates 5 classes at SNR 0.05 and without noise, ingests them with 2 labelled examples per class,
renders `cryoal gallery --labelled` montages, and screenshots the labelling page in headless
Chromium (Playwright driving the system browser; see scripts/ensure_chromium.sh).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def cryoal(*args: object, cwd: Path | None = None) -> None:
    subprocess.run([sys.executable, "-m", "cryoal", *map(str, args)], check=True, cwd=cwd)


def make_gallery(work: Path, snr: str, tag: str) -> Path:
    sim, pool, out = work / f"sim_{tag}", work / f"pool_{tag}.h5", work / f"gallery_{tag}"
    cryoal("simulate", sim, "--classes", 5, "--per-class", 12, "--snr", snr, "--defocus", 5,
           "--seed", 5, "--seed-labels", 2)
    cryoal("ingest", sim / "particles.star", "-o", pool)
    cryoal("label", pool, sim / "seed_labels.csv")
    cryoal("gallery", pool, "--labelled", "--per-class", 2, "-o", out, "--html")
    return out


def unlabelled_gallery(work: Path, tag: str, n: int = 12) -> tuple[Path, list[str]]:
    """A labelling page of the first n unlabelled particles, made from the work dir (short paths)."""
    sim = work / f"sim_{tag}"
    seeds = {ln.split(",")[0] for ln in (sim / "seed_labels.csv").read_text().splitlines()[1:]}
    truth = [ln.split(",") for ln in (sim / "truth.csv").read_text().splitlines()[1:]]
    chosen = [(pid, lab) for pid, lab in truth if pid not in seeds][:n]
    ids = ",".join(pid for pid, _ in chosen)
    cryoal("gallery", f"pool_{tag}.h5", "--ids", ids, "-o", "page", "--html", cwd=work)
    return work / "page", [lab for _, lab in chosen]


def screenshot(index: Path, png: Path, truth: list[str], classes: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1020, "height": 640})
        page.goto(index.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        # Label two cards correctly and mark one unsure: what a session in progress looks like.
        for key in (str(classes.index(truth[0]) + 1), str(classes.index(truth[1]) + 1), "0"):
            page.keyboard.press(key)
        page.screenshot(path=str(png))
        browser.close()


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        noisy = make_gallery(work, "0.05", "snr0.05")
        clean = make_gallery(work, "inf", "clean")
        shutil.copy(noisy / "page-001.png", DOCS / "gallery-montage-snr0.05.png")
        shutil.copy(clean / "page-001.png", DOCS / "gallery-montage-clean.png")
        page, truth = unlabelled_gallery(work, "snr0.05")
        classes = sorted(set(truth) | {ln.split(",")[1] for ln in
                                       (work / "sim_snr0.05" / "truth.csv").read_text().splitlines()[1:]})
        screenshot(page / "index.html", DOCS / "gallery-page.png", truth, classes)
    print("wrote docs/gallery-montage-snr0.05.png, docs/gallery-montage-clean.png, docs/gallery-page.png")


if __name__ == "__main__":
    main()
