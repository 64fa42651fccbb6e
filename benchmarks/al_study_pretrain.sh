#!/usr/bin/env bash
# The pretraining study (issue 26): does a self-supervised trunk (`benchmark --pretrain`, one
# pretraining per seed on the non-test particles only) lift accuracy at 50 and 100 labels, and which
# picks beat a pretrained `random` once every model starts from it?
#
#   bash benchmarks/al_study_pretrain.sh                        # SNR 0.1 and 0.05, 6 seeds
#   SNRS="inf 0.03" bash benchmarks/al_study_pretrain.sh        # then the long run, same NAME
#   NAME=smoke CLASSES=2 PER_CLASS=20 SEEDS=1 CYCLES=2 INITIAL=6 BUDGET=4 EPOCHS=1 WARM=1 \
#     PRETRAIN_EPOCHS=1 bash benchmarks/al_study_pretrain.sh   # a smoke run (minutes)
#   NAME=study_pretrain_frozen FREEZE=1 bash benchmarks/al_study_pretrain.sh   # frozen trunks
#
# FREEZE=1 adds --freeze-trunk to the two --pretrain arms: every model trains the head alone on
# the seed's frozen encoder (`train --init --freeze-trunk`, lr 3e-2), warm-start cycles included;
# scratch/ is unchanged. Give it its own NAME: resuming a fine-tuned run frozen is refused.
# ARMS (default "pretrained typiclust_start scratch") runs a subset of the arms: the frozen run
# can leave out scratch/, which is the same command as the fine-tuned run's scratch/, and copy it.
# Data and sizes as benchmarks/al_study.sh: 10 classes x 70 particles, box 32, ±60° wedge, CTF at
# 5 µm, simulation seed 0; test split 0.43 (300 particles, never selectable, never pretrained on);
# initial 50, budget 25, 3 cycles (50 -> 100 labels); rb3d, batch 8, validation 0.2, 20 epochs at
# cycle 0 then 8 warm-start epochs. Width 16 for every arm: `cryoal pretrain`'s default trunk, so a
# pretrained model and a scratch one have the same architecture and differ only by their start.
# Three arms per SNR, paired by seed (same test split; the two --pretrain arms share the encoder):
#   pretrained/       --pretrain: random, expected:power-balanced, expected:cluster-power, typiclust, badge
#   typiclust_start/  --pretrain --initial-scheme typiclust: the first 50 from zero labels by
#                     typiclust on the embedding (then random); its encoders are copied from pretrained/
#   scratch/          random from scratch (no pretraining): the second reference
# One lane per SNR (pinned to a core), resumable (re-running continues), results under
# benchmarks/results/$NAME/<arm>/snr_<x>/, the table (benchmarks/al_snr_table.py) in
# benchmarks/results/$NAME/table.md, the wall time in benchmarks/results/$NAME/wall_time.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
source benchmarks/lanes.sh  # simulate_pool, run_lanes

NAME=${NAME:-study_pretrain}
read -r -a SNRS <<< "${SNRS:-0.1 0.05}"
SEEDS=${SEEDS:-6}; LANES=${LANES:-2}
CLASSES=${CLASSES:-10}; PER_CLASS=${PER_CLASS:-70}; TEST_FRACTION=${TEST_FRACTION:-0.43}
INITIAL=${INITIAL:-50}; BUDGET=${BUDGET:-25}; CYCLES=${CYCLES:-3}
EPOCHS=${EPOCHS:-20}; WARM=${WARM:-8}; BATCH=${BATCH:-8}; VAL=${VAL:-0.2}; WIDTH=${WIDTH:-16}; MC=${MC:-10}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS-}  # empty: `cryoal pretrain`'s default
read -r -a ARMS <<< "${ARMS:-pretrained typiclust_start scratch}"
PRETRAINED=${PRETRAINED:-random,expected:power-balanced,expected:cluster-power,typiclust,badge}
TRAIN=(--arch rb3d --width "$WIDTH" --epochs "$EPOCHS" --warm-start --warm-epochs "$WARM" --batch-size "$BATCH"
       --val-fraction "$VAL" --mc-passes "$MC" --seeds "$SEEDS" --initial "$INITIAL" --budget "$BUDGET"
       --cycles "$CYCLES" --test-fraction "$TEST_FRACTION" --device cpu)
PRETRAIN=(--pretrain)
[[ -n "$PRETRAIN_EPOCHS" ]] && PRETRAIN+=(--pretrain-epochs "$PRETRAIN_EPOCHS")
[[ -n "${FREEZE:-}" && "$FREEZE" != 0 ]] && PRETRAIN+=(--freeze-trunk)
WORK=${WORK:-/tmp/cryoal_al_snr}/$NAME
RESULTS=benchmarks/results/$NAME
mkdir -p "$WORK" "$RESULTS/logs"

arm() {  # arm NAME SNR DATA OPTIONS...: one resumable benchmark run; logs in $RESULTS/logs
  local name=$1 snr=$2 data=$3 out="$RESULTS/$1/snr_$2" log="$RESULTS/logs/$1_snr_$2"
  shift 3
  mkdir -p "$RESULTS/$name"
  local resume=()
  [[ -f "$out/curves.csv" ]] && resume=(--resume)
  if ! cryoal benchmark "$data/pool.h5" --truth "$data/sim/truth.csv" -o "$out" "${TRAIN[@]}" "$@" \
      "${resume[@]}" > "$log.table.txt" 2>> "$log.progress.txt"; then
    echo "$name SNR $snr FAILED: see $log.progress.txt" >&2
    return 1
  fi
}

wanted() {  # wanted ARM: true when ARM is one of $ARMS
  local a
  for a in "${ARMS[@]}"; do [[ "$a" == "$1" ]] && return 0; done
  return 1
}

run_snr() {  # one SNR level: simulate and ingest once, then the three arms
  set -euo pipefail
  local snr=$1 data="$WORK/snr_$1"
  simulate_pool "$snr" "$data" "$RESULTS/logs/simulate_snr_$snr.txt"
  if wanted pretrained; then
    arm pretrained "$snr" "$data" --schemes "$PRETRAINED" "${PRETRAIN[@]}"
  fi
  if wanted typiclust_start; then
    # the same seeds' encoders (pretrained on the same non-test particles): reused, not pretrained again
    mkdir -p "$RESULTS/typiclust_start/snr_$snr/state"
    cp -n "$RESULTS/pretrained/snr_$snr/state"/encoder-seed*.pt "$RESULTS/typiclust_start/snr_$snr/state/" 2>/dev/null || true
    arm typiclust_start "$snr" "$data" --schemes random "${PRETRAIN[@]}" --initial-scheme typiclust
  fi
  if wanted scratch; then
    arm scratch "$snr" "$data" --schemes random
  fi
  # scratch files: encoders, cached models and working pools (KEEP_STATE=1 keeps them)
  [[ -n "${KEEP_STATE:-}" ]] || rm -rf "$RESULTS"/{pretrained,typiclust_start,scratch}/"snr_$snr/state"
  echo "SNR $snr done"
}

start=$(date +%s)
status=0
run_lanes "arm wanted run_snr simulate_pool" "CLASSES PER_CLASS TRAIN PRETRAIN PRETRAINED ARMS WORK RESULTS" "${SNRS[@]}" \
  || status=1
echo "study ($NAME: SNRs ${SNRS[*]}, $SEEDS seeds) took $(( $(date +%s) - start )) s" | tee -a "$RESULTS/wall_time.txt"
python benchmarks/al_snr_table.py "$RESULTS" --png "$RESULTS/curves.png"
exit $status
