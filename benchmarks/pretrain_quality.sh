#!/usr/bin/env bash
# The pretraining measurements of the README: time of `cryoal pretrain` at its defaults on 1,000
# particles of 32^3 (10 classes, SNR 0.05), the embedding's 10-NN purity, and fine-tuning (--init) vs
# scratch at 50 labels on the other particles. On a shared 2-core CPU this takes about 30 minutes.
#
#   OUT=/tmp/ssl bash benchmarks/pretrain_quality.sh            # defaults: simclr, SNR 0.05, seeds 0 1 2
#   METHOD=vicreg SNR=0.1 SEEDS="0" OUT=/tmp/ssl bash benchmarks/pretrain_quality.sh
#
# Writes $OUT/pretrain_<method>_snr<SNR>.json (the pretrain summary, with wall_s) and
# $OUT/quality_<method>_snr<SNR>.json (pretrain_quality.py's result).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:?set OUT to a scratch directory}"
SNR="${SNR:-0.05}"
METHOD="${METHOD:-simclr}"
SEEDS="${SEEDS:-0 1 2}"
EPOCHS="${EPOCHS:-15}"
mkdir -p "$OUT"
SIM="$OUT/sim_snr$SNR"
POOL="$OUT/pool_${METHOD}_snr$SNR.h5"
[ -d "$SIM" ] || "$PY" -m cryoal simulate "$SIM" --classes 10 --per-class 100 --snr "$SNR" --seed 0
[ -f "$POOL" ] || "$PY" -m cryoal ingest "$SIM/particles.star" -o "$POOL"
/usr/bin/time -v "$PY" -m cryoal pretrain "$POOL" -o "$OUT/encoder_${METHOD}_snr$SNR.pt" --method "$METHOD" \
  --epochs "$EPOCHS" --device cpu --json > "$OUT/pretrain_${METHOD}_snr$SNR.json" 2> "$OUT/pretrain_${METHOD}_snr$SNR.log"
# shellcheck disable=SC2086
"$PY" benchmarks/pretrain_quality.py "$POOL" "$OUT/encoder_${METHOD}_snr$SNR.pt" "$SIM/truth.csv" \
  --seeds $SEEDS -o "$OUT/quality_${METHOD}_snr$SNR.json"
