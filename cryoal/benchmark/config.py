"""What one benchmark run works on: its options (`BenchmarkConfig`) and its data, the pool with
the oracle's truth (`BenchmarkData`). The loop and the steps it calls both read them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cryoal.io.pool import Pool

CACHE_BYTES = 2 * 1024**3  # pools up to this size are held in memory during the run


@dataclass
class BenchmarkConfig:
    """Every option of one benchmark run (recorded in run.json; checked again on --resume)."""

    schemes: list[str]
    seeds: int = 3
    initial: int = 50
    budget: int = 50
    cycles: int = 5
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    epochs: int = 20
    batch_size: int = 16
    arch: str = "resnet3d"
    width: int | None = None  # the arch's channel width (None: its default)
    lr: float | None = None  # None: 1e-3, or `train --freeze-trunk`'s PROBE_LR with freeze_trunk
    weight_decay: float = 1e-2
    patience: int = 0
    warm_start: bool = False
    warm_epochs: int | None = None  # epochs of a fine-tuning cycle (None: `epochs`)
    device: str = "auto"
    mc_passes: int = 20
    norm: str = "l2"
    score_batch_size: int = 64
    augment: bool = True  # the mode's training augmentation (off for data without those symmetries)
    beta: float = 1.0  # exponent of the sampled picks (`select --beta`)
    pretrain: bool = False  # one self-supervised pretraining per seed on its non-test particles
    pretrain_epochs: int | None = None  # None: `cryoal pretrain`'s default
    initial_scheme: str = "random"  # how each seed's initial set is drawn: random (balanced) or typiclust
    freeze_trunk: bool = False  # --pretrain: train the head alone on the frozen encoder trunk

    # options that change results: a resumed run must use the same values
    RESULT_KEYS = (
        "initial", "budget", "test_fraction", "val_fraction", "epochs", "batch_size", "arch", "width", "lr",
        "weight_decay", "patience", "warm_start", "warm_epochs", "mc_passes", "norm", "augment", "beta",
        "pretrain", "pretrain_epochs", "initial_scheme", "freeze_trunk",
    )
    # result keys added after run.json files existed: the value an older run.json that lacks one ran with
    ABSENT_MEANS = {"freeze_trunk": False}

    def __post_init__(self) -> None:
        if self.lr is None:  # the default of `cryoal train`, with or without --freeze-trunk
            from cryoal.learn.train import PROBE_LR

            self.lr = PROBE_LR if self.freeze_trunk else 1e-3

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def arch_kwargs(self) -> dict:
        return {} if self.width is None else {"width": self.width}

    def labels_at(self, cycle: int) -> int:
        """Number of labelled particles at `cycle`."""
        return self.initial + cycle * self.budget


@dataclass
class BenchmarkData:
    """The pool (read only) with the oracle's truth, aligned to pool rows."""

    pool: Pool
    truth: np.ndarray  # (N,) class index per pool row (segmentation: the strata, `io.masks.mask_labels`)
    class_names: list[str]
    targets: np.ndarray | None = None  # segmentation: the true masks (N, *shape), what is trained and scored
    workdir: Path = field(default_factory=Path)  # scratch files of the steps (OUT_DIR/state)
    scratch: dict = field(default_factory=dict, repr=False)  # what the steps cache between calls
    _volumes: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def particle_ids(self) -> np.ndarray:
        return self.pool.particle_ids

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Volumes of the given pool rows. A pool under CACHE_BYTES is read once and kept in memory
        (every cycle reads the labelled and test sets again); a bigger one is read on demand."""
        if self._volumes is None and self._fits_in_cache():
            self._volumes = self.pool.read(slice(None))
        if self._volumes is not None:
            return self._volumes[np.asarray(indices, dtype=np.int64)]
        return self.pool.read(indices)

    def _fits_in_cache(self) -> bool:
        return len(self.pool) * int(np.prod(self.pool.shape)) * 4 <= CACHE_BYTES


__all__ = ["CACHE_BYTES", "BenchmarkConfig", "BenchmarkData"]
