"""Reading 2D images (and 3D patches) and integer masks for the image and segmentation modes.

Formats, chosen by file name:
- PNG (Pillow): one image. 8- and 16-bit grey, palette (its indices), and 1-bit images are read
  as they are; RGB(A) images are converted to grey (luminance) for images and refused for masks.
- TIFF (Pillow): every page is one image; with `kind="volume"` the pages are the z sections of one
  volume. Float32 ("F"), 8/16/32-bit integer and grey pages are read.
- NPY (NumPy, memory-mapped, never pickles): a 2D array is one image; a 3D array is a stack of
  images in image mode and one volume otherwise; a 4D array is a stack of volumes.
- MRC and its relatives (`cryoal.io.mrc`): in image mode every section is one image (an
  `.mrcs` stack or a single 2D image); otherwise a file with NZ > 1 is one volume.

`kind` says what one item is: "image" (2D), "volume" (3D) or "auto" (segmentation: 2D or 3D
as the file holds it: a 3D NPY/MRC file or multi-page TIFF is one volume, a 2D one an image,
and an `.mrcs` file is a stack of images).

Masks are integer class maps of the same formats. A mask value equal to `ignore_index` (and any
-1) means "unlabelled" and becomes -1; any other negative value, or a non-integer value, is bad
input.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryoal.errors import InputError
from cryoal.io.mrc import MrcFile, is_mrc_name, mrc_stem

PNG_SUFFIXES = (".png",)
TIFF_SUFFIXES = (".tif", ".tiff")
NPY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = PNG_SUFFIXES + TIFF_SUFFIXES + NPY_SUFFIXES
KINDS = ("image", "volume", "auto")
UNLABELLED = -1
MASK_DTYPE = np.int16  # the pool's `masks` dtype


def is_image_name(path: str | os.PathLike) -> bool:
    """True for a name this module reads: PNG, TIFF, NPY or any MRC name."""
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES) or is_mrc_name(path)


def image_stem(path: str | os.PathLike) -> str:
    """The file name without its format suffix (and compression suffix for MRC)."""
    p = Path(path)
    if p.name.lower().endswith(IMAGE_SUFFIXES):
        return p.name[: -len(p.suffix)]
    return mrc_stem(p)


@dataclass(frozen=True)
class ImageHeader:
    """What ingest reads from a file's header: the pixel size in Å, NaN when the format has none."""

    voxel_size: float = math.nan


