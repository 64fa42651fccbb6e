#!/usr/bin/env bash
# The demo loop on sample_data/: ingest, seed labels, train, select, "expert" labels, retrain, predict.
# Run through `make demo`, which sets up .venv first. Takes a few minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
OUT=${OUT:-demo_out}
EPOCHS=${EPOCHS:-40}  # an upper bound: training stops early on validation accuracy
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1. ingest the sample subtomograms into one pool"
cryoal ingest sample_data/particles.star -o "$OUT/pool.h5"

echo "== 2. import the labels the expert already has (4 per class)"
cryoal label "$OUT/pool.h5" sample_data/seed_labels.csv
cryoal status "$OUT/pool.h5"

echo "== 3. train, then select the 25 particles whose labels help most (expected gradient norm)"
cryoal train "$OUT/pool.h5" -o "$OUT/model.pt" --epochs "$EPOCHS" --seed 0
cryoal select "$OUT/pool.h5" -m "$OUT/model.pt" --scheme expected -n 25 -o "$OUT/to_label.csv"
head -n 6 "$OUT/to_label.csv"

echo "== 4. the 'expert' fills the label column (here: from the simulation's truth.csv)"
python scripts/fill_labels.py "$OUT/to_label.csv" sample_data/truth.csv -o "$OUT/labelled.csv"
cryoal label "$OUT/pool.h5" "$OUT/labelled.csv"

echo "== 5. next cycle: retrain, then classify every particle"
cryoal train "$OUT/pool.h5" -o "$OUT/model.pt" --epochs "$EPOCHS" --seed 0
cryoal predict "$OUT/pool.h5" -m "$OUT/model.pt" -o "$OUT/predictions.csv"
python scripts/fill_labels.py --score "$OUT/predictions.csv" sample_data/truth.csv
