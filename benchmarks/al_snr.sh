#!/usr/bin/env bash
# The active-learning study: does gradient-norm selection need fewer labels than the baselines,
# on simulated subtomograms at the noise levels of real tomograms?
#
#   bash benchmarks/al_snr.sh            # full: 10 classes, SNR inf/0.1/0.05/0.03
#   bash benchmarks/al_snr.sh --quick    # 5 classes, smaller pool and budget
#   NAME=r SNRS="0.1" SEEDS=3 CYCLES=3 bash benchmarks/al_snr.sh --quick   # a reduced run
# TIME: the target is < 2 h (full) and < 10 min (quick) on the 2-core CPU. The sizes below were
# chosen for it from measured costs (rb3d, one core: ~0.04 s per particle-epoch of training at
# width 32, ~0.02 at width 16; an expected-gradnorm selection over ~270 candidates with 10 classes
# ~40 s). Measured: --quick 450 s; full 4,916 s for the 7 baseline schemes plus ~1,500 s (two
# lanes) for the two class-balanced variants, about 107 min in all (docs/studies.md, "The SNR study").
# Training: cycle 0 trains from scratch for EPOCHS; later cycles fine-tune the previous cycle's
# model for WARM epochs (--warm-start), which is what keeps 7 schemes x 3 seeds x 4 SNRs inside
# the budget. WARM= (empty) trains every cycle from scratch.
#
# Data: box 32, 10 Å voxels, a ±60° missing wedge, CTF at 5 µm underfocus, Gaussian noise at each
# SNR. Same simulation seed (hence the same poses) at every SNR; only the noise level differs.
# Per SNR: `cryoal simulate` -> `cryoal ingest` -> `cryoal benchmark` (3 seeds, 7 schemes; 9 in full).
# The SNR levels run in LANES lanes (default 2), pinned round robin to the cores (taskset); one
# lane per core
# faster than two threads per run: these models are small and per-op threading overhead dominates.
# Re-running continues an interrupted study (--resume). Results (small CSVs, run.json, PNGs) go to
# benchmarks/results/<variant>/snr_<x>/, the combined table to benchmarks/results/<variant>/table.md
# and the figure to docs/al_<variant>.png. Simulated data goes to $WORK (default /tmp/cryoal_al_snr).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
source benchmarks/lanes.sh  # simulate_pool, run_lanes

VARIANT=full
LANES=${LANES:-2}
SEEDS=${SEEDS:-3}
for arg in "$@"; do
  case "$arg" in
    --quick) VARIANT=quick ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done

# the issue's 7 schemes; the full study adds gradnorm with class-balanced picking (`select --balance`)
BASE_SCHEMES=expected,entropy,random,max-entropy,bald,coreset,badge
# SNRS="0.1 0.05" (env) runs a subset of the levels, e.g. to finish a reduced study in less time
read -r -a SNRS <<< "${SNRS:-inf 0.1 0.05 0.03}"
if [[ $VARIANT == quick ]]; then
  D_CLASSES=5; D_PER_CLASS=24; D_INITIAL=10; D_BUDGET=10; D_CYCLES=3; D_EPOCHS=15; D_WARM=5; D_WIDTH=16
  D_SCHEMES=$BASE_SCHEMES
else
  D_CLASSES=10; D_PER_CLASS=40; D_INITIAL=50; D_BUDGET=25; D_CYCLES=3; D_EPOCHS=20; D_WARM=8; D_WIDTH=
  D_SCHEMES=$BASE_SCHEMES,expected-balanced,entropy-balanced
fi
# Batch 8: with tens of labels, batch 16 and 10-15 epochs is only 10-40 optimizer steps and every
# model stayed at chance (benchmarks/results/partial_bs16_e10).
# each size can be overridden from the environment (a reduced run: give it its own NAME)
SCHEMES=${SCHEMES:-$D_SCHEMES}
CLASSES=${CLASSES:-$D_CLASSES}; PER_CLASS=${PER_CLASS:-$D_PER_CLASS}; INITIAL=${INITIAL:-$D_INITIAL}
BUDGET=${BUDGET:-$D_BUDGET}; CYCLES=${CYCLES:-$D_CYCLES}; EPOCHS=${EPOCHS:-$D_EPOCHS}; MC=${MC:-10}
BATCH=${BATCH:-8}; WARM=${WARM-$D_WARM}
ARCH=${ARCH:-rb3d}; WIDTH=${WIDTH-$D_WIDTH}; VAL=${VAL:-0}; TEST_FRACTION=${TEST_FRACTION:-0.2}
WIDTH_OPT=(); [[ -n "$WIDTH" ]] && WIDTH_OPT=(--width "$WIDTH")  # WIDTH= (empty): the arch's own width
WARM_OPT=(); [[ -n "$WARM" ]] && WARM_OPT=(--warm-start --warm-epochs "$WARM")
TRAIN=(--arch "$ARCH" "${WIDTH_OPT[@]}" --epochs "$EPOCHS" "${WARM_OPT[@]}" --batch-size "$BATCH"
       --val-fraction "$VAL" --mc-passes "$MC")
NAME=${NAME:-$VARIANT}  # NAME=... keeps a reduced run apart from the full one
WORK=${WORK:-/tmp/cryoal_al_snr}/$NAME
RESULTS=benchmarks/results/$NAME
mkdir -p "$WORK" "$RESULTS/logs" docs

run_snr() {  # one SNR level: simulate, ingest, benchmark (resumable); logs in $RESULTS/logs
  set -euo pipefail
  local snr=$1 data="$WORK/snr_$1" out="$RESULTS/snr_$1" log="$RESULTS/logs/snr_$1"
  simulate_pool "$snr" "$data" "$log.simulate.txt"
  local resume=()
  [[ -f "$out/curves.csv" ]] && resume=(--resume)
  if ! cryoal benchmark "$data/pool.h5" --truth "$data/sim/truth.csv" -o "$out" --schemes "$SCHEMES" \
    --seeds "$SEEDS" --initial "$INITIAL" --budget "$BUDGET" --cycles "$CYCLES" --test-fraction "$TEST_FRACTION" \
    "${TRAIN[@]}" --device cpu "${resume[@]}" > "$log.table.txt" 2> "$log.progress.txt"; then
    echo "SNR $snr FAILED: see $log.progress.txt" >&2
    return 1
  fi
  # scratch: cached models and the working pool (KEEP_STATE=1 keeps them for a later phase)
  [[ -n "${KEEP_STATE:-}" ]] || rm -rf "$out/state"
  echo "SNR $snr done: $out/summary.csv"
}

start=$(date +%s)
status=0
run_lanes "run_snr simulate_pool" "CLASSES PER_CLASS INITIAL BUDGET CYCLES SCHEMES SEEDS WORK RESULTS TRAIN \
  TEST_FRACTION" "${SNRS[@]}" || status=1
echo "study ($NAME: SNRs ${SNRS[*]}, $SEEDS seeds) took $(( $(date +%s) - start )) s" | tee "$RESULTS/wall_time.txt"
python benchmarks/al_snr_table.py "$RESULTS" --png "docs/al_$NAME.png"
exit $status
