"""Training: an array-level core (`fit`) and a pool wrapper (`train_from_pool`).

The labelled set is loaded into memory: its size is bounded by how many labels an expert makes
(hundreds to a few thousand), not by the pool size. Unlabelled particles are never read here.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cryoal.errors import CryoalError
from cryoal.learn.device import resolve_device, seed_everything, use_all_cpu_cores
from cryoal.learn.metrics import confusion_matrix, labelled_accuracy, mean_iou, per_class_accuracy
from cryoal.modes import Mode, get_mode

Progress = Callable[[dict[str, Any]], None]

DEFAULTS: dict[str, Any] = {
    "epochs": 30, "batch_size": 16, "lr": 1e-3, "weight_decay": 1e-2, "patience": 10,
    "seed": 0, "val_fraction": 0.2,
}


# ------------------------------------------------------------------------------------------
# Validation split
# ------------------------------------------------------------------------------------------


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 of `labels` into (train, val), stratified by class.

    Small-class rule: a class with n >= 2 labels puts round(n * val_fraction) of them in
    validation, but at least 1 and at most n - 1, so it is both validated and trained on. A class
    with a single label goes to training only. With `val_fraction == 0` everything is training.
    Deterministic under `seed`; both outputs are sorted.
    """
    labels = np.asarray(labels)
    if not 0.0 <= val_fraction < 1.0:
        raise CryoalError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(members.size)]
        n = members.size
        n_val = 0
        if val_fraction > 0 and n >= 2:
            n_val = min(n - 1, max(1, int(round(n * val_fraction))))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ------------------------------------------------------------------------------------------
# Core loop
# ------------------------------------------------------------------------------------------


