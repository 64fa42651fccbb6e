"""`cryoal ingest`: MRC volumes from files, directories, globs and STAR/CSV manifests into one pool.

Inputs, in any mix:
- an MRC file (any name; see `cryoal.io.mrc` for what a file holds);
- a directory: every file under it, recursively, whose name ends in an MRC suffix
  (.mrc .mrcs .rec .map .st .ali .ccp4, optionally + .gz/.bz2), in sorted path order;
- a glob (quoted, so the shell leaves it alone), expanded here with ``**`` allowed;
- a manifest (.star, .csv, .tsv): a path column (`rlnImageName` or `path`; RELION's
  ``k@stack.mrcs`` means item k, counted from 1), paths relative to the manifest's directory.
  Optional columns: an id (`particle_id`, `rlnTomoParticleName`, or `--id-column`), a label
  (`label`, `rlnClassNumber`, or `--label-column`), a tomogram (`rlnTomoName`, `tomo`) and
  coordinates in pixels (`rlnCoordinateX/Y/Z`, or `x`, `y`, `z`). Every column is kept verbatim
  in the pool's `meta/<column>`.

Image modes (`--mode image|segmentation`) also read PNG, TIFF and NPY files
(`cryoal.io.images`; a directory contributes those too). Image mode stores 2D images: an MRC
file or NPY array with several sections, or a multi-page TIFF, is a stack of images.
Segmentation stores 2D images or 3D patches, as the first item is, and beside each its mask
(`cryoal.io.masks`): from the manifest's `mask_path` column (relative to the manifest), else a file
named like the image in `--masks DIR` (`a.mrc` -> `a.png`, `a_mask.tif`, ...), else none (all
pixels unlabelled, -1). Masks are integer class maps; -1 or `--ignore-index` marks unlabelled
pixels; a mask is cropped/padded exactly as its image. A mask whose shape differs from its image,
or (with `--classes`) a class id beyond the classes, is a bad input like an unreadable file.

A particle's id is the manifest's id, else the file stem (``p01.mrc.gz`` -> ``p01``), with
``#k`` appended for item k (from 1) of a stack. Each volume is cropped, z-scored and padded
to the box by `cryoal.io.preprocess.fit_box`. Without `--box` every volume must have the shape of
the first one (or of the pool, with `--append`).

Everything streams: volumes are read, normalised and appended `batch_size` at a time, so
memory does not grow with the number of files. The pool is written to a temporary file that
replaces the target only at the end, so a bad file (without `--skip-bad`), an error or a
Ctrl-C leaves no new pool and an existing pool byte-for-byte unchanged.
"""

from __future__ import annotations

import glob as globmod
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryoal.errors import CryoalError, InputError, OptionError
from cryoal.io.atomic import check_output_dir
from cryoal.io.images import IMAGE_SUFFIXES, ImageFile, image_stem, is_image_name
from cryoal.io.mrc import MrcFile, is_mrc_name, mrc_stem
from cryoal.io.pool import PoolWriter, open_pool
from cryoal.io.preprocess import fit_box
from cryoal.io.star import Table
from cryoal.io.tables import read_table, table_len
from cryoal.labels import resolve_labels

MANIFEST_SUFFIXES = (".star", ".csv", ".tsv")
PATH_COLUMNS = ("rlnImageName", "path")
ID_COLUMNS = ("particle_id", "rlnTomoParticleName")
LABEL_COLUMNS = ("label", "rlnClassNumber")
TOMO_COLUMNS = ("rlnTomoName", "tomo")
COORD_COLUMNS = (("rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"), ("x", "y", "z"))
INGEST_MODES = ("subtomogram", "image", "segmentation")
MASK_PATH_COLUMNS = ("mask_path", "mask")  # segmentation manifests: the mask of each row
_STACK_REF = re.compile(r"^(\d+)@(.+)$")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass
class IngestOptions:
    """Options of `ingest`, named as on the command line."""

    box: int | None = None
    mode: str = "subtomogram"
    append: bool = False
    overwrite: bool = False
    skip_bad: bool = False
    stack: bool = False
    id_column: str | None = None
    label_column: str | None = None
    voxel_size: float | None = None
    batch_size: int | None = None  # default: ~32 MB of volumes per write
    compression: str | None = None  # z-scored noisy volumes do not compress: see benchmarks/ingest_speed.py
    # segmentation mode (cryoal.io.masks): masks from a manifest `mask_path` column or from this directory
    masks_dir: Path | None = None
    ignore_index: int | None = None  # mask value meaning "unlabelled" (besides -1)
    classes: list[str] | None = None  # fixed class names: a mask id beyond them is an error


