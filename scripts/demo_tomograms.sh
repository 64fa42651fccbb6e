#!/usr/bin/env bash
# The tomogram path: simulate whole tomograms with picks (10% false picks, 10 Å pick error),
# cut the boxes out of the memory-mapped tomograms, label a few, train, select, and render a gallery.
# Run through `make demo-tomo`, which sets up .venv first. About a minute on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
source scripts/demo_lib.sh
OUT=${OUT-demo_tomo_out}
EPOCHS=${EPOCHS:-15}
demo_prepare_out "$OUT" scripts/demo_tomograms.sh  # refuses a directory it did not make

echo "== 1. simulate 2 tomograms (256x256x100 at 10 Å) with a RELION 5 picks STAR"
cryoal simulate "$OUT/sim" --tomograms 2 --classes 5 --per-class 40 --snr 0.2 --defocus 5 \
    --false-picks 0.1 --pick-jitter 10 --seed-labels 4 --seed 3

echo "== 2. extract 32³ boxes at the picks, straight from the memory-mapped tomograms"
cryoal extract "$OUT/sim/tomograms.star" --tomograms "$OUT/sim/tomograms" -o "$OUT/pool.h5" --box 32
cryoal label "$OUT/pool.h5" "$OUT/sim/seed_labels.csv"
cryoal status "$OUT/pool.h5"

echo "== 3. train, select 20 particles to label next, and render them for the expert"
cryoal train "$OUT/pool.h5" -o "$OUT/model.pt" --epochs "$EPOCHS" --seed 0
cryoal select "$OUT/pool.h5" -m "$OUT/model.pt" --scheme entropy -n 20 -o "$OUT/to_label.csv" --format both
cryoal gallery "$OUT/pool.h5" --from "$OUT/to_label.csv" -o "$OUT/gallery" --html
echo "open $OUT/gallery/index.html to label them; Export labels, then: cryoal label $OUT/pool.h5 labels.csv"