class ImageFile:
    """One open image file: `n_items`, `is_stack`, `item(k)` (float32 2D or 3D array), `header`.

    The same interface as `cryoal.io.mrc.MrcFile`, so that ingest reads any format alike. Use as a
    context manager.
    """

    def __init__(self, path: str | os.PathLike, kind: str = "image"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.path = Path(path)
        self.kind = kind
        self.header = ImageHeader()
        self._mrc: MrcFile | None = None
        self._pil = None
        self._array: np.ndarray | None = None
        name = str(self.path)
        if not self.path.exists():
            raise InputError(f"{name}: file not found")
        if self.path.is_dir():
            raise InputError(f"{name}: is a directory, not an image file")
        low = self.path.name.lower()
        try:
            if low.endswith(NPY_SUFFIXES):
                self._open_npy()
            elif low.endswith(PNG_SUFFIXES + TIFF_SUFFIXES):
                self._open_pil()
            elif is_mrc_name(low):
                self._open_mrc()
            else:
                raise InputError(
                    f"{name}: unknown image format; cryoal reads .png, .tif/.tiff, .npy and MRC files"
                )
        except BaseException:
            self.close()
            raise

    # -- NPY -------------------------------------------------------------------------------
    def _open_npy(self) -> None:
        name = str(self.path)
        try:
            arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise InputError(f"{name}: not a readable NumPy .npy file ({first})") from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"{name}: not a single NumPy array")
        if arr.dtype == bool:
            arr = arr.view(np.uint8)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"{name}: NumPy dtype {arr.dtype} is not a real-valued image")
        per_item = {"image": 2, "volume": 3, "auto": 3 if arr.ndim >= 3 else 2}[self.kind]
        single = arr.ndim == per_item
        if single:
            arr = arr[np.newaxis]
        if arr.ndim != per_item + 1:
            what = "2D images" if per_item == 2 else "3D volumes"
            raise InputError(
                f"{name}: array of shape {arr.shape}; expected {what} ({per_item}D, or a stack of them)"
            )
        self._array = arr
        self.n_items, self.is_stack = arr.shape[0], not single

    # -- PNG / TIFF ------------------------------------------------------------------------
    def _open_pil(self) -> None:
        from PIL import Image, UnidentifiedImageError

        name = str(self.path)
        try:
            img = Image.open(self.path)
            img.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{name}: not a readable image ({str(exc).splitlines()[0][:120]})") from None
        self._pil = img
        pages = int(getattr(img, "n_frames", 1))
        volume = self.kind == "volume" or (self.kind == "auto" and pages > 1)
        if volume:
            self._array = np.stack([self._page(k) for k in range(pages)])[np.newaxis]
            self.n_items, self.is_stack = 1, False
        else:
            self.n_items, self.is_stack = pages, pages > 1

    def _page(self, k: int) -> np.ndarray:
        img = self._pil
        assert img is not None
        try:
            img.seek(k)
        except EOFError:
            raise InputError(f"{self.path}: page {k + 1} cannot be read") from None
        mode = img.mode
        if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("L")
        elif mode in ("LA", "PA"):
            img = img.getchannel(0)
        elif mode == "1":
            img = img.convert("L")  # 0/255: a binary image is just a grey one
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise InputError(f"{self.path}: image mode {mode} with shape {arr.shape} is not a single channel")
        return arr

    def colour_mode(self) -> str | None:
        """The Pillow mode when the file is a colour image (masks must be single-channel), else None."""
        if self._pil is not None and self._pil.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
            return str(self._pil.mode)
        return None

    # -- MRC -------------------------------------------------------------------------------
    def _open_mrc(self) -> None:
        if self.kind == "auto":
            f = MrcFile(self.path, kind=None)
            nz = f.header.spatial_shape[0]
            image = nz == 1 or self.path.name.lower().endswith((".mrcs", ".mrcs.gz", ".mrcs.bz2"))
            f.close()
            self._mrc = MrcFile(self.path, kind="image" if image else "volume")
        else:
            self._mrc = MrcFile(self.path, kind=self.kind)
        self.n_items, self.is_stack = self._mrc.n_items, self._mrc.is_stack
        self.header = ImageHeader(self._mrc.header.voxel_size)

    # -- items -----------------------------------------------------------------------------
    def item(self, k: int = 0) -> np.ndarray:
        """Item k (0-based) as a float32 array: (y, x) for an image, (z, y, x) for a volume."""
        return np.asarray(self.raw_item(k), dtype=np.float32)

    def raw_item(self, k: int = 0) -> np.ndarray:
        """Item k with the file's own dtype (what masks are checked on)."""
        if not 0 <= k < self.n_items:
            raise InputError(f"{self.path}: item {k + 1} requested but the file holds {self.n_items}")
        if self._mrc is not None:
            return self._mrc.item(k)
        if self._array is not None:
            return np.ascontiguousarray(self._array[k])
        return self._page(k)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file."""
        if self._mrc is not None:
            self._mrc.close()
            self._mrc = None
        if self._pil is not None:
            self._pil.close()
            self._pil = None
        self._array = None

    def __enter__(self) -> ImageFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_image(path: str | os.PathLike, kind: str = "image") -> ImageFile:
    """Open an image/volume file of any supported format (see the module docstring)."""
    return ImageFile(path, kind=kind)


def read_image(path: str | os.PathLike, kind: str = "image") -> np.ndarray:
    """The single image (or volume) a file holds, float32; InputError if it holds a stack."""
    with ImageFile(path, kind=kind) as f:
        if f.n_items != 1:
            raise InputError(f"{path}: holds a stack of {f.n_items} items, not one")
        return f.item(0)


# ------------------------------------------------------------------------------------------
# Masks
# ------------------------------------------------------------------------------------------


def as_mask(values: np.ndarray, name: str, ignore_index: int | None = None) -> np.ndarray:
    """Integer class map from raw mask values: `ignore_index` and -1 become -1 (unlabelled).

    InputError naming `name` for non-integer values, other negative values, or values too big
    for the pool's int16 masks.
    """
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(f"{name}: mask has NaN or infinite values")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(f"{name}: mask values must be integer class ids (found fractional values)")
    elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise InputError(f"{name}: mask dtype {arr.dtype} is not an integer class map")
    out = arr.astype(np.int64)
    if ignore_index is not None:
        out[out == ignore_index] = UNLABELLED
    bad = out < UNLABELLED
    if bad.any():
        raise InputError(
            f"{name}: negative class id {int(out[bad].min())} in mask (only -1"
            + (f" or --ignore-index {ignore_index}" if ignore_index is not None else "")
            + " means unlabelled)"
        )
    if out.size and out.max() > np.iinfo(MASK_DTYPE).max:
        raise InputError(f"{name}: class id {int(out.max())} in mask is too large")
    return out.astype(MASK_DTYPE)


def read_mask(path: str | os.PathLike, kind: str = "auto", ignore_index: int | None = None,
              k: int = 0) -> np.ndarray:
    """Item k of a mask file as an int16 class map (-1 unlabelled); see `as_mask`."""
    with ImageFile(path, kind=kind) as f:
        colour = f.colour_mode()
        if colour is not None:
            raise InputError(
                f"{path}: a colour ({colour}) image cannot be a mask; save class ids as a single-channel "
                "(grey or palette) image"
            )
        return as_mask(f.raw_item(k), str(path), ignore_index)


def check_class_range(mask: np.ndarray, n_classes: int, name: str) -> None:
    """InputError naming `name` if a mask holds a class id >= n_classes."""
    if n_classes and mask.size and int(mask.max()) >= n_classes:
        raise InputError(
            f"{name}: class id {int(mask.max())} in mask is out of range; the pool has {n_classes} "
            f"classes (ids 0-{n_classes - 1})"
        )


def fit_mask(mask: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
    """Centre crop/pad a mask to `target` exactly as `cryoal.io.preprocess.fit_box` does its image;
    padded pixels are unlabelled (-1)."""
    from cryoal.io.preprocess import crop_or_pad

    return crop_or_pad(np.asarray(mask, MASK_DTYPE), target, fill=UNLABELLED)


def mask_format(path: str | os.PathLike) -> str:
    """'npy' or 'mrc' from a mask file name; InputError for anything else."""
    low = Path(path).name.lower()
    if low.endswith(".npy"):
        return "npy"
    if low.endswith((".mrc", ".mrcs")):
        return "mrc"
    raise InputError(f"{path}: masks are written as .npy or .mrc/.mrcs")


def save_mask_stack(path: str | os.PathLike, n: int, shape: tuple[int, ...], fmt: str):
    """Create an int16 stack of `n` masks of `shape` at `path` for streaming writes.

    Returns (array to fill, finish). `fmt` 'npy' is a NumPy memmap; 'mrc' an MRC int16 (mode 1)
    stack, with a volume-stack header (ISPG 401) for 3D masks. Call `finish()` to flush and close;
    the caller writes to a temporary path and renames it (atomic).
    """
    if fmt == "npy":
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=MASK_DTYPE, shape=(n, *shape))

        def finish_npy() -> None:
            arr.flush()

        return arr, finish_npy
    if fmt == "mrc":
        import mrcfile

        mrc = mrcfile.new_mmap(path, shape=(n, *shape), mrc_mode=1, overwrite=True)
        if len(shape) == 2:
            mrc.set_image_stack()  # 4D data is a volume stack (ISPG 401) already

        def finish_mrc() -> None:
            mrc.update_header_stats()
            mrc.close()

        return mrc.data, finish_mrc
    raise ValueError(f"unknown mask format {fmt!r}")


__all__ = [
    "IMAGE_SUFFIXES", "ImageFile", "UNLABELLED", "as_mask", "check_class_range", "fit_mask", "image_stem",
    "is_image_name", "mask_format", "open_image", "read_image", "read_mask", "save_mask_stack",
]