@dataclass
class IngestResult:
    """What an ingest did."""

    pool: str
    n_added: int
    n_total: int
    shape: tuple[int, ...]
    voxel_size: float
    class_names: list[str]
    n_labelled: int = 0
    bad: list[str] = field(default_factory=list)  # one line per bad file or volume skipped
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Manifest:
    path: Path
    table: Table
    path_col: str
    id_col: str | None
    labels: np.ndarray | None  # class index per row, -1 when empty
    tomo_col: str | None
    coord_cols: tuple[str, str, str] | None
    mask_col: str | None = None


@dataclass
class _Source:
    """One thing to read: a whole file, or item `index` (0-based) of a stack named by a manifest row."""

    file: Path
    index: int | None = None
    manifest: _Manifest | None = None
    row: int = -1
    abs_path: str = ""  # os.path.abspath(file), computed once

    @property
    def where(self) -> str:
        if self.manifest is None:
            return str(self.file)
        return f"{self.manifest.path}, row {self.row + 1}"


@dataclass
class _Item:
    particle_id: str
    source: str
    volume: np.ndarray
    voxel_size: float
    src: _Source
    index: int = 0  # item of its file
    in_stack: bool = False


@dataclass
class _Bad:
    name: str  # the file, or the manifest row
    reason: str

    @property
    def message(self) -> str:
        """One line naming the culprit."""
        return self.reason if self.reason.startswith(self.name) else f"{self.name}: {self.reason}"


# ------------------------------------------------------------------------------------------
# Inputs -> sources
# ------------------------------------------------------------------------------------------


def _first(table: Table, names: tuple[str, ...]) -> str | None:
    return next((c for c in names if c in table), None)


def _files_in(directory: Path, images: bool = False) -> list[Path]:
    accept = is_image_name if images else is_mrc_name
    names: list[str] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip hidden directories and files
        names.extend(os.path.join(root, f) for f in files if not f.startswith(".") and accept(f))
    found = [Path(n) for n in sorted(names)]
    if not found:
        what = "image files (.png .tif .npy or MRC)" if images else \
            "MRC files (.mrc .mrcs .rec .map .st .ali .ccp4 [.gz .bz2])"
        raise InputError(f"{directory}: no {what} in it")
    return found


def _expand(inputs: list[str], images: bool = False) -> list[Path]:
    """Files, directories (recursive) and globs to a list of paths, in the order given.

    `images`: directories contribute PNG/TIFF/NPY files as well as MRC files (image modes)."""
    out: list[Path] = []
    for text in inputs:
        p = Path(text)
        if p.exists():
            out.extend(_files_in(p, images) if p.is_dir() else [p])
        elif _GLOB_CHARS.search(text):
            matches = sorted(globmod.glob(text, recursive=True))
            if not matches:
                raise InputError(f"{text}: no files match this pattern")
            for m in map(Path, matches):
                out.extend(_files_in(m, images) if m.is_dir() else [m])
        else:
            raise InputError(f"{text}: file not found")
    return out