def _amp_settings(device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed): bf16 where supported, else fp16."""
    if device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True  # fp16 gradients underflow without loss scaling


# every BatchNorm, including SyncBatchNorm and cryoal.learn.ddp.GlobalBatchNorm under torchrun
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
BN_RECALIBRATION_SAMPLES = 1024
PROBE_LR = 3e-2  # the default learning rate of a head trained alone on a frozen pretrained trunk


def recalibrate_batchnorm(model: nn.Module, x: np.ndarray, mode, device: torch.device, batch_size: int,
                          amp_dtype: torch.dtype | None, dist=None) -> None:
    """Recompute BatchNorm running statistics as exact averages over `x` for the current weights.

    With a few hundred labels an epoch is only a handful of batches, and the default running
    averages (momentum 0.1) lag far behind weights that change quickly, so eval-mode predictions
    can collapse to one class while training accuracy is high. One no-grad pass fixes that.
    Under torchrun (`dist`) each rank passes its share of every chunk and the global-batch
    BatchNorm of `cryoal.learn.ddp` gives the statistics of the whole chunk, as in one process.
    """
    frozen = set(model.trunk.modules()) if getattr(model, "frozen_trunk", False) else set()
    bns = [mod for mod in model.modules() if isinstance(mod, _BN_TYPES) and mod not in frozen]
    if not bns:
        return
    model.eval()
    saved = []
    for bn in bns:
        saved.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the whole pass
        bn.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if len(chunk) < 2 and start > 0:  # a lone sample adds nothing reliable to the variance
                continue
            if dist is not None and dist.distributed:
                from cryoal.learn.distributed import rank_slice

                chunk = chunk[rank_slice(len(chunk), dist)]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                model(mode.to_input(chunk).to(device))
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
        bn.train(False)


def _evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, mode, device: torch.device,
              batch_size: int, amp_dtype: torch.dtype | None,
              logits_out: list | None = None) -> tuple[float, np.ndarray]:
    """Mean loss and predictions on (x, y) without augmentation, model in eval mode.

    `logits_out`, when given, receives the float64 logits of each batch (for temperature scaling).
    """
    model.eval()
    losses, preds = [], []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            xb = mode.to_input(x[start : start + batch_size]).to(device)
            yb = torch.as_tensor(y[start : start + batch_size], dtype=torch.long, device=device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xb)
            losses.append(mode.per_sample_loss(logits.float(), yb).cpu())  # dense targets: pixel means
            preds.append(logits.argmax(dim=1).cpu())
            if logits_out is not None:
                logits_out.append(logits.double().cpu().numpy())
    return float(torch.cat(losses).mean()), torch.cat(preds).numpy()


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    *,
    arch: str | None = None,
    n_classes: int,
    epochs: int = DEFAULTS["epochs"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    weight_decay: float = DEFAULTS["weight_decay"],
    patience: int = DEFAULTS["patience"],
    seed: int = DEFAULTS["seed"],
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    mode: str = "subtomogram",
    augment: bool = True,
    init_model: nn.Module | None = None,
    arch_kwargs: dict | None = None,
    class_names: list[str] | None = None,
    dist=None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a classifier on in-memory arrays; returns (model with the best weights, in eval mode, metrics).

    `x_*` are (N, *particle_shape) float32, `y_*` int class indices. AdamW with cosine learning-rate
    decay; after each epoch the model is scored on the validation set, and the weights with the best
    validation accuracy (ties: lower validation loss) are kept. Training stops after `patience`
    epochs without improvement. With no validation set (None or empty) every epoch runs and the
    last weights are kept; the metrics are then measured on the training set.
    `init_model` (same arch) fine-tunes an existing model instead of starting from scratch.
    `progress(info)` is called with `{"event": "batch", ...}` and `{"event": "epoch", ...}` dicts.
    Under torchrun pass `dist` (`cryoal.learn.distributed.init_distributed`): every rank draws the same
    global batches and augmentations, computes its contiguous share of each (DDP, BatchNorm over
    the global batch, see `cryoal.learn.ddp`), and every rank returns the same model and metrics.
    """
    m = get_mode(mode)
    x_train, y_train, x_val, y_val = _checked_arrays(x_train, y_train, x_val, y_val, epochs, batch_size)
    run = _start_run(m, arch or m.default_arch, x_train.shape[1:], n_classes, init_model=init_model,
                     arch_kwargs=arch_kwargs, device=device, dist=dist, seed=seed, lr=lr,
                     weight_decay=weight_decay, epochs=epochs, batch_size=batch_size, augment=augment,
                     progress=progress)
    t_start = time.perf_counter()
    history, best, stopped_early = _train_epochs(run, x_train, y_train, x_val, y_val, epochs, patience,
                                                 n_classes)
    model = _keep_best(run, best, has_val=y_val is not None)
    metrics = _final_metrics(run, model, (x_train, y_train), (x_val, y_val), n_classes, class_names,
                             history, best, stopped_early, t_start)
    metrics["settings"] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                           "patience": patience, "seed": seed, "augment": augment}
    return model, metrics


@dataclass
class _Run:
    """What one training run carries from step to step."""

    mode: Mode
    arch: str
    dev: torch.device
    dist: Any  # DistContext
    model: nn.Module
    net: nn.Module  # the model, or its DDP wrapper under torchrun
    optimiser: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    gen: torch.Generator  # shuffling and augmentation: CPU, reproducible
    threads: int | None
    batch_size: int
    augment: bool
    progress: Progress | None


