"""Build a gallery directory: montage pages, optional labelling page, and the `.cryoal-gallery` marker.

Everything is written into a temporary directory beside the target, which is renamed into
place only when complete; an existing directory is replaced only if it is a previous gallery
(it has the marker) or empty, or with `force`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import CryoalError, InputError, OptionError
from cryoal.gallery import montage, page
from cryoal.gallery.selection import Item
from cryoal.gallery.views import DEFAULT_LOWPASS_VOXELS, default_slab, mask_planes, particle_views
from cryoal.io.atomic import check_output_dir, remove_stale_temps
from cryoal.io.pool import Pool

MARKER = ".cryoal-gallery"
READ_BATCH = 32


@dataclass
class GalleryOptions:
    """How particles are drawn. `lowpass_A` None = the default (3.5 voxels); 0 = no filter."""

    slab: int | None = None
    lowpass_A: float | None = None
    clip_percent: float = 1.0
    invert: bool = False
    per_page: int = 24
    html: bool = False
    force: bool = False
    masks_path: Path | None = None


@dataclass
class GalleryResult:
    """What was written."""

    out_dir: Path
    pages: list[Path] = field(default_factory=list)
    html: Path | None = None
    n_particles: int = 0
    slab: int | None = None
    lowpass_A: float | None = None
    gallery_id: str = ""


def check_destination(out_dir: Path, force: bool, keep: Sequence[Path] = ()) -> None:
    """Refuse to replace a directory that is not a previous gallery (unless `force`), or a file.

    Never replaces a directory holding any path in `keep` (the pool) or the working directory,
    even with `force`.
    """
    check_output_dir(out_dir, directory=True)
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise CryoalError(f"{out_dir}: exists and is not a directory; choose another output directory")
    here = out_dir.resolve()
    for p in (*keep, Path.cwd()):
        if p.resolve() == here or here in p.resolve().parents:
            raise CryoalError(f"{out_dir}: would replace a directory holding {p}; choose a new directory")
    if force or (out_dir / MARKER).is_file() or not any(out_dir.iterdir()):
        return
    raise CryoalError(
        f"{out_dir}: directory exists and is not a cryoal gallery (no {MARKER} file); "
        "choose another directory or pass --force to replace it"
    )


def resolve_lowpass(pool: Pool, lowpass_A: float | None) -> tuple[float | None, float | None]:
    """(cutoff in voxels, cutoff in Å or None when the voxel size is unknown)."""
    vs = pool.voxel_size
    known = math.isfinite(vs) and vs > 0
    if lowpass_A is None:
        return DEFAULT_LOWPASS_VOXELS, (DEFAULT_LOWPASS_VOXELS * vs if known else None)
    if lowpass_A < 0:
        raise OptionError(f"--lowpass {lowpass_A}: must be >= 0 (0 turns the filter off)")
    if lowpass_A == 0:
        return None, 0.0
    if not known:
        raise InputError(
            f"{pool.path}: the pool's voxel size is unknown, so --lowpass in Å cannot be applied; "
            f"leave it out (default: {DEFAULT_LOWPASS_VOXELS} voxels) or pass --lowpass 0"
        )
    return lowpass_A / vs, lowpass_A


def load_masks(path: Path, pool: Pool) -> np.ndarray:
    """Predicted masks from a .npy file: one integer mask per pool particle, in pool order."""
    if pool.mode != "segmentation":
        raise InputError(f"{path}: --masks needs a segmentation pool; {pool.path} is in {pool.mode} mode")
    try:
        masks = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a NumPy .npy array ({exc})") from None
    want = (len(pool), *pool.shape)
    if tuple(masks.shape) != want:
        raise InputError(f"{path}: masks have shape {tuple(masks.shape)}; the pool needs {want} (pool order)")
    if not np.issubdtype(masks.dtype, np.integer):
        raise InputError(f"{path}: masks must be integer class indices, got dtype {masks.dtype}")
    return masks


def gallery_id(pool: Pool, items: Sequence[Item]) -> str:
    """A stable id for (this pool, these particles in this order): the page's storage key."""
    h = hashlib.sha256(str(pool.path.resolve()).encode())
    h.update(b"\0" + "\n".join(it.particle_id for it in items).encode())
    return h.hexdigest()[:16]


def _pool_key(pool: Pool) -> str:
    return pool.path.name + "-" + hashlib.sha256(str(pool.path.resolve()).encode()).hexdigest()[:8]


