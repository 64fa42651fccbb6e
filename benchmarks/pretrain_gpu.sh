#!/usr/bin/env bash
# Pretraining on one GPU: the CPU default (simclr, 15 epochs) against a longer run (60 epochs) and
# vicreg, at SNR 0.05, and the default at SNR 0.1; each followed by benchmarks/pretrain_quality.py
# (10-NN purity, fine-tune vs scratch at 50 labels, 3 seeds). The two SNRs run side by side.
#   OUT=dir PYTHON=python3 bash benchmarks/pretrain_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:?}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=6
W=/tmp/ssl_gpu
mkdir -p "$W" "$OUT"
one() {  # SNR METHOD EPOCHS
  local snr=$1 method=$2 epochs=$3 tag="${2}_e${3}_snr${1}"
  cp "$W/pool_$snr.h5" "$W/pool_$tag.h5"
  "$PY" -m cryoal pretrain "$W/pool_$tag.h5" -o "$W/enc_$tag.pt" --method "$method" --epochs "$epochs" \
    --device cuda --json > "$OUT/pretrain_$tag.json" 2> "$W/$tag.log" || { tail -3 "$W/$tag.log"; return; }
  "$PY" benchmarks/pretrain_quality.py "$W/pool_$tag.h5" "$W/enc_$tag.pt" "$W/sim_$snr/truth.csv" \
    --seeds 0 1 2 --device cuda -o "$OUT/quality_$tag.json" > /dev/null 2>> "$W/$tag.log" || tail -3 "$W/$tag.log"
  echo "$tag done at $(date +%T)"
}
prep() {
  "$PY" -m cryoal simulate "$W/sim_$1" --classes 10 --per-class 100 --snr "$1" --seed 0 > /dev/null
  "$PY" -m cryoal ingest "$W/sim_$1/particles.star" -o "$W/pool_$1.h5" > /dev/null
}
(prep 0.05 && one 0.05 simclr 15 && one 0.05 vicreg 15) &
(prep 0.1 && one 0.1 simclr 15 && one 0.05 simclr 60) &
wait