def _read_manifest(path: Path, opts: IngestOptions) -> tuple[_Manifest, list[str]]:
    table = read_table(path)
    if table_len(table) == 0:
        raise InputError(f"{path}: the manifest has no rows")
    path_col = _first(table, PATH_COLUMNS)
    if path_col is None:
        raise InputError(f"{path}: no rlnImageName or path column (columns: {', '.join(table)})")
    id_col = opts.id_column or _first(table, ID_COLUMNS)
    if opts.id_column and opts.id_column not in table:
        raise InputError(f"{path}: no column '{opts.id_column}' (given by --id-column)")
    label_col = opts.label_column or _first(table, LABEL_COLUMNS)
    if opts.label_column and opts.label_column not in table:
        raise InputError(f"{path}: no column '{opts.label_column}' (given by --label-column)")
    coord_cols = next((c for c in COORD_COLUMNS if all(n in table for n in c)), None)
    manifest = _Manifest(path, table, path_col, id_col, None, _first(table, TOMO_COLUMNS), coord_cols,
                         _first(table, MASK_PATH_COLUMNS) if opts.mode == "segmentation" else None)
    return manifest, (table[label_col] if label_col else [])


def _manifest_sources(m: _Manifest, opts: IngestOptions, bad: list[_Bad]) -> list[_Source]:
    out = []
    base = m.path.parent
    for row, ref in enumerate(m.table[m.path_col]):
        ref = ref.strip()
        match = _STACK_REF.match(ref)
        index = None
        if match:
            index = int(match.group(1)) - 1
            ref = match.group(2)
            if index < 0:
                raise InputError(
                    f"{m.path}, row {row + 1}: stack index 0 in '{match.group(0)}'; RELION counts from 1"
                )
        file = Path(ref) if os.path.isabs(ref) else base / ref
        src = _Source(file, index, m, row)
        if not file.is_file():
            problem = _Bad(src.where, f"file not found: {file}")
            if not opts.skip_bad:
                raise InputError(problem.message)
            bad.append(problem)
            continue
        out.append(src)
    return out


def plan_sources(inputs: list[str], opts: IngestOptions, class_names: list[str]) -> tuple[
    list[_Source], list[str], list[_Bad]
]:
    """Resolve every input to sources; returns (sources, class names after manifest labels, bad rows)."""
    sources: list[_Source] = []
    bad: list[_Bad] = []
    seen: set[tuple[str, int | None]] = set()
    names = list(class_names)
    for path in _expand(inputs, images=opts.mode != "subtomogram"):
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            manifest, label_values = _read_manifest(path, opts)
            if label_values:
                manifest.labels, names = resolve_labels(
                    label_values, names, add_classes=True, where=str(path)
                )
            new = _manifest_sources(manifest, opts, bad)
        else:
            new = [_Source(path)]
        for src in new:
            src.abs_path = os.path.abspath(src.file)
            key = (src.abs_path, src.index)
            if key in seen and src.manifest is None:
                continue  # the same file named twice (e.g. a directory and a glob): read it once
            seen.add(key)
            sources.append(src)
    return sources, names, bad


# ------------------------------------------------------------------------------------------
# Sources -> items
# ------------------------------------------------------------------------------------------


def _open_volume(path: Path, stack: bool) -> MrcFile:
    """An MRC volume; a PNG/TIFF/NPY refused as MRC is told which mode reads it."""
    try:
        return MrcFile(path, kind="volume", stack=stack)
    except InputError as exc:
        if Path(path).name.lower().endswith(IMAGE_SUFFIXES):
            raise InputError(f"{exc}; 2D images need --mode image (or --mode segmentation)") from None
        raise


def _opener(opts: IngestOptions) -> Callable[[Path], MrcFile | ImageFile]:
    """How to open an input file: MRC volumes for subtomograms; any image format otherwise
    (image mode: 2D images; segmentation: 2D images or 3D volumes, as the file holds them)."""
    if opts.mode == "subtomogram":
        return lambda path: _open_volume(path, opts.stack)
    kind = "image" if opts.mode == "image" else "auto"
    return lambda path: ImageFile(path, kind=kind)


