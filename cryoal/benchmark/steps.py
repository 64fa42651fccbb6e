"""The three calls a benchmark cycle makes into cryoal: train, evaluate, select.

They are thin: training is `cryoal.learn.train.fit` (what `cryoal train` runs), evaluation is
`cryoal.learn.inference.predict_proba` (what `cryoal predict` runs), and selection is
`cryoal.select` (what `cryoal select` runs), so the benchmark measures the product itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cryoal.benchmark import splits
from cryoal.benchmark.config import BenchmarkConfig, BenchmarkData
from cryoal.benchmark.metrics import accuracy, macro_f1


def seed_encoder_of(data: BenchmarkData, seed: int):
    """The `pretraining.SeedEncoder` of `seed` under --pretrain (set by `prepare_seed`), else None."""
    enc = data.scratch.get("encoder")
    if enc is not None and enc.seed != seed:  # the loop prepares each seed before using it
        raise RuntimeError(f"seed {seed}: the encoder in use is seed {enc.seed}'s")
    return enc


def prepare_seed(data: BenchmarkData, config: BenchmarkConfig, seed: int, split, log) -> tuple[object, dict]:
    """--pretrain, before the seed's first cycle: its encoder (pretrained on the non-test rows, or
    reused from the state directory), the working pool's embedding, and with --initial-scheme
    typiclust the initial set drawn from it. Returns (the split to use, the pretraining's cost)."""
    from dataclasses import replace

    from cryoal.benchmark.pretraining import embed_working_pool, seed_encoder, typiclust_initial

    data.scratch.pop("encoder", None)
    work = _working_pool(data, split.selectable, split.initial)  # rows: exactly the non-test particles
    enc = seed_encoder(data, config, seed, work, log)
    embed_working_pool(enc, work, config)
    data.scratch["encoder"] = enc
    cost = enc.cost()
    if config.initial_scheme == "typiclust":
        split = replace(split, initial=typiclust_initial(data, work, enc, config.initial, seed))
        cost["initial_ids"] = [str(p) for p in data.particle_ids[split.initial]]  # not derivable later
    return split, cost


def train_model(data: BenchmarkData, labelled: np.ndarray, config: BenchmarkConfig, seed: int, cycle: int,
                init_model=None, *, build_only: bool = False):
    """Train on the labelled rows: validation (early stopping) is carved out of THEM, never the test split.

    The training seed depends on (seed, cycle) only, so at a given cycle every scheme trains with
    the same randomness and differs only by its labelled set. `build_only` returns an untrained
    model of the right shape (to load saved weights into).
    """
    from cryoal.learn.train import fit, stratified_split
    from cryoal.modes import get_mode

    mode = get_mode(data.pool.mode)
    if build_only:
        from cryoal.learn.device import resolve_device

        enc = seed_encoder_of(data, seed)
        if enc is not None:  # the encoder's arch and width (weights are loaded over it)
            from cryoal.learn.encoder import build_from_encoder

            model = build_from_encoder(enc.record, enc.path, data.n_classes)
        else:
            model = mode.build_model(config.arch, data.pool.shape, data.n_classes, **config.arch_kwargs)
        return model.to(resolve_device(config.device)).eval()
    epochs = config.warm_epochs if init_model is not None and config.warm_epochs else config.epochs
    enc = seed_encoder_of(data, seed)
    if init_model is None and enc is not None:  # --pretrain: start from the seed's encoder, as --init
        from cryoal.benchmark.pretraining import initial_model

        init_model = initial_model(enc, data.n_classes, splits.torch_seed_for(seed, splits.TRAINING, cycle))
    if config.freeze_trunk and init_model is not None:
        from cryoal.learn.encoder import freeze_trunk

        # every time: a warm-start model loaded from saved weights has lost the flag
        init_model = freeze_trunk(init_model)
    labelled = np.asarray(labelled, dtype=np.int64)
    y = data.truth[labelled]
    pos_train, pos_val = stratified_split(
        y, config.val_fraction, splits.torch_seed_for(seed, splits.VALIDATION, cycle)
    )
    x = data.read(labelled)
    if data.targets is not None:  # segmentation: train on the true masks (the strata split them)
        y = data.targets[labelled]
    model, _ = fit(
        x[pos_train], y[pos_train], x[pos_val], y[pos_val], mode=mode.name,
        arch=config.arch, n_classes=data.n_classes, batch_size=config.batch_size,
        epochs=epochs,
        lr=config.lr, weight_decay=config.weight_decay,
        # patience 0 means "no early stopping": run every epoch, keep the best on validation
        patience=config.patience if config.patience > 0 else epochs,
        seed=splits.torch_seed_for(seed, splits.TRAINING, cycle), device=config.device,
        init_model=init_model, class_names=data.class_names, arch_kwargs=config.arch_kwargs,
        augment=config.augment,
    )
    return model


def evaluate_model(
    model, data: BenchmarkData, test: np.ndarray, config: BenchmarkConfig
) -> tuple[float, float]:
    """(accuracy, macro-F1) of the model on the test rows; for segmentation (mean IoU over
    classes, macro-F1 over pixels), so the curves' accuracy column holds the mean IoU."""
    from cryoal.learn.device import resolve_device
    from cryoal.learn.inference import predict_proba

    device = resolve_device(config.device)
    model.to(device)
    preds = []
    for start in range(0, test.size, config.score_batch_size):
        rows = test[start : start + config.score_batch_size]
        preds.append(predict_proba(model, data.read(rows), device).argmax(axis=1))
    pred = np.concatenate(preds) if preds else np.empty(0, dtype=np.int64)
    if data.targets is not None:
        from cryoal.learn.metrics import confusion_matrix, mean_iou

        truth = data.targets[test]
        keep = truth >= 0
        return (mean_iou(confusion_matrix(truth, pred, data.n_classes)),
                macro_f1(truth[keep].ravel(), pred[keep].ravel()))
    truth = data.truth[test]
    return accuracy(truth, pred), macro_f1(truth, pred)


class WorkingPool:
    """A private pool file holding only the selectable (non-test) particles of one seed.

    `cryoal select` picks among a pool's unlabelled particles and reads them from the HDF5 file;
    handing it this pool, with the benchmark's labelled set written into its `label` column,
    makes the oracle loop run exactly that code, with the test split simply absent from the pool
    it sees. The user's pool is never written. Row j here is row `rows[j]` of the user's pool.
    """

    def __init__(self, data: BenchmarkData, rows: np.ndarray, path: Path):
        from cryoal.io.pool import PoolWriter

        self.rows = np.asarray(rows, dtype=np.int64)
        self.path = path
        pool = data.pool
        # uncompressed: a scratch file read a few times, decompression would only cost time
        with PoolWriter(path, mode=pool.mode, shape=pool.shape, voxel_size=pool.voxel_size,
                        class_names=data.class_names, compression=None) as w:
            for start in range(0, self.rows.size, 64):
                chunk = self.rows[start : start + 64]
                w.add(data.read(chunk), list(pool.particle_ids[chunk]), list(pool.sources[chunk]))
        self.position = {int(r): j for j, r in enumerate(self.rows)}

    def set_labels(self, truth: np.ndarray, labelled: np.ndarray) -> None:
        """Write the revealed labels: truth for the labelled rows, -1 (unlabelled) for the rest."""
        import h5py

        labels = np.full(self.rows.size, -1, dtype=np.int32)
        at = np.asarray([self.position[int(r)] for r in labelled], dtype=np.int64)
        labels[at] = truth[self.rows[at]]
        with h5py.File(self.path, "r+") as h5:
            h5["label"][...] = labels

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _working_pool(data: BenchmarkData, candidates: np.ndarray, labelled: np.ndarray) -> WorkingPool:
    rows = np.union1d(candidates, labelled)
    cached = data.scratch.get("working")
    if cached is not None and np.array_equal(cached.rows, rows):
        return cached
    if cached is not None:
        cached.remove()
    digest = hashlib.sha1(rows.tobytes()).hexdigest()[:12]
    path = data.workdir / f"selectable-{digest}.h5"
    data.scratch["working"] = WorkingPool(data, rows, path)
    return data.scratch["working"]


def release(data: BenchmarkData) -> None:
    """Delete the scratch files the steps made for this run."""
    cached = data.scratch.pop("working", None)
    if cached is not None:
        cached.remove()
    data.scratch.pop("encoder", None)


def select_particles(model, data: BenchmarkData, candidates: np.ndarray, labelled: np.ndarray, scheme: str,
                     n: int, config: BenchmarkConfig, seed: int, cycle: int) -> np.ndarray:
    """Pool rows of the `n` particles `scheme` picks among `candidates`, best first.

    Runs `cryoal.select.select_from_pool` (the code behind `cryoal select`) on a working pool of
    the candidates plus the labelled set (see `WorkingPool`), so coreset's labelled centres are
    the labelled set and nothing of the test split is seen.
    """
    from cryoal.benchmark.variants import parse_variant
    from cryoal.io.pool import open_pool
    from cryoal.scoring import SCHEMES
    from cryoal.select import select_from_pool

    variant = parse_variant(scheme, tuple(SCHEMES))  # e.g. `expected:power`: `select --pick power`
    work = _working_pool(data, candidates, labelled)
    work.set_labels(data.truth, labelled)
    with open_pool(work.path) as pool:
        ranked = select_from_pool(
            pool, model, scheme=variant.scheme, n=n, batch_size=config.score_batch_size, pick=variant.pick,
            beta=config.beta, calibrated=variant.calibrated,
            seed=splits.torch_seed_for(seed, splits.SELECTION, cycle), norm=config.norm,
            mc_passes=config.mc_passes, score_cache=data.scratch.setdefault("scores", {}),
            encoder_digest=enc.digest if (enc := seed_encoder_of(data, seed)) is not None else None,
        )
    return work.rows[ranked.indices]
