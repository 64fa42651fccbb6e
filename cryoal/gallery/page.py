"""The static labelling page: one self-contained `index.html` (CSS, JS and images inlined).

The template, stylesheet and script are package data files beside this module, plain
HTML/CSS/JS with no build step; this module only fills in the gallery's data.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from PIL import Image

from cryoal.gallery.montage import as_grey_if_colourless

STORAGE_PREFIX = "cryoal-gallery"


@dataclass
class Card:
    """What one card of the page shows."""

    particle_id: str
    rank: int
    predicted: str
    confidence: str
    label: str
    image: Image.Image


def png_data_uri(img: Image.Image) -> str:
    """A PNG as a data: URI (greyscale when the image has no colour, which halves its size)."""
    buf = io.BytesIO()
    as_grey_if_colourless(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _asset(name: str) -> str:
    return resources.files("cryoal.gallery").joinpath(name).read_text(encoding="utf-8")


def _json_for_script(obj: object) -> str:
    """JSON that is safe inside <script>: no `</script>` or `<!--` can appear in it."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(
    cards: list[Card],
    *,
    title: str,
    class_names: list[str],
    pool_key: str,
    gallery_id: str,
    label_command: str,
    views_legend: str,
) -> str:
    """The complete index.html text."""
    data = {
        "title": title,
        "classes": list(class_names),
        "storageKey": f"{STORAGE_PREFIX}:{pool_key}:{gallery_id}",
        "labelCommand": label_command,
        "views": views_legend,
        "items": [
            {
                "id": c.particle_id, "rank": c.rank, "pred": c.predicted, "conf": c.confidence,
                "label": c.label, "img": png_data_uri(c.image), "w": c.image.width, "h": c.image.height,
            }
            for c in cards
        ],
    }
    fills = {
        "__CRYOAL_TITLE__": html.escape(title),
        "__CRYOAL_CSS__": _asset("gallery.css"),
        "__CRYOAL_JS__": _asset("gallery.js"),
        "__CRYOAL_DATA__": _json_for_script(data),
    }
    # One pass, so that text filled in is never searched for further placeholders.
    return re.sub("|".join(fills), lambda m: fills[m.group(0)], _asset("index.html"))


def write_page(path: str | Path, text: str) -> None:
    """Write the page (callers write into a temporary gallery directory)."""
    Path(path).write_text(text, encoding="utf-8")
