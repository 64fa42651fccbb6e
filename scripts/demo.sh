#!/usr/bin/env bash
# The demo loop on sample_data/: ingest, seed labels, pretrain on every particle, train from the
# pretrained trunk, select, look, "expert" labels, retrain, predict, then a summary. The README's loop is this script's commands (a test checks it).
# Run through `make demo`, which sets up .venv first. OUT=dir must not exist, be empty, or be a
# directory an earlier demo made; EPOCHS=n bounds each training (it stops early on validation).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
source scripts/demo_lib.sh
OUT=${OUT-demo_out}
EPOCHS=${EPOCHS:-40}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-8}  # `cryoal pretrain` defaults to 15; 8 keeps the demo short
demo_prepare_out "$OUT" scripts/demo.sh

echo "== 1. ingest the sample subtomograms into one pool, import the expert's labels (4 per class)"
cryoal ingest sample_data/particles.star -o "$OUT/pool.h5"
cryoal label "$OUT/pool.h5" sample_data/seed_labels.csv
cryoal status "$OUT/pool.h5"

echo "== 2. pretrain the trunk on all 180 particles (no labels needed); writes the pool's embedding"
cryoal pretrain "$OUT/pool.h5" -o "$OUT/encoder.pt" --epochs "$PRETRAIN_EPOCHS" --seed 0

echo "== 3. train the head on the frozen pretrained trunk, select the 25 particles whose labels help most"
cryoal train "$OUT/pool.h5" -o "$OUT/model.pt" --init "$OUT/encoder.pt" --freeze-trunk --epochs "$EPOCHS" --seed 0
cp "$OUT/model.pt" "$OUT/model_cycle0.pt"  # kept for the summary
cryoal select "$OUT/pool.h5" -m "$OUT/model.pt" --scheme expected -n 25 -o "$OUT/to_label.csv"
cryoal gallery "$OUT/pool.h5" --from "$OUT/to_label.csv" -o "$OUT/gallery" --html

echo "== 4. the 'expert' fills the label column (here: from the simulation's truth.csv)"
python scripts/fill_labels.py "$OUT/to_label.csv" sample_data/truth.csv -o "$OUT/labelled.csv"
cryoal label "$OUT/pool.h5" "$OUT/labelled.csv"

echo "== 5. next cycle: retrain, then classify every particle"
cryoal train "$OUT/pool.h5" -o "$OUT/model.pt" --init "$OUT/encoder.pt" --freeze-trunk --epochs "$EPOCHS" --seed 0
cryoal predict "$OUT/pool.h5" -m "$OUT/model.pt" -o "$OUT/predictions.csv"

echo "== summary"
python scripts/demo_summary.py --models "$OUT/model_cycle0.pt" "$OUT/model.pt" \
    --selection "$OUT/to_label.csv" --predictions "$OUT/predictions.csv" --truth sample_data/truth.csv
echo "open $OUT/gallery/index.html to see the 25 picks as an expert would label them"