class _OpenFiles:
    """A few open files, so that manifest rows naming items of one stack do not reopen it."""

    def __init__(self, opener: Callable[[Path], MrcFile | ImageFile], keep: int = 4):
        self.opener, self.keep = opener, keep
        self._open: OrderedDict[Path, MrcFile | ImageFile] = OrderedDict()

    def get(self, path: Path) -> MrcFile | ImageFile:
        f = self._open.get(path)
        if f is not None:
            self._open.move_to_end(path)
            return f
        f = self.opener(path)
        self._open[path] = f
        while len(self._open) > self.keep:
            self._open.popitem(last=False)[1].close()
        return f

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def _iter_items(sources: list[_Source], opts: IngestOptions,
                on_source: Callable[[], None] | None = None) -> Iterator[_Item | _Bad]:
    opener = _opener(opts)
    files = _OpenFiles(opener)
    try:
        for src in sources:
            try:
                if src.index is None:
                    # a whole file: read it, yield its items, close it (a stack file may be big)
                    with opener(src.file) as f:
                        for k in range(f.n_items):
                            yield _make_item(src, f, k, f.is_stack)
                else:
                    f = files.get(src.file)
                    if src.index >= f.n_items:
                        raise InputError(
                            f"{src.where}: asks for item {src.index + 1} of {src.file}, "
                            f"which holds {f.n_items}"
                        )
                    yield _make_item(src, f, src.index, True)
            except InputError as exc:
                yield _Bad(str(src.file) if src.manifest is None else src.where, str(exc))
            if on_source is not None:
                on_source()
    finally:
        files.close()


def _make_item(src: _Source, f: MrcFile | ImageFile, k: int, numbered: bool) -> _Item:
    m = src.manifest
    if m is not None and m.id_col is not None:
        pid = m.table[m.id_col][src.row].strip()
        if not pid:
            raise InputError(f"{src.where}: empty particle id in column '{m.id_col}'")
        if numbered and src.index is None:
            pid = f"{pid}#{k + 1}"
    else:
        # mrc_stem is plain string work; image_stem builds Paths (~30 us a file, a tenth of a read)
        stem = mrc_stem(src.file) if is_mrc_name(src.file) else image_stem(src.file)
        pid = stem + (f"#{k + 1}" if numbered else "")
    source = src.abs_path + (f"#{k + 1}" if numbered else "")
    return _Item(pid, source, f.item(k), f.header.voxel_size, src, k, numbered)


# ------------------------------------------------------------------------------------------
# Batches -> pool
# ------------------------------------------------------------------------------------------


def _coords(src: _Source) -> tuple[float, float, float]:
    m = src.manifest
    if m is None or m.coord_cols is None:
        return (math.nan, math.nan, math.nan)
    try:
        return tuple(float(m.table[c][src.row]) for c in m.coord_cols)  # type: ignore[return-value]
    except ValueError:
        raise InputError(f"{src.where}: coordinates are not numbers") from None


class _Batch:
    """A batch being filled: normalised volumes in one preallocated buffer, plus their items."""

    def __init__(self, buffer: np.ndarray, masks: np.ndarray | None = None) -> None:
        self.buffer = buffer
        self.masks = masks  # segmentation: int16 masks beside the volumes
        self.items: list[_Item] = []

    def slot(self) -> np.ndarray:
        """Where the next normalised volume goes."""
        return self.buffer[len(self.items)]

    def add(self, item: _Item) -> None:
        item.volume = None  # type: ignore[assignment]  # the raw volume is no longer needed
        self.items.append(item)

    def full(self) -> bool:
        return len(self.items) == self.buffer.shape[0]

    def clear(self) -> None:
        """Empty the batch; its buffer is reused."""
        self.items = []

    def write(self, writer: PoolWriter) -> None:
        """Append the batch to the pool."""
        n = len(self.items)
        if n == 0:
            return
        srcs = [it.src for it in self.items]
        labels = [
            int(s.manifest.labels[s.row]) if s.manifest is not None and s.manifest.labels is not None else -1
            for s in srcs
        ]
        masks = None
        if self.masks is not None:  # a segmentation particle is labelled when its mask is
            from cryoal.io.masks import mask_labels

            masks = self.masks[:n]
            labels = mask_labels(masks).tolist()
        tomos = [
            s.manifest.table[s.manifest.tomo_col][s.row] if s.manifest and s.manifest.tomo_col else ""
            for s in srcs
        ]
        columns: dict[str, list[str]] = {}
        for i, s in enumerate(srcs):
            if s.manifest is None:
                continue
            for col, values in s.manifest.table.items():
                columns.setdefault(col, [""] * n)[i] = values[s.row]
        writer.add(
            self.buffer[:n], [it.particle_id for it in self.items], [it.source for it in self.items],
            labels=np.asarray(labels, np.int32), tomos=tomos,
            coords=np.asarray([_coords(s) for s in srcs], np.float32), meta=columns, masks=masks,
        )


