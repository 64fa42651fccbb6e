"""Pillow rendering: a particle's views as one panel grid, captioned tiles, and montage pages.

A tile is the particle's panel grid (2x2 ``XY XZ / YZ proj`` for a volume, one panel for an
image, ``image | mask`` for segmentation) with caption lines under it. Pages are grids of tiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cryoal.gallery.views import to_uint8

# Panel layout per kind of particle: rows of view names ("" leaves the cell empty).
LAYOUT_3D = (("XY", "XZ"), ("YZ", "proj"))
LAYOUT_2D = (("image",),)
LAYOUT_SEG_2D = (("image", "image+mask"),)
LAYOUT_SEG_3D = (("XY+mask", "XZ+mask"), ("YZ+mask", "proj"))

GAP = 2  # pixels between panels and around the grid
BACKGROUND = (32, 32, 32)
PAGE_BACKGROUND = (255, 255, 255)
CAPTION_COLOUR = (20, 20, 20)
# Mask overlay colours for classes 1, 2, ... (class 0 is the background and -1 is unlabelled:
# both stay uncoloured so the image shows through).
MASK_COLOURS = np.array(
    [(230, 60, 50), (50, 160, 230), (250, 190, 30), (120, 200, 80), (200, 90, 220), (40, 210, 200),
     (255, 130, 40), (150, 150, 255), (255, 110, 170)],
    dtype=np.float64,
)
MASK_ALPHA = 0.45


def panel_scale(shape: Sequence[int], target: int = 96, largest: int = 160) -> float:
    """Zoom factor for a view of `shape`: integer upscale of small boxes to about `target` pixels,
    downscale of boxes bigger than `largest`, identity in between."""
    n = max(shape)
    if n < target:
        return float(max(1, round(target / n)))
    if n > largest:
        return largest / n
    return 1.0


def _resize(img: Image.Image, scale: float) -> Image.Image:
    if scale == 1.0:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # Bilinear for upscaling low-passed data; an area filter when shrinking avoids aliasing.
    return img.resize(size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX)


def overlay_mask(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend class colours over a uint8 grey view where mask >= 1; returns (H, W, 3) uint8."""
    rgb = np.repeat(grey[..., None].astype(np.float64), 3, axis=2)
    m = np.asarray(mask).astype(np.int64)
    hit = m >= 1
    if hit.any():
        colours = MASK_COLOURS[(m[hit] - 1) % len(MASK_COLOURS)]
        rgb[hit] = (1 - MASK_ALPHA) * rgb[hit] + MASK_ALPHA * colours
    return np.round(rgb).astype(np.uint8)


def layout_for(views: dict[str, np.ndarray], has_mask: bool) -> tuple[tuple[str, ...], ...]:
    """The panel layout for a particle's views."""
    if "image" in views:
        return LAYOUT_SEG_2D if has_mask else LAYOUT_2D
    return LAYOUT_SEG_3D if has_mask else LAYOUT_3D


def panel_grid(
    views: dict[str, np.ndarray],
    masks: dict[str, np.ndarray] | None = None,
    *,
    clip_percent: float = 1.0,
    invert: bool = False,
) -> Image.Image:
    """Render a particle's views (from `particle_views`) as one RGB image of panels.

    With `masks` (from `mask_planes`), panels named ``<view>+mask`` show the view with the
    mask's classes overlaid.
    """
    layout = layout_for(views, masks is not None)
    cells: dict[str, Image.Image] = {}
    for row in layout:
        for name in row:
            base = name.removesuffix("+mask")
            grey_img = Image.fromarray(to_uint8(views[base], clip_percent, invert))
            scale = panel_scale(views[base].shape)
            grey = np.asarray(_resize(grey_img, scale))
            if name.endswith("+mask") and masks is not None:
                # Nearest-neighbour for labels: a mask edge must stay sharp, never blend classes.
                m = Image.fromarray(np.asarray(masks[base], dtype=np.int32)).resize(
                    (grey.shape[1], grey.shape[0]), Image.Resampling.NEAREST
                )
                arr = overlay_mask(grey, np.asarray(m))
            else:
                arr = np.repeat(grey[..., None], 3, axis=2)
            cells[name] = Image.fromarray(np.ascontiguousarray(arr))
    cell_w = max(c.width for c in cells.values())
    cell_h = max(c.height for c in cells.values())
    n_cols = max(len(r) for r in layout)
    grid = Image.new(
        "RGB", (GAP + n_cols * (cell_w + GAP), GAP + len(layout) * (cell_h + GAP)), BACKGROUND
    )
    for r, row in enumerate(layout):
        for c, name in enumerate(row):
            grid.paste(cells[name], (GAP + c * (cell_w + GAP), GAP + r * (cell_h + GAP)))
    return grid


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, has Å and Σ), else Pillow's built-in font."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1 + FreeType)
    except (TypeError, OSError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten `text` with an ellipsis so that it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def captioned(panels: Image.Image, lines: Sequence[str], font_size: int = 12) -> Image.Image:
    """A tile: the panel grid with caption lines under it, each shortened to the tile width."""
    font = _font(font_size)
    line_h = font_size + 4
    tile = Image.new("RGB", (panels.width, panels.height + 4 + line_h * len(lines)), PAGE_BACKGROUND)
    tile.paste(panels, (0, 0))
    draw = ImageDraw.Draw(tile)
    for k, line in enumerate(lines):
        draw.text(
            (2, panels.height + 2 + k * line_h), _fit(draw, line, font, panels.width - 4),
            fill=CAPTION_COLOUR, font=font,
        )
    return tile


def page_columns(per_page: int) -> int:
    """Columns of a page: a landscape grid, e.g. 6 x 4 for 24 tiles."""
    return max(1, min(per_page, math.ceil(math.sqrt(per_page * 1.5))))


def compose_page(tiles: Sequence[Image.Image], columns: int, header: Sequence[str] = ()) -> Image.Image:
    """Arrange tiles row by row under optional header lines."""
    if not tiles:
        raise ValueError("a page needs at least one tile")
    font = _font(14)
    pad = 8
    head_h = (18 * len(header) + pad) if header else 0
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    page = Image.new("RGB", (pad + cols * (tw + pad), head_h + pad + rows * (th + pad)), PAGE_BACKGROUND)
    draw = ImageDraw.Draw(page)
    for k, line in enumerate(header):
        draw.text((pad, pad // 2 + 18 * k), _fit(draw, line, font, page.width - 2 * pad),
                  fill=CAPTION_COLOUR, font=font)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        page.paste(tile, (pad + c * (tw + pad), head_h + pad + r * (th + pad)))
    return page


def as_grey_if_colourless(img: Image.Image) -> Image.Image:
    """An RGB image with no colour as one grey channel: a third of the pixels, a smaller PNG."""
    if img.mode == "RGB":
        r, g, b = img.split()
        if r.tobytes() == g.tobytes() == b.tobytes():
            return r
    return img


def save_png(img: Image.Image, path: str | Path) -> None:
    """Write a PNG (callers write into a temporary gallery directory, renamed into place when done)."""
    as_grey_if_colourless(img).save(path, format="PNG")
