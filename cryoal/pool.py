"""`cryoal.pool`: the pool API for scripts (open, append, read batches, set labels)."""

from cryoal.io.pool import (  # noqa: F401
    FORMAT_VERSION,
    MODES,
    UNLABELLED,
    Pool,
    PoolWriter,
    edit_pool,
    open_pool,
)
from cryoal.labels import import_label_file, set_labels  # noqa: F401