def _checked_arrays(x_train, y_train, x_val, y_val, epochs: int, batch_size: int) -> tuple[
        np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The arrays as float32 inputs and int64 targets (no validation set: None, None); CryoalError
    on an empty training set or settings that cannot train."""
    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.int64)
    if x_val is not None and y_val is not None and len(y_val) > 0:
        x_val = np.asarray(x_val, dtype=np.float32)
        y_val = np.asarray(y_val, dtype=np.int64)
    else:
        x_val = y_val = None
    if len(y_train) == 0:
        raise CryoalError("no training particles")
    if epochs < 1:
        raise CryoalError(f"--epochs {epochs}: must be at least 1")
    if batch_size < 2:  # a lone sample makes BatchNorm's batch statistics degenerate
        raise CryoalError(f"--batch-size {batch_size}: must be at least 2 (BatchNorm needs 2 per batch)")
    return x_train, y_train, x_val, y_val


def _start_run(m: Mode, arch: str, shape: tuple[int, ...], n_classes: int, *, init_model, arch_kwargs,
               device, dist, seed: int, lr: float, weight_decay: float, epochs: int, batch_size: int,
               augment: bool, progress: Progress | None) -> _Run:
    """Device, threads, seeds, the model (new, or `init_model` to fine-tune), optimiser and schedule."""
    from cryoal.learn.distributed import DistContext, rank_device

    dist = dist or DistContext()
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    dev = rank_device(dev, dist)
    threads = use_all_cpu_cores() if dev.type == "cpu" else None
    amp_dtype, use_scaler = _amp_settings(dev)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    if init_model is not None:
        model = init_model
        arch = getattr(model, "arch", arch)
    else:
        model = m.build_model(arch, shape, n_classes, **(arch_kwargs or {}))
    model.to(dev)
    net = model
    if dist.distributed:  # swaps BatchNorm for its global-batch form: build the optimiser after
        from cryoal.learn.ddp import wrap_for_training

        net = wrap_for_training(model, dist, dev)
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs, eta_min=lr * 0.01)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler and dev.type == "cuda")  # fp16 on CUDA only
    return _Run(m, arch, dev, dist, model, net, optimiser, scheduler, scaler, amp_dtype, gen, threads,
                batch_size, augment, progress)


def _train_epochs(run: _Run, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
                  y_val: np.ndarray | None, epochs: int, patience: int, n_classes: int) -> tuple[
                      list[dict[str, Any]], dict[str, Any], bool]:
    """The epochs: train, re-estimate BatchNorm, validate and keep the best weights, until `epochs`
    or `patience` epochs without improvement. Returns (history, best, stopped early)."""
    n = len(y_train)
    has_val = y_val is not None
    # BN statistics from a fixed random subset: exact enough, and bounded cost for big label sets
    recal_idx = np.sort(torch.randperm(n, generator=run.gen)[:BN_RECALIBRATION_SAMPLES].numpy())
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"acc": -1.0, "loss": math.inf, "epoch": 0, "state": None}
    since_best = 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        record = _train_one_epoch(run, x_train, y_train, epoch)
        if has_val or epoch == epochs:
            recalibrate_batchnorm(run.model, x_train[recal_idx], run.mode, run.dev, run.batch_size,
                                  run.amp_dtype, run.dist)
        if has_val:
            since_best = 0 if _validate(run, x_val, y_val, n_classes, epoch, record, best) else since_best + 1
        record["seconds"] = time.perf_counter() - t0
        record["best_epoch"] = best["epoch"] if has_val else epoch
        history.append(record)
        if run.progress:
            run.progress({"event": "epoch", "epochs": epochs, **record})
        if has_val and since_best >= patience:
            return history, best, True
    return history, best, False


def _train_one_epoch(run: _Run, x_train: np.ndarray, y_train: np.ndarray, epoch: int) -> dict[str, Any]:
    """One pass over the shuffled training set; the epoch's record (loss, accuracy, learning rate)."""
    from cryoal.learn.distributed import all_reduce_sum, rank_slice

    dist, m, dev = run.dist, run.mode, run.dev
    if dist.distributed:
        from cryoal.learn.ddp import loss_for_global_mean
    n, batch_size = len(y_train), run.batch_size
    n_batches = math.ceil(n / batch_size)
    run.net.train()
    if getattr(run.model, "frozen_trunk", False):  # a linear probe: the trunk's BatchNorm stays as loaded
        run.model.trunk.eval()
    perm = torch.randperm(n, generator=run.gen).numpy()
    total_loss, total_correct, seen, total_targets = 0.0, 0, 0, 0
    for b in range(n_batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        if len(idx) == 1 and n > 1:  # a lone sample makes BatchNorm statistics degenerate
            continue
        xb = m.to_input(x_train[idx])
        yb = torch.as_tensor(y_train[idx])
        if run.augment:
            xb, yb = m.augment_batch(xb, yb, run.gen)
        xb = xb.to(dev, non_blocking=True)
        yb = yb.to(dev)
        if dist.distributed:  # this rank's share of the global batch, augmented as one process would
            part = rank_slice(len(idx), dist)
            xb, yb = xb[part], yb[part]
        with torch.autocast(dev.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
            logits = run.net(xb)
        per_sample = m.per_sample_loss(logits.float(), yb)
        if dist.distributed:
            loss = loss_for_global_mean(per_sample, len(idx), dist)
        else:
            loss = per_sample.mean()
        run.optimiser.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimiser)
        run.scaler.update()
        if dist.distributed:
            total_loss += float(per_sample.detach().sum())
            seen += len(yb)
        else:
            total_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
        total_correct += int(((logits.argmax(1) == yb) & (yb >= 0)).sum())
        total_targets += int((yb >= 0).sum())  # samples, or labelled pixels of masks
        if run.progress:
            run.progress({"event": "batch", "epoch": epoch, "batch": b + 1, "n_batches": n_batches})
    run.scheduler.step()
    if dist.distributed:  # epoch totals over every rank's share
        sums = all_reduce_sum([total_loss, total_correct, seen, total_targets], dist)
        total_loss, (total_correct, seen, total_targets) = sums[0], (int(v) for v in sums[1:])
    return {
        "epoch": epoch, "train_loss": total_loss / seen,
        "train_accuracy": total_correct / max(total_targets, 1),
        "lr": run.optimiser.param_groups[0]["lr"],
    }


def _validate(run: _Run, x_val: np.ndarray, y_val: np.ndarray, n_classes: int, epoch: int,
              record: dict[str, Any], best: dict[str, Any]) -> bool:
    """Score the epoch's weights on the validation set (into `record`); keep them in `best` when they
    beat it (higher accuracy, or mean IoU for masks; ties: lower loss). True if they did."""
    val_loss, val_pred = _evaluate(run.model, x_val, y_val, run.mode, run.dev, max(run.batch_size, 32),
                                   run.amp_dtype)
    val_acc = labelled_accuracy(y_val, val_pred)
    record.update(val_loss=val_loss, val_accuracy=val_acc)
    if y_val.ndim > 1:  # masks: keep the best mean IoU (pixel accuracy favours all-background)
        val_acc = record["val_mean_iou"] = mean_iou(confusion_matrix(y_val, val_pred, n_classes))
    improved = val_acc > best["acc"] or (val_acc == best["acc"] and val_loss < best["loss"])
    if improved:
        state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        best.update(acc=val_acc, loss=val_loss, epoch=epoch, state=state)
    return improved


def _keep_best(run: _Run, best: dict[str, Any], has_val: bool) -> nn.Module:
    """The trained model in eval mode, with the best validation weights when there was a split."""
    model = run.model
    if run.dist.distributed:
        from cryoal.learn.ddp import unwrap_trained

        model = unwrap_trained(run.net)
    if has_val and best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return model


def _final_metrics(run: _Run, model: nn.Module, train: tuple[np.ndarray, np.ndarray],
                   val: tuple[np.ndarray | None, np.ndarray | None], n_classes: int,
                   class_names: list[str] | None, history: list[dict[str, Any]], best: dict[str, Any],
                   stopped_early: bool, t_start: float) -> dict[str, Any]:
    """Metrics of the kept weights: on the validation set, or on the training set without one; the
    temperature is fitted here (classifiers with a validation split only)."""
    (x_train, y_train), (x_val, y_val) = train, val
    has_val = y_val is not None
    dense = y_train.ndim > 1  # per-pixel targets (segmentation masks)
    x_eval, y_eval = (x_val, y_val) if has_val else (x_train, y_train)
    eval_logits: list[np.ndarray] = []
    eval_loss, eval_pred = _evaluate(model, x_eval, y_eval, run.mode, run.dev, max(run.batch_size, 32),
                                     run.amp_dtype, eval_logits)
    skip = "per-pixel outputs are not calibrated" if dense else None if has_val else "no validation split"
    calibration = _calibrate(model, eval_logits, y_eval, skip)
    cm = confusion_matrix(y_eval, eval_pred, n_classes)
    names = list(class_names) if class_names else [str(i) for i in range(n_classes)]
    eval_acc = labelled_accuracy(y_eval, eval_pred)
    return {
        "arch": run.arch,
        "evaluated_on": "validation" if has_val else "training",
        "accuracy": eval_acc,
        "loss": eval_loss,
        "val_accuracy": eval_acc if has_val else None,
        "best_epoch": best["epoch"] if has_val else len(history),
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "class_names": names,
        "per_class_accuracy": dict(zip(names, per_class_accuracy(cm), strict=True)),
        "confusion_matrix": cm.tolist(),
        "n_train": int(len(y_train)),
        "n_val": int(len(y_val)) if has_val else 0,
        # per class: samples, or labelled pixels for masks
        "n_train_per_class": _class_counts(y_train, n_classes),
        "n_val_per_class": _class_counts(y_val, n_classes) if has_val else [0] * n_classes,
        "seconds": time.perf_counter() - t_start,
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
        "device": str(run.dev),
        "amp": str(run.amp_dtype).replace("torch.", "") if run.amp_dtype is not None else None,
        "cpu_threads": run.threads,
        "world_size": run.dist.world_size,
        "history": history,
        "mean_iou": mean_iou(cm) if dense else None,
        "calibration": calibration,
    }


def _calibrate(model: nn.Module, logits: list[np.ndarray], y: np.ndarray, skip: str | None) -> dict[str, Any]:
    """Decide the temperature on the validation logits (after early stopping) and attach it to `model`.

    Only classifiers with a validation split are calibrated; otherwise T = 1 and the report says
    why (the training set would fit a temperature to what the model has memorised). With a split,
    `cryoal.learn.calibration.decide_temperature` keeps a fitted T only when the split is big enough and
    T beats chance.
    """
    from cryoal.learn.calibration import decide_temperature, set_temperature

    if skip is not None or not logits:
        set_temperature(model, 1.0)
        return {"temperature": 1.0, "applied": False, "fitted_temperature": None,
                "reason": skip or "no validation logits", "n_val": 0}
    decision = decide_temperature(np.concatenate(logits), y)
    set_temperature(model, decision["temperature"])
    return decision


def _class_counts(y: np.ndarray, n_classes: int) -> list[int]:
    y = np.asarray(y, np.int64).ravel()
    return np.bincount(y[y >= 0], minlength=n_classes)[:n_classes].tolist()


# ------------------------------------------------------------------------------------------
# Pool wrapper
# ------------------------------------------------------------------------------------------


def labelled_split(pool, val_fraction: float, seed: int, present: np.ndarray | None = None) -> tuple[
    np.ndarray, np.ndarray, list[str]
]:
    """(train indices, val indices, class names) of a pool's labelled particles, with the bad-input
    checks that `cryoal train` reports: no labels, a single class, too few labels to validate.

    `present`: the classes the training targets hold (for masks: the pixel classes), if not the
    labels themselves."""
    labels = pool.labels
    labelled = np.flatnonzero(labels >= 0)
    names = list(pool.class_names)
    if labelled.size and labels.max() >= len(names):  # labels without names: number them
        names += [str(i) for i in range(len(names), int(labels.max()) + 1)]
    if labelled.size == 0:
        raise CryoalError(
            f"{pool.path}: no labelled particles; import labels first (cryoal label {pool.path} labels.csv)"
        )
    if present is None:
        present = np.unique(labels[labelled])
    if present.size < 2:
        raise CryoalError(
            f"{pool.path}: needs at least 2 classes with labels, found only '{names[present[0]]}' "
            f"({labelled.size} labels); label particles of another class first"
        )
    pos_train, pos_val = stratified_split(labels[labelled], val_fraction, seed)
    if val_fraction > 0 and pos_val.size == 0:
        raise CryoalError(
            f"{pool.path}: too few labels for a validation split ({labelled.size} labels, no class has 2); "
            "label more particles, or pass --val-fraction 0 to train on all of them and keep the last epoch"
        )
    return labelled[pos_train], labelled[pos_val], names


def train_from_pool(
    pool_path: str | os.PathLike,
    *,
    val_fraction: float = DEFAULTS["val_fraction"],
    arch: str | None = None,
    progress: Progress | None = None,
    init_encoder: str | os.PathLike | None = None,
    freeze_trunk: bool = False,
    **fit_kwargs: Any,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Train on a pool's labelled particles; returns (model, metrics, checkpoint metadata).

    The model predicts every class in the pool's class list (also those without labels yet), so
    its class indices match the pool's. Pass the metadata to `save_checkpoint`.
    `init_encoder`: an encoder file (`cryoal pretrain -o`) whose trunk the model starts from (its
    arch and width); the metadata then records its digest as `encoder_digest`. `freeze_trunk` (with
    `init_encoder`) trains the head alone on the pretrained features: a linear probe.
    """
    from cryoal.io.pool import open_pool

    seed = int(fit_kwargs.get("seed", DEFAULTS["seed"]))
    encoder = None
    if freeze_trunk and init_encoder is None:
        raise CryoalError("--freeze-trunk needs --init ENCODER (a random trunk would stay random)")
    with open_pool(pool_path) as pool:
        mode = get_mode(pool.mode)
        if init_encoder is not None:  # checked before any data is read
            from cryoal.learn.encoder import check_encoder_fits, read_encoder

            encoder = read_encoder(init_encoder)
            check_encoder_fits(encoder, init_encoder, mode=pool.mode, input_shape=pool.shape, arch=arch)
        present = None
        if mode.targets is not None:  # dense targets: the classes that pixels of the masks hold
            targets = mode.read_targets(pool, np.flatnonzero(pool.labels >= 0))
            present = np.unique(targets[targets >= 0])
        train_idx, val_idx, names = labelled_split(pool, val_fraction, seed, present)
        x_train, y_train = pool.read(train_idx), mode.read_targets(pool, train_idx)
        x_val, y_val = pool.read(val_idx), mode.read_targets(pool, val_idx)
        meta_base = {
            "mode": pool.mode, "class_names": names, "input_shape": list(pool.shape), "box": pool.box,
            "voxel_size": pool.voxel_size, "pool": str(Path(pool_path)),
            "label_round": int(pool.label_rounds.max()) if len(pool) else -1,
            "train_ids": [str(p) for p in pool.particle_ids[train_idx]],
            "val_ids": [str(p) for p in pool.particle_ids[val_idx]],
        }
    arch = arch or mode.default_arch
    if encoder is not None:
        from cryoal.learn.encoder import build_from_encoder, encoder_digest
        from cryoal.learn.encoder import freeze_trunk as freeze  # the argument has the function's name

        seed_everything(seed)  # the new head's initialisation follows the seed, as from scratch
        fit_kwargs["init_model"] = build_from_encoder(encoder, init_encoder, len(names))
        if freeze_trunk:
            # measured (benchmarks/pretrain_quality.py): at 1e-3 the head alone barely moves in 30 epochs
            fit_kwargs.setdefault("lr", PROBE_LR)
            freeze(fit_kwargs["init_model"])
            meta_base["freeze_trunk"] = True
        arch = encoder["arch"]
        meta_base["encoder_digest"] = encoder_digest(init_encoder)
    model, metrics = fit(
        x_train, y_train, x_val, y_val, arch=arch, n_classes=len(names), progress=progress,
        mode=mode.name, class_names=names, **fit_kwargs,
    )
    metrics["val_fraction"] = val_fraction
    metrics["classes_without_labels"] = [
        nm for nm, a, b in zip(names, metrics["n_train_per_class"], metrics["n_val_per_class"], strict=True)
        if a + b == 0
    ]
    meta = {**meta_base, "arch": arch, "metrics": metrics}
    return model, metrics, meta


__all__ = ["DEFAULTS", "fit", "labelled_split", "stratified_split", "train_from_pool"]