def _batch_size(requested: int | None, shape: tuple[int, ...]) -> int:
    # Each write call costs ~0.3 ms per dataset whatever its size, so batches are big: ~32 MB of
    # volumes (256 at 32^3, 32 at 64^3), reused from batch to batch, so memory stays flat.
    if requested is not None:
        return requested
    return max(1, min(256, (32 << 20) // (4 * math.prod(shape))))


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in reversed(shape))  # x, y, z order as users write sizes


def ingest(
    inputs: list[str],
    output: str | os.PathLike,
    opts: IngestOptions | None = None,
    *,
    on_start: Callable[[int], None] | None = None,
    on_source: Callable[[], None] | None = None,
    on_bad: Callable[[str], None] | None = None,
) -> IngestResult:
    """Read every input into the pool `output` (new, or grown with `opts.append`).

    Callbacks: `on_start(n_sources)` once the inputs are resolved, `on_source()` after each
    source is read, `on_bad(message)` for each bad file or volume skipped with `opts.skip_bad`.
    Raises CryoalError (nothing written) on any bad input without `skip_bad`.
    """
    opts = opts or IngestOptions()
    output = check_output_dir(output)  # a directory at -o is named now, before any input is read
    ndim = _checked_mode(opts)
    target, existing_names, existing_ids, pool_voxel = _existing_pool(output, opts, ndim)
    _check_segmentation_options(opts)
    sources, class_names, planned_bad = plan_sources(inputs, opts, existing_names)
    masks = None
    if opts.mode == "segmentation":
        from cryoal.io.masks import MaskReader

        given = list(opts.classes) if opts.classes else list(existing_names)
        masks = MaskReader(opts.ignore_index, opts.masks_dir, given, fixed_classes=bool(opts.classes))
    if not sources and not planned_bad:
        raise InputError("no input files")
    result = IngestResult(pool=str(output), n_added=0, n_total=0, shape=(), voxel_size=math.nan,
                          class_names=class_names)

    def bad(message: str) -> None:
        result.bad.append(message)
        if on_bad is not None:
            on_bad(message)

    for b in planned_bad:
        bad(b.message)
    if on_start is not None:
        on_start(len(sources))

    seen_ids: dict[str, str] = {}
    voxel_sizes: dict[float, str] = {}
    with PoolWriter(output, mode=opts.mode, shape=target, class_names=class_names, append=opts.append,
                    compression=opts.compression) as writer:
        batch: _Batch | None = None
        for ev in _iter_items(sources, opts, on_source):
            if isinstance(ev, _Bad):
                if not opts.skip_bad:
                    raise InputError(ev.message)
                bad(ev.message)
                continue
            if target is None:  # no --box: the first volume sets the shape
                target = (opts.box,) * ev.volume.ndim if opts.box else ev.volume.shape
            if batch is None:
                size = _batch_size(opts.batch_size, target)
                batch = _Batch(np.empty((size, *target), np.float32),
                               np.empty((size, *target), np.int16) if masks is not None else None)
            try:
                _read_into(batch, ev, target, opts, masks)
            except InputError as exc:
                if not opts.skip_bad:
                    raise
                bad(str(exc))
                continue
            _check_unique(ev, seen_ids, existing_ids, output)
            if math.isfinite(ev.voxel_size):
                voxel_sizes.setdefault(round(ev.voxel_size, 4), ev.source)
            batch.add(ev)
            if batch.full():
                batch.write(writer)  # h5py holds the GIL while writing: a writer thread would not overlap
                batch.clear()
        if batch is not None:
            batch.write(writer)
        if writer.n_added == 0:
            skipped = f" ({len(result.bad)} bad inputs skipped)" if result.bad else ""
            raise CryoalError(f"{output}: no particles to write{skipped}; nothing was written")
        _finish_pool(writer, result, sources, masks, _choose_voxel_size(
            opts.voxel_size, pool_voxel, voxel_sizes, result.warnings))
    with open_pool(output) as pool:
        result.n_total = len(pool)
        result.n_labelled = int((pool.labels >= 0).sum())
    return result


def _checked_mode(opts: IngestOptions) -> int | None:
    """Axes of a particle in `opts.mode` (None for segmentation: 2D or 3D, as the data); CryoalError
    on an unknown mode or a bad --box or --voxel-size."""
    if opts.mode not in INGEST_MODES:
        known = ", ".join(INGEST_MODES)
        raise OptionError(f"--mode {opts.mode}: ingest builds {known} pools")
    if opts.box is not None and opts.box < 1:
        raise OptionError(f"--box {opts.box}: must be a positive size")
    if opts.voxel_size is not None and not opts.voxel_size > 0:
        raise OptionError(f"--voxel-size {opts.voxel_size}: must be positive")
    return {"image": 2, "subtomogram": 3}.get(opts.mode)


def _existing_pool(output: Path, opts: IngestOptions, ndim: int | None) -> tuple[
        tuple[int, ...] | None, list[str], set[str], float]:
    """What the pool already holds: (particle shape, class names, particle ids, voxel size); for a
    new pool the shape --box asks for (or None) and nothing else. CryoalError when appending does
    not fit the pool, or when a new pool would replace a file without --overwrite."""
    target: tuple[int, ...] | None = (opts.box,) * ndim if opts.box and ndim else None
    if not opts.append:
        if output.exists() and not opts.overwrite:
            raise CryoalError(
                f"{output}: already exists; pass --append to add to it or --overwrite to replace it"
            )
        return target, [], set(), math.nan
    with open_pool(output) as pool:
        if pool.mode != opts.mode:
            raise CryoalError(f"{output}: pool is in {pool.mode} mode, cannot append {opts.mode} data")
        if target is not None and target != pool.shape or (
                opts.box and ndim is None and (opts.box,) * len(pool.shape) != pool.shape):
            raise CryoalError(
                f"{output}: pool particles are {_shape_text(pool.shape)}, "
                f"--box asks for {_shape_text(target)}"
            )
        return pool.shape, pool.class_names, set(pool.particle_ids), pool.voxel_size


def _check_segmentation_options(opts: IngestOptions) -> None:
    """--masks, --ignore-index and --classes go with --mode segmentation; --masks is a directory."""
    if opts.mode != "segmentation" and (opts.masks_dir or opts.ignore_index is not None or opts.classes):
        raise OptionError("--masks, --ignore-index and --classes are for --mode segmentation")
    if opts.masks_dir is not None and not Path(opts.masks_dir).is_dir():
        raise CryoalError(f"{opts.masks_dir}: --masks must be a directory of mask files")


def _read_into(batch: _Batch, ev: _Item, target: tuple[int, ...], opts: IngestOptions, masks) -> None:
    """Fit one item (and its mask) into the batch's next slot; InputError naming it if it cannot."""
    if ev.volume.ndim != len(target):
        raise InputError(
            f"{ev.source}: a {ev.volume.ndim}D item, but the pool's particles are "
            f"{len(target)}D ({_shape_text(target)}); 2D and 3D data go in separate pools"
        )
    if masks is not None:
        batch.masks[len(batch.items)] = masks.read(
            _mask_file(ev, masks.masks_dir), ev.index, ev.in_stack, ev.volume.shape, target
        )
    _normalise(ev, target, opts, batch.slot())


def _finish_pool(writer: PoolWriter, result: IngestResult, sources: list[_Source], masks,
                 voxel: float) -> None:
    """The pool-wide attributes once every particle is in: voxel size, class names (a segmentation
    pool's from its masks), the STAR manifests' other blocks; and the result's counts."""
    writer.set_voxel_size(voxel)
    if masks is not None:
        result.class_names = list(masks.class_names)
    writer.set_class_names(result.class_names)
    _record_star_blocks(writer, sources)
    result.n_added = writer.n_added
    result.voxel_size = voxel
    result.shape = tuple(writer.shape or ())


def _record_star_blocks(writer: PoolWriter, sources: list[_Source]) -> None:
    """Keep the other blocks (optics, general) of each STAR manifest read, for STAR export."""
    from cryoal.io.star import particles_block, read_star
    from cryoal.io.tables import is_star

    done: set[Path] = set()
    for src in sources:
        m = src.manifest
        if m is None or m.path in done or not is_star(m.path):
            continue
        done.add(m.path)
        blocks = read_star(m.path)
        particles = particles_block(blocks, str(m.path))
        others = {name: table for name, table in blocks.items() if table is not particles}
        if others:
            writer.add_star_blocks(str(m.path), others)


def _mask_file(item: _Item, masks_dir: Path | None) -> Path | None:
    """The mask of an item: its manifest row's mask path (relative to the manifest), else a file
    named like its image in `masks_dir`; None when it has none (all pixels unlabelled)."""
    m = item.src.manifest
    if m is not None and m.mask_col is not None:
        ref = m.table[m.mask_col][item.src.row].strip()
        if ref:
            path = Path(ref) if os.path.isabs(ref) else m.path.parent / ref
            if not path.is_file():
                raise InputError(f"{item.src.where}: mask file not found: {path}")
            return path
    if masks_dir is not None:
        from cryoal.io.masks import find_mask_file

        return find_mask_file(item.src.file, Path(masks_dir))
    return None


def _normalise(item: _Item, target: tuple[int, ...], opts: IngestOptions, out: np.ndarray) -> None:
    vol = item.volume
    if opts.box is None and vol.shape != target:
        raise InputError(
            f"{item.source}: volume is {_shape_text(vol.shape)} but the pool's particles are "
            f"{_shape_text(target)}; pass --box to crop/pad every volume to one size"
        )
    fit_box(vol, target, item.source, out=out)


def _check_unique(item: _Item, seen: dict[str, str], existing: set[str], output: Path) -> None:
    pid = item.particle_id
    if pid in existing:
        raise InputError(f"{item.source}: particle id '{pid}' is already in {output}")
    first = seen.get(pid)
    if first is not None:
        raise InputError(
            f"{item.source}: duplicate particle id '{pid}' (also {first}); "
            "give unique ids with a manifest id column"
        )
    seen[pid] = item.source


def _choose_voxel_size(override: float | None, pool_voxel: float, found: dict[float, str],
                       warnings: list[str]) -> float:
    if override is not None:
        return float(override)
    chosen = pool_voxel if math.isfinite(pool_voxel) else next(iter(found), math.nan)
    others = [v for v in found if math.isfinite(chosen) and not math.isclose(v, chosen, rel_tol=1e-3)]
    if others:
        listed = ", ".join(f"{v:g} Å ({found[v]})" for v in others[:3])
        warnings.append(
            f"voxel sizes differ between files: the pool records {chosen:g} Å, also found {listed}; "
            "pass --voxel-size to set it"
        )
    return float(chosen)
