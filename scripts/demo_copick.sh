#!/usr/bin/env bash
# The copick loop: a local copick project (built from simulated tomograms, no network) ->
# extract --copick (the expert's existing picks become seed labels) -> train -> select ->
# label -> export-copick, so that napari-copick shows the labels and the next particles to label.
# Run through `make demo-copick`, which sets up .venv (with the copick extra) first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
source scripts/demo_lib.sh
OUT=${OUT-demo_copick_out}
EPOCHS=${EPOCHS:-15}
demo_prepare_out "$OUT" scripts/demo_copick.sh  # refuses a directory it did not make

echo "== 1. simulate 2 tomograms and build a copick project from them (scripts/copick_demo.py)"
cryoal simulate "$OUT/sim" --tomograms 2 --classes 5 --per-class 40 --snr 0.2 --defocus 5 \
    --pick-jitter 10 --seed-labels 4 --seed 3
python scripts/copick_demo.py "$OUT/sim" "$OUT/project"

echo "== 2. extract: the picker's picks unlabelled, the expert's picks labelled by their object"
cryoal extract --copick "$OUT/project/copick.json" --user picker -o "$OUT/pool.h5" --box 32
cryoal extract --copick "$OUT/project/copick.json" --user expert --labels-from-object --append \
    -o "$OUT/pool.h5" --box 32
cryoal status "$OUT/pool.h5"

echo "== 3. train, select 20 to label next, label them (fill_labels.py plays the expert), train again"
cryoal train "$OUT/pool.h5" -o "$OUT/model.pt" --epochs "$EPOCHS" --seed 0
cryoal select "$OUT/pool.h5" -m "$OUT/model.pt" --scheme entropy -n 20 -o "$OUT/to_label.csv"
python scripts/fill_labels.py "$OUT/to_label.csv" "$OUT/project/truth.csv" -o "$OUT/labelled.csv"
cryoal label "$OUT/pool.h5" "$OUT/labelled.csv"
cryoal train "$OUT/pool.h5" -o "$OUT/model.pt" --epochs "$EPOCHS" --seed 0
cryoal select "$OUT/pool.h5" -m "$OUT/model.pt" --scheme entropy -n 20 -o "$OUT/to_label.csv"
cryoal predict "$OUT/pool.h5" -m "$OUT/model.pt" -o "$OUT/predictions.csv"
python scripts/fill_labels.py --score "$OUT/predictions.csv" "$OUT/project/truth.csv"

echo "== 4. export labels, the next selection and the predictions back into the project"
cryoal export-copick "$OUT/pool.h5" "$OUT/project/copick.json" --session round1 \
    --selection "$OUT/to_label.csv" --predictions "$OUT/predictions.csv"
echo "open $OUT/project/copick.json in napari-copick: user cryoal holds the labels and cryoal-to-label"
