#!/usr/bin/env bash
# The big-pool run reported in docs/commands.md ("Big pools").
#   bash benchmarks/big_pool.sh                 # 100,000 particles at 32^3, every particle scored
#   N=100000 SCORE=5000 bash benchmarks/big_pool.sh   # score a random 5,000 (slow CPUs)
#   N=20000 SCORE=2000 REPEATS=3 bash benchmarks/big_pool.sh   # a busy 2-core CPU: medians of 3 pairs
# Needs ~2 x 13 GB free under ${WORKDIR:-/tmp} while it runs; everything is deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
SCORE=${SCORE:-0}
BOX=${BOX:-32}
DEVICE=${DEVICE:-cpu}
BATCH=${BATCH:-64}
REPEATS=${REPEATS:-1}
WORKDIR=${WORKDIR:-$(mktemp -d -t cryoal-bigpool-XXXXXX)}
echo "big_pool: N=$N SCORE=$SCORE BOX=$BOX DEVICE=$DEVICE BATCH=$BATCH REPEATS=$REPEATS in $WORKDIR" >&2
exec .venv/bin/python benchmarks/big_pool.py --n "$N" --score "$SCORE" --box "$BOX" --device "$DEVICE" \
    --batch-size "$BATCH" --repeats "$REPEATS" --workdir "$WORKDIR"