def _views_legend(mode: str, has_masks: bool, ndim: int) -> str:
    if ndim == 2:
        return "image | image + mask (y up)" if has_masks else "image (y up)"
    return "XY XZ / YZ Σz: slab averages and the sum along z; in each, the 1st axis runs right, the 2nd up"


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished gallery into place, replacing a previous one."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _render_tiles(pool: Pool, batch: Sequence[Item], view: tuple[int, float | None], ext_masks,
                  has_masks: bool, opts: GalleryOptions, cards: list[page.Card]) -> list:
    """The captioned tiles of one read batch of particles (with their masks, if any); with
    `opts.html` each particle's card is appended to `cards` too. `view` is (slab, low-pass cutoff)."""
    slab, cutoff_vox = view
    rows = np.asarray([it.index for it in batch], dtype=np.int64)
    vols = pool.read(rows)
    if ext_masks is not None:
        masks = np.stack([np.asarray(ext_masks[r]) for r in rows])
    elif has_masks:
        masks = pool.read(rows, dataset="masks")
    else:
        masks = None
    tiles = []
    for k, it in enumerate(batch):
        views = particle_views(vols[k], slab, cutoff_vox)
        planes = mask_planes(masks[k]) if masks is not None else None
        grid = montage.panel_grid(views, planes, clip_percent=opts.clip_percent, invert=opts.invert)
        tiles.append(montage.captioned(grid, it.caption()))
        if opts.html:
            cards.append(page.Card(it.particle_id, it.rank, it.predicted, it.confidence, it.label, grid))
    return tiles


def build_gallery(
    pool: Pool, items: Sequence[Item], out_dir: str | os.PathLike, opts: GalleryOptions, progress=None
) -> GalleryResult:
    """Render `items` of `pool` into `out_dir`: page-NNN.png montages, and index.html with `opts.html`.

    `progress`, if given, is called with the number of particles rendered so far.
    """
    out_dir = Path(out_dir)
    if not items:
        raise InputError(f"{pool.path}: no particles to show")
    if opts.per_page < 1:
        raise OptionError(f"--per-page {opts.per_page}: must be at least 1")
    check_destination(out_dir, opts.force, keep=[pool.path])
    ndim = len(pool.shape)
    slab = opts.slab if opts.slab is not None else default_slab(pool.box)
    if slab < 1:
        raise OptionError(f"--slab {slab}: must be at least 1 voxel")
    cutoff_vox, cutoff_A = resolve_lowpass(pool, opts.lowpass_A)
    ext_masks = load_masks(opts.masks_path, pool) if opts.masks_path is not None else None
    has_masks = ext_masks is not None or (pool.mode == "segmentation" and "masks" in pool.h5)
    gid = gallery_id(pool, items)

    result = GalleryResult(out_dir=out_dir, n_particles=len(items), slab=slab if ndim == 3 else None,
                           lowpass_A=cutoff_A, gallery_id=gid)
    lp_text = "no low-pass" if cutoff_vox is None else (
        f"low-pass {cutoff_A:g} Å" if cutoff_A else f"low-pass {cutoff_vox:g} voxels")
    header_base = f"{pool.path.name} · {lp_text}" + (f" · slab {slab} voxels" if ndim == 3 else "")
    legend = _views_legend(pool.mode, has_masks, ndim)
    n_pages = math.ceil(len(items) / opts.per_page)
    columns = montage.page_columns(opts.per_page)

    remove_stale_temps(out_dir, tags=("tmp", "old"))  # staging and set-aside directories of killed runs
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        cards: list[page.Card] = []
        done = 0
        for p in range(n_pages):
            chunk = list(items[p * opts.per_page : (p + 1) * opts.per_page])
            tiles = []
            for start in range(0, len(chunk), READ_BATCH):
                batch = chunk[start : start + READ_BATCH]
                tiles += _render_tiles(pool, batch, (slab, cutoff_vox), ext_masks, has_masks, opts, cards)
                done += len(batch)
                if progress is not None:
                    progress(done)
            header = [f"{header_base} · page {p + 1}/{n_pages}", f"views: {legend}"]
            path = tmp / f"page-{p + 1:03d}.png"
            montage.save_png(montage.compose_page(tiles, columns, header), path)
            result.pages.append(out_dir / path.name)
        if opts.html:
            text = page.render_page(
                cards,
                title=f"cryoal gallery · {pool.path.name} · {len(items)} particles",
                class_names=pool.class_names,
                pool_key=_pool_key(pool),
                gallery_id=gid,
                label_command=f"cryoal label {pool.path} labels.csv",
                views_legend=legend + f" · {lp_text}",
            )
            page.write_page(tmp / "index.html", text)
            result.html = out_dir / "index.html"
        marker = {
            "format_version": 1, "pool": str(pool.path.resolve()), "gallery_id": gid,
            "n_particles": len(items), "pages": [p.name for p in result.pages],
            "html": opts.html, "slab": result.slab, "lowpass_A": cutoff_A,
            "particle_ids": [it.particle_id for it in items],
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return result
