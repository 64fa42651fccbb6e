"""`benchmark --pretrain`: one self-supervised encoder per seed, trained on that seed's non-test
particles only, from which every model of the seed starts (`train --init` semantics).

The encoder is pretrained with `cryoal.learn.pretrain.pretrain_pool` on the seed's working pool
(`steps.WorkingPool`: the non-test rows, the test split is absent from the file), so the test
particles are never seen by the pretraining. The working pool then gets the `embedding` dataset
(tagged with the encoder's digest) that `typiclust` and the embedding picks read. The encoder file
is kept in OUT_DIR/state, so `--resume` reuses it instead of pretraining again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cryoal.benchmark import splits
from cryoal.benchmark.config import BenchmarkConfig, BenchmarkData

INITIAL_SCHEMES = ("random", "typiclust")
# settings that must match for a cached encoder to be reused (the device may differ)
_SETTING_KEYS = ("arch", "width", "method", "epochs", "batch_size", "lr", "weight_decay", "temperature",
                 "proj_dim", "seed")


@dataclass(frozen=True)
class SeedEncoder:
    """The encoder of one seed: its file, digest, the file's record, and whether it was reused."""

    seed: int
    path: Path
    digest: str
    record: dict[str, Any]
    reused: bool

    def cost(self) -> dict[str, Any]:
        """What run.json reports of this seed's pretraining (the figures of the run that trained it)."""
        pre = self.record["pretrain"]
        return {"seconds": round(float(pre["wall_s"]), 2), "epochs": int(pre["epochs"]),
                "method": pre["method"], "final_loss": float(pre["losses"][-1]),
                "n_particles": int(pre["n_particles"]), "device": pre["device"],
                "encoder_digest": self.digest, "reused": self.reused}


def pretrain_settings(data: BenchmarkData, config: BenchmarkConfig, seed: int):
    """`cryoal pretrain`'s defaults, with the benchmark's arch and width (the fine-tuned models are
    then the scratch models' architecture) and a seed derived from the benchmark's seed."""
    from cryoal.learn.encoder import default_width  # the arch's own width when --width is not given
    from cryoal.learn.pretrain import PretrainSettings
    from cryoal.modes import get_mode

    model = get_mode(data.pool.mode).build_model(config.arch, data.pool.shape, 2, **config.arch_kwargs)
    width = int(config.width or default_width(model))
    epochs = config.pretrain_epochs or PretrainSettings.epochs
    return PretrainSettings(arch=config.arch, width=width, epochs=epochs, device=config.device,
                            seed=splits.torch_seed_for(seed, splits.PRETRAINING))


def check_pretrain(data: BenchmarkData, config: BenchmarkConfig, n_particles: int) -> None:
    """CryoalError, before anything is written, when the run cannot pretrain (mode, settings)."""
    from cryoal.learn.pretrain import check_settings

    check_settings(pretrain_settings(data, config, 0), n_particles, data.pool.mode, str(data.pool.path))


def seed_encoder(data: BenchmarkData, config: BenchmarkConfig, seed: int, work, log) -> SeedEncoder:
    """The seed's encoder: the cached one in the state directory when it was trained on the same
    particles with the same settings, else pretrained now on the working pool `work` (non-test rows)."""
    from cryoal.io.embedding import ids_digest
    from cryoal.learn.encoder import encoder_digest, read_encoder, save_encoder
    from cryoal.learn.pretrain import pretrain_pool

    settings = pretrain_settings(data, config, seed)
    pool_digest = ids_digest(data.particle_ids[work.rows])
    path = data.workdir / f"encoder-seed{seed}.pt"
    if _cached(path, pool_digest, settings):
        log(f"seed {seed}: encoder reused from {path}")
        return SeedEncoder(seed, path, encoder_digest(path), read_encoder(path), True)
    model, record = pretrain_pool(work.path, settings)
    save_encoder(path, model, mode=data.pool.mode, pool_digest=pool_digest,
                 embedding_dim=record["embedding_dim"], pretrain=record)
    log(f"seed {seed}: pretrained on {record['n_particles']} non-test particles in {record['wall_s']:.1f}s "
        f"({settings.method}, {settings.epochs} epochs, final loss {record['losses'][-1]:.4f})")
    return SeedEncoder(seed, path, encoder_digest(path), read_encoder(path), False)


def _cached(path: Path, pool_digest: str, settings) -> bool:
    """True when `path` holds an encoder pretrained on these particles with these settings (an
    unreadable one is pretrained again)."""
    from cryoal.errors import CryoalError
    from cryoal.learn.encoder import read_encoder

    if not path.exists():
        return False
    try:
        record = read_encoder(path)
    except CryoalError:
        return False
    wanted = asdict(settings)
    done = record.get("pretrain", {})
    return record.get("pool_digest") == pool_digest and all(done.get(k) == wanted[k] for k in _SETTING_KEYS)


def embed_working_pool(enc: SeedEncoder, work, config: BenchmarkConfig) -> None:
    """Write the working pool's `embedding` (every row, tagged with the encoder's digest)."""
    from cryoal.learn.device import resolve_device
    from cryoal.learn.embed import write_pool_embedding
    from cryoal.learn.encoder import build_from_encoder

    model = build_from_encoder(enc.record, enc.path, n_classes=2)
    write_pool_embedding(work.path, model, enc.digest, resolve_device(config.device), config.score_batch_size)


def initial_model(enc: SeedEncoder, n_classes: int, torch_seed: int):
    """A classifier whose trunk holds the encoder's weights and whose new head follows `torch_seed`
    (what `train --init` builds)."""
    from cryoal.learn.device import seed_everything
    from cryoal.learn.encoder import build_from_encoder

    seed_everything(torch_seed)
    return build_from_encoder(enc.record, enc.path, n_classes)


def typiclust_initial(data: BenchmarkData, work, enc: SeedEncoder, n: int, seed: int) -> np.ndarray:
    """Pool rows of a first batch of `n` drawn by typiclust from zero labels (sorted), with the code
    behind `cryoal select --scheme typiclust` on the embedded working pool."""
    from cryoal.io.pool import open_pool
    from cryoal.select import select_from_pool

    work.set_labels(data.truth, np.empty(0, dtype=np.int64))  # nothing labelled yet
    with open_pool(work.path) as pool:
        ranked = select_from_pool(pool, None, scheme="typiclust", n=n, encoder_digest=enc.digest,
                                  seed=splits.torch_seed_for(seed, splits.INITIAL_SET))
    return np.sort(work.rows[ranked.indices])


__all__ = ["INITIAL_SCHEMES", "SeedEncoder", "check_pretrain", "embed_working_pool", "initial_model",
           "pretrain_settings", "seed_encoder", "typiclust_initial"]
