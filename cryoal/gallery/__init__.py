"""What the expert looks at: particle views, montage PNGs and the static labelling page.

`views` cuts low-passed, slab-averaged orthogonal views; `montage` draws them with Pillow;
`page` writes the self-contained index.html; `selection` decides which particles and captions;
`build` puts it together into a gallery directory.
"""

from cryoal.gallery.build import MARKER, GalleryOptions, GalleryResult, build_gallery
from cryoal.gallery.selection import Item, apply_predictions, from_ids, from_selection, labelled_examples

__all__ = [
    "MARKER", "GalleryOptions", "GalleryResult", "build_gallery", "Item", "apply_predictions",
    "from_ids", "from_selection", "labelled_examples",
]
