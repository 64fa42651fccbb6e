#!/usr/bin/env bash
# The active-learning study: does gradient-norm selection need fewer labels than the baselines,
# on simulated subtomograms at the noise levels of real tomograms?
#
#   bash benchmarks/al_snr.sh            # full: 10 classes, SNR inf/0.1/0.05/0.03 (< 2 h, 2-core CPU)
#   bash benchmarks/al_snr.sh --quick    # 5 classes, smaller pool and budget (< 10 min)
#
# Data: box 32, 10 Å voxels, a ±60° missing wedge, CTF at 5 µm underfocus, Gaussian noise at each
# SNR. Same simulation seed (hence the same poses) at every SNR; only the noise level differs.
# Per SNR: `cryoal simulate` -> `cryoal ingest` -> `cryoal benchmark` (3 seeds, 7 schemes).
# The SNR levels run in two lanes, one CPU core each (taskset), which on a 2-core machine is
# faster than two threads per run: these models are small and per-op threading overhead dominates.
# Re-running continues an interrupted study (--resume). Results (small CSVs, run.json, PNGs) go to
# benchmarks/results/<variant>/snr_<x>/, the combined table to benchmarks/results/<variant>/table.md
# and the figure to docs/al_<variant>.png. Simulated data goes to $WORK (default /tmp/cryoal_al_snr).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

VARIANT=full
LANES=${LANES:-2}
for arg in "$@"; do
  case "$arg" in
    --quick) VARIANT=quick ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done

SCHEMES=expected,entropy,random,max-entropy,bald,coreset,badge
SNRS=(inf 0.1 0.05 0.03)
if [[ $VARIANT == quick ]]; then
  CLASSES=5; PER_CLASS=40; INITIAL=10; BUDGET=10; CYCLES=4; EPOCHS=12; MC=10
else
  CLASSES=10; PER_CLASS=60; INITIAL=20; BUDGET=20; CYCLES=5; EPOCHS=15; MC=10
fi
TRAIN=(--arch resnet3d --width 4 --epochs "$EPOCHS" --batch-size 16 --val-fraction 0 --mc-passes "$MC")
WORK=${WORK:-/tmp/cryoal_al_snr}/$VARIANT
RESULTS=benchmarks/results/$VARIANT
mkdir -p "$WORK" "$RESULTS" docs

run_snr() {  # one SNR level: simulate, ingest, benchmark (resumable)
  local snr=$1 data="$WORK/snr_$1" out="$RESULTS/snr_$1"
  if [[ ! -f "$data/pool.h5" ]]; then
    rm -rf "$data"
    cryoal simulate "$data/sim" --classes "$CLASSES" --per-class "$PER_CLASS" --snr "$snr" --box 32 \
      --voxel-size 10 --tilt-range 60 --defocus 5 --seed 0 2>/dev/null
    cryoal ingest "$data/sim/particles.star" -o "$data/pool.h5" 2>/dev/null
  fi
  local resume=()
  [[ -f "$out/curves.csv" ]] && resume=(--resume)
  cryoal benchmark "$data/pool.h5" --truth "$data/sim/truth.csv" -o "$out" --schemes "$SCHEMES" \
    --seeds 3 --initial "$INITIAL" --budget "$BUDGET" --cycles "$CYCLES" --test-fraction 0.2 \
    "${TRAIN[@]}" --device cpu "${resume[@]}" > "$out.log.txt" 2> "$out.progress.txt"
  rm -rf "$out/state"  # scratch: cached models and the working pool
  echo "SNR $snr done: $out/summary.csv"
}

start=$(date +%s)
pids=()
for lane in $(seq 0 $((LANES - 1))); do
  (
    for k in "${!SNRS[@]}"; do
      if (( k % LANES == lane )); then
        taskset -c "$lane" bash -c "$(declare -f run_snr); $(declare -p CLASSES PER_CLASS INITIAL BUDGET \
          CYCLES SCHEMES WORK RESULTS TRAIN); run_snr ${SNRS[$k]}"
      fi
    done
  ) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "study ($VARIANT) took $(( $(date +%s) - start )) s" | tee "$RESULTS/wall_time.txt"
python benchmarks/al_snr_table.py "$RESULTS" --png "docs/al_$VARIANT.png"
exit $status
