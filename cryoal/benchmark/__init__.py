"""The simulated active-learning experiment with an oracle (`cryoal benchmark`).

- `loop.run_benchmark`: the AL loop (train, evaluate on a held-out test split, select, reveal).
- `metrics`: accuracy, macro-F1 and the area under the budget curve (AUBC).
- `report`: curves.csv, selections.csv, summary.csv, curves.png, run.json and the rich table.
- `truth.load_benchmark_data`: the pool plus its oracle labels.
- `pretraining`: `--pretrain`, one self-supervised encoder per seed on its non-test particles.
"""

from cryoal.benchmark.metrics import accuracy, aubc, macro_f1

__all__ = ["accuracy", "aubc", "macro_f1"]
