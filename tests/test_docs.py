"""The front door: README.md stays short and links into docs/, every relative link and anchor in
README.md and docs/*.md resolves, and the studies' prose agrees with the results it quotes."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
# [text](target) and ![alt](target), with an optional "title"; the text may hold one level of [..]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """Markdown without fenced blocks and code spans, where `[x](y)` is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation other than '-' and
    '_' dropped, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file defines: one per heading, repeats numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for match in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    """The targets of every relative link and image in a Markdown file (URLs left out)."""
    targets = LINK.findall(prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` whose file does not exist or whose anchor names no heading."""
    bad = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return bad


def test_slugs_follow_github():
    assert github_slug("How cryoal chooses: gradient-norm selection") == (
        "how-cryoal-chooses-gradient-norm-selection")
    assert github_slug("Where cryoal departs from DESIGN.md") == "where-cryoal-departs-from-designmd"
    assert github_slug("ingest, label, status") == "ingest-label-status"
    assert github_slug("The SNR study, and an honest result") == "the-snr-study-and-an-honest-result"
    assert github_slug("`cryoal benchmark` and its_files") == "cryoal-benchmark-and-its_files"


def test_the_checker_finds_what_is_broken(tmp_path):
    (tmp_path / "b.md").write_text("# Only heading\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    (tmp_path / "a.md").write_text(
        "# A\n[ok](b.md#only-heading) [ok2](b.md#twice-1) [self](#a) ![img](b.md) [web](https://x.org/#y)\n"
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
        "[bad file](c.md) [bad anchor](b.md#twice-2) [bad self](#b) ![bad image](pic.png)\n",
        encoding="utf-8")
    assert broken_links(tmp_path / "a.md") == [
        "c.md: no such file", "b.md#twice-2: no heading with anchor #twice-2 in b.md",
        "#b: no heading with anchor #b in a.md", "pic.png: no such file",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    assert relative_links(page), "no link checked"
    assert broken_links(page) == []


def test_readme_is_a_front_door_that_links_every_docs_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 320
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    assert {p.resolve() for p in PAGES[1:]} <= linked
    # the reference, the studies, the departures and the development notes live in docs/
    for heading in ("## simulate", "### The SNR study", "### The powered study", "## Where cryoal departs",
                    "## Development"):
        assert not re.search(rf"^{re.escape(heading)}", text, re.M), heading


# ------------------------------------------------------------------------------------------
# the studies' prose against the results it quotes
# ------------------------------------------------------------------------------------------

STUDIES = ROOT / "docs" / "studies.md"
NUMBER = r"[+\-−]?\d+\.\d+"


def _num(text: str) -> float:
    return float(text.replace("−", "-"))


def test_larger_rb3d_cycle0_range_is_what_its_curves_say():
    accs = []
    for snr in ("0.1", "0.05"):
        with open(ROOT / "benchmarks/results/larger_rb3d" / f"snr_{snr}" / "curves.csv", newline="") as fh:
            accs += [float(r["accuracy"]) for r in csv.DictReader(fh) if r["cycle"] == "0"]
    text = " ".join(STUDIES.read_text(encoding="utf-8").split())
    claim = re.search(r"40 → 80 labels, cycle-0 test accuracy (\d\.\d\d)–(\d\.\d\d) per seed", text)
    assert claim, "the 5-class study's cycle-0 range is not stated"
    assert (float(claim.group(1)), float(claim.group(2))) == (round(min(accs), 2), round(max(accs), 2))


def test_the_ruled_out_gain_covers_every_upper_limit():
    """"They rule out a gain of more than X at SNR 0.1 and Y at SNR 0.05": X and Y must be the
    largest upper 95 % limits of the paired table, not a round number below some of them."""
    text = STUDIES.read_text(encoding="utf-8")
    table = text.split("<!-- study:begin -->")[1].split("<!-- study:end -->")[0]
    paired = table.split("| scheme − random |")[1].split("\n\n")[0]
    uppers: dict[str, list[float]] = {"0.1": [], "0.05": []}
    for row in paired.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for snr, cell in zip(("0.1", "0.05"), cells[1:3], strict=True):
            uppers[snr].append(_num(re.search(rf"\[{NUMBER}, ({NUMBER})\]", cell).group(1)))
    assert len(uppers["0.1"]) == 10
    prose_text = " ".join(text.split())
    claim = re.search(rf"a gain of more than ({NUMBER}) at SNR 0.1 and ({NUMBER}) at SNR 0.05", prose_text)
    assert claim, "the ruled-out gain is not stated per SNR"
    assert _num(claim.group(1)) == pytest.approx(max(uppers["0.1"]))
    assert _num(claim.group(2)) == pytest.approx(max(uppers["0.05"]))


def test_the_recommended_pick_says_it_was_chosen_on_the_test_split():
    for page in (STUDIES, ROOT / "docs" / "selection.md", ROOT / "README.md"):
        text = " ".join(page.read_text(encoding="utf-8").split())
        assert "test-split AUBC" in text, page.name
    assert "was tuned on a test split" not in STUDIES.read_text(encoding="utf-8")
