#!/usr/bin/env bash
# The powered active-learning study (issue: picks that beat random): which way of drawing a batch
# from the gradient-norm scores beats random selection, paired by seed, with a test split large
# enough to tell?
#
#   bash benchmarks/al_study.sh                 # main: SNR 0.1 and 0.05, 6 seeds, 9 calibrated variants
#   PHASE=uncalibrated bash benchmarks/al_study.sh   # adds the best two variants without calibration
#   SNRS="inf 0.03" NAME=study_long bash benchmarks/al_study.sh   # the long run
#
# Data: 10 classes x 70 particles (700), box 32, 10 Å voxels, ±60° wedge, CTF at 5 µm, simulation
# seed 0 (same poses at every SNR). Test split 0.43 -> 300 particles (1 particle = 0.33 %), never
# selectable; 400 selectable. Initial 50 labels (5 per class), budget 25, 3 cycles (50 -> 100 labels).
# Training: rb3d, batch 8, validation fraction 0.2 (what `cryoal train` does by default; the
# temperature is fitted on it), 20 epochs at cycle 0, then 8 warm-start epochs per cycle.
# Paired: every variant of a seed shares its test split, initial set and cycle-0 model.
#
# It is `benchmarks/al_snr.sh` with these sizes: one SNR per lane (2 lanes, one per core),
# resumable (re-running continues), results in benchmarks/results/$NAME/, the table from
# `benchmarks/al_snr_table.py` (paired differences with 95 % confidence intervals, every seed). Cost on the 2-core CPU: see benchmarks/results/$NAME/wall_time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

MAIN=random,expected:top,expected:power,expected:balanced,expected:power-balanced,expected:classnorm
MAIN=$MAIN,entropy:power,max-entropy:power,badge
# the best two calibrated gradient-norm variants of the finished main phase (by mean paired
# difference to random over both SNRs), once more without calibration
UNCAL=${UNCAL:-expected:power-balanced:uncalibrated,expected:balanced:uncalibrated}
case "${PHASE:-main}" in
  main) D_SCHEMES=$MAIN ;;
  uncalibrated) D_SCHEMES=$MAIN,$UNCAL ;;
  *) echo "PHASE must be main or uncalibrated" >&2; exit 2 ;;
esac

export NAME=${NAME:-study} SNRS=${SNRS:-"0.1 0.05"} SEEDS=${SEEDS:-6} SCHEMES=${SCHEMES:-$D_SCHEMES}
export CLASSES=${CLASSES:-10} PER_CLASS=${PER_CLASS:-70} TEST_FRACTION=${TEST_FRACTION:-0.43}
export INITIAL=${INITIAL:-50} BUDGET=${BUDGET:-25} CYCLES=${CYCLES:-3}
export EPOCHS=${EPOCHS:-20} WARM=${WARM-8} BATCH=${BATCH:-8} VAL=${VAL:-0.2} WIDTH=${WIDTH-}
exec bash benchmarks/al_snr.sh  # which ends with benchmarks/al_snr_table.py: table.md and the figure
