#!/usr/bin/env bash
# The GPU check, in one run of about 6 minutes on one GPU:
#   1. pytest -m cuda (tests/test_cuda.py)
#   2. scoring speed (benchmarks/scoring_speed.py): default arch at batch 32/128/256 x C 5/10, again
#      with TF32 off, then every arch at batch 128, C 5
#   3. training speed (benchmarks/train_speed.py): every arch, AMP vs fp32, then as `cryoal train` runs
# Every stage runs under its own timeout, whatever the others did; its exit status and seconds go to
# summary.txt. Everything is written under ${OUT:-benchmarks/results/gpu}: env.txt, pytest_cuda.log,
# scoring_speed.log, train_speed.log, summary.txt.
#
#   bash benchmarks/gpu_check.sh
#   GPU_CHECK_QUICK=1 GPU_CHECK_DEVICE=cpu CRYOAL_CUDA_TESTS_ON_CPU=1 bash benchmarks/gpu_check.sh   # dry run
#
# GPU_CHECK_QUICK=1: tiny sizes (checks that every stage runs, measures nothing).
# GPU_CHECK_DEVICE: cuda (default) or cpu. PYTHON: the interpreter (default python3).
# GPU_CHECK_BUDGET_S (default 360): the whole run's time; a stage's timeout is cut to what is left, and
# a stage with under 15 s left is skipped (recorded as such).
# Wheels in .whl/ (packages the machine lacks, e.g. mrcfile) are installed into /tmp/site first.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
DEV="${GPU_CHECK_DEVICE:-cuda}"
QUICK="${GPU_CHECK_QUICK:-0}"
SUMMARY="$OUT_DIR/summary.txt"
BUDGET="${GPU_CHECK_BUDGET_S:-360}"
START=$(date +%s)
: >"$SUMMARY"

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "warning: installing .whl/ failed" >>"$SUMMARY"
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# stage NAME TIMEOUT_S LOG COMMAND...: run COMMAND under a timeout (cut to the budget left), append
# its output to LOG, and record its exit status (124: timed out) and wall time in the summary.
stage() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t0 rc left
    left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 15 ]; then
        printf '%-28s skipped: %d s of the budget left\n' "$name" "$left" >>"$SUMMARY"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    t0=$(date +%s)
    echo "### $name: $*" >>"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "### $name: exit $rc after $(($(date +%s) - t0)) s" >>"$log"
    printf '%-28s exit %3d  %4d s  (limit %d s)\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$SUMMARY"
}

# -- environment --------------------------------------------------------------------------------
{
    date -u
    echo "device: $DEV, quick: $QUICK, python: $PY"
    git log -1 --format='commit %H %s' 2>/dev/null || true
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    "$PY" - <<'EOF'
import platform
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0),
          "bf16:", torch.cuda.is_bf16_supported(), "count:", torch.cuda.device_count())
print("tf32: cudnn.allow_tf32 =", torch.backends.cudnn.allow_tf32,
      "matmul.allow_tf32 =", torch.backends.cuda.matmul.allow_tf32)
import mrcfile
print("mrcfile", mrcfile.__version__)
EOF
} >"$OUT_DIR/env.txt" 2>&1
echo "env.txt written" >>"$SUMMARY"

# -- 1. CUDA tests --------------------------------------------------------------------------------
stage "pytest -m cuda" 170 "$OUT_DIR/pytest_cuda.log" \
    "$PY" -m pytest -m cuda -v -ra -p no:cacheprovider --durations=10 tests/test_cuda.py

# -- 2. scoring speed -----------------------------------------------------------------------------
SCORING="$OUT_DIR/scoring_speed.log"
if [ "$QUICK" = 1 ]; then
    stage "scoring rb3d" 120 "$SCORING" "$PY" benchmarks/scoring_speed.py --device "$DEV" --arch rb3d \
        --box 16 --batch 4,8 --classes 3,5 --rounds 1 --loop-samples 1
    stage "scoring rb3d TF32 off" 60 "$SCORING" "$PY" benchmarks/scoring_speed.py --device "$DEV" --arch rb3d \
        --box 16 --batch 4 --classes 5 --rounds 1 --loop-samples 1 --tf32 off
    stage "scoring all archs" 120 "$SCORING" "$PY" benchmarks/scoring_speed.py --device "$DEV" --arch all \
        --box 16 --batch 4 --classes 5 --rounds 1 --loop-samples 1
else
    stage "scoring rb3d" 90 "$SCORING" "$PY" benchmarks/scoring_speed.py --device "$DEV" --arch rb3d \
        --batch 32,128,256 --classes 5,10 --rounds 3 --loop-samples 8
    # the same with TF32 off: the speed of the engine at full float32 precision
    stage "scoring rb3d TF32 off" 60 "$SCORING" "$PY" benchmarks/scoring_speed.py --device "$DEV" --arch rb3d \
        --batch 32,256 --classes 5,10 --rounds 3 --loop-samples 8 --tf32 off
    stage "scoring all archs" 60 "$SCORING" "$PY" benchmarks/scoring_speed.py --device "$DEV" --arch all \
        --batch 128 --classes 5 --rounds 3 --loop-samples 8
fi

# -- 3. training speed ----------------------------------------------------------------------------
TRAINING="$OUT_DIR/train_speed.log"
if [ "$QUICK" = 1 ]; then
    stage "train no-augment" 120 "$TRAINING" "$PY" benchmarks/train_speed.py --device "$DEV" --arch all \
        --box 16 --batch 4 --steps 3 --no-augment
    stage "train as cryoal train" 60 "$TRAINING" "$PY" benchmarks/train_speed.py --device "$DEV" \
        --arch rb3d --box 16 --batch 4 --steps 3
else
    # the networks alone (augmentation off, so the GPU is what is measured), AMP and fp32
    stage "train no-augment" 70 "$TRAINING" "$PY" benchmarks/train_speed.py --device "$DEV" --arch all \
        --batch 32 --steps 20 --no-augment
    # as `cryoal train` runs: augmentation on (it runs on the CPU), AMP
    stage "train as cryoal train" 45 "$TRAINING" "$PY" benchmarks/train_speed.py --device "$DEV" \
        --arch all --batch 32 --steps 20 --precision amp
fi

# -- summary --------------------------------------------------------------------------------------
{
    echo "total: $(($(date +%s) - START)) s (budget $BUDGET s)"
    echo
    echo "## pytest"
    # one line per test as it ran (kept if the stage is cut short), then each failure's message
    grep -E '::.* (PASSED|FAILED|ERROR|SKIPPED)|^(FAILED|ERROR|SKIPPED) |^=+ .* in [0-9.]+s' \
        "$OUT_DIR/pytest_cuda.log" 2>/dev/null | cut -c1-400
    echo
    echo "## scoring (summary tables)"
    grep -E '^# scoring|^\| [a-z0-9]+3d \||^## summary' "$SCORING" 2>/dev/null
    echo
    echo "## training"
    grep -E '^# training|^\| [a-z0-9]+3d \||throughput' "$TRAINING" 2>/dev/null
} >>"$SUMMARY" 2>&1
cat "$SUMMARY"
