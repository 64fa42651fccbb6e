"""How good is a `cryoal pretrain` embedding, and does `train --init` beat training from scratch?

Given a pool that `cryoal pretrain` has embedded, its encoder, and the simulation's truth table:

1. 10-NN label purity of the stored embedding (cosine distance), against a randomly initialised
   trunk of the same arch and width (same BatchNorm re-estimation on clean particles);
2. for each seed: 50 random labels (or --labels), 20% of them held out for validation as
   `cryoal train` does; a model fine-tuned from the encoder (`--init`) and one from scratch, same
   settings; accuracy on every other particle;
3. a logistic regression on the embedding with the same 50 labels (a linear probe).

    python benchmarks/pretrain_quality.py POOL ENCODER TRUTH.csv --seeds 0 1 2 -o result.json

Prints one JSON object and writes it to -o.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def knn_purity(z: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Share of each particle's k nearest neighbours (cosine) that carry its label."""
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    return float((y[nn] == y[:, None]).mean())


def random_trunk_embedding(pool_path: str, record: dict, seed: int) -> np.ndarray:
    """Features of an untrained trunk (BatchNorm statistics from clean particles)."""
    from cryoal.io.pool import open_pool
    from cryoal.learn.embed import embed_batches
    from cryoal.learn.pretrain import _clean_batchnorm
    from cryoal.models import build_model

    torch.manual_seed(seed)
    with open_pool(pool_path) as pool:
        model = build_model(record["arch"], pool.shape, 2, width=int(record["width"]))
        _clean_batchnorm(model, pool, torch.device("cpu"), 64, None, torch.Generator().manual_seed(seed))
        return np.concatenate(list(embed_batches(model, pool, torch.device("cpu"))))


def finetune_vs_scratch(pool_path: str, encoder: str, y: np.ndarray, n_labels: int, seed: int,
                        epochs: int, emb: np.ndarray, device: str = "cpu",
                        variants: tuple[str, ...] = ("scratch", "init", "frozen")) -> dict:
    """Accuracy on the unlabelled rest of scratch, --init and a linear probe, for one draw of labels."""
    from sklearn.linear_model import LogisticRegression

    from cryoal.io.pool import open_pool
    from cryoal.learn.encoder import build_from_encoder, read_encoder
    from cryoal.learn.train import PROBE_LR, fit, stratified_split

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(y), n_labels, replace=False))
    rest = np.setdiff1d(np.arange(len(y)), chosen)
    classes, yi = np.unique(y, return_inverse=True)
    tr, va = stratified_split(yi[chosen], 0.2, seed)
    with open_pool(pool_path) as pool:
        x_lab, x_rest = pool.read(chosen), pool.read(rest)
    out: dict = {"seed": seed}
    for name in variants:  # scratch, fine-tuned from the encoder, or its frozen trunk (a linear probe)
        t0 = time.perf_counter()
        init = None
        if name != "scratch":
            torch.manual_seed(seed)
            init = build_from_encoder(read_encoder(encoder), encoder, len(classes))
        if name == "frozen":
            init.trunk.requires_grad_(False)
            init.frozen_trunk = True
        model, _ = fit(x_lab[tr], yi[chosen][tr], x_lab[va], yi[chosen][va], n_classes=len(classes),
                       epochs=epochs, seed=seed, device=device, init_model=init,
                       **({"lr": PROBE_LR} if name == "frozen" else {}))  # as `train --freeze-trunk`
        model.eval()
        dev = next(model.parameters()).device
        with torch.no_grad():
            pred = np.concatenate([model(torch.as_tensor(x_rest[s:s + 128]).unsqueeze(1).to(dev)).argmax(1)
                                   .cpu().numpy() for s in range(0, len(rest), 128)])
        out[name] = float((pred == yi[rest]).mean())
        out[f"{name}_s"] = round(time.perf_counter() - t0, 1)
    probe = LogisticRegression(max_iter=2000).fit(emb[chosen], yi[chosen])
    out["probe"] = float((probe.predict(emb[rest]) == yi[rest]).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pool")
    ap.add_argument("encoder")
    ap.add_argument("truth")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--labels", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=30, help="fine-tuning / scratch epochs (train's default)")
    ap.add_argument("--variants", nargs="*", default=["scratch", "init", "frozen"])
    ap.add_argument("--device", default="cpu", help="where the fine-tuning runs (cpu, cuda)")
    ap.add_argument("-o", "--output", type=Path)
    a = ap.parse_args()

    from cryoal.io.embedding import read_embeddings
    from cryoal.io.pool import open_pool
    from cryoal.io.tables import read_table
    from cryoal.learn.device import use_all_cpu_cores
    from cryoal.learn.encoder import encoder_digest, read_encoder

    use_all_cpu_cores()
    table = read_table(a.truth)
    truth = dict(zip(table["particle_id"], table["label"], strict=True))
    with open_pool(a.pool) as pool:
        y = np.array([truth[str(p)] for p in pool.particle_ids])
    emb = read_embeddings(a.pool, encoder_digest(a.encoder)).values
    record = read_encoder(a.encoder)
    result = {
        "pool": a.pool, "n": len(y), "classes": len(set(y)), "pretrain": record["pretrain"],
        "knn10_purity": knn_purity(emb, y),
        "knn10_purity_random_trunk": knn_purity(random_trunk_embedding(a.pool, record, 0), y),
        "runs": [finetune_vs_scratch(a.pool, a.encoder, y, a.labels, s, a.epochs, emb, a.device,
                                     tuple(a.variants))
                 for s in a.seeds],
    }
    for key in (*a.variants, "probe"):
        result[f"mean_{key}"] = float(np.mean([r[key] for r in result["runs"]]))
    text = json.dumps(result, indent=1)
    print(text)
    if a.output:
        a.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
