#!/usr/bin/env bash
# Run one benchmark command and keep its whole output as evidence for a figure in the README.
#   bash benchmarks/record.sh NAME COMMAND...
# writes benchmarks/results/evidence/NAME.txt: the command line, date, commit and machine load
# before, then stdout and stderr as they came, then the load, wall time and exit status after.
# The command runs with `nice -n 10` (a shared machine); pass environment variables with `env`.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "error: usage: bash benchmarks/record.sh NAME COMMAND..." >&2
    exit 2
fi
name=$1; shift
out=benchmarks/results/evidence/$name.txt
mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.XXXXXX")  # written whole, then renamed: no half file if interrupted
{
    echo "\$ $*"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpus: $(nproc); load before:$(uptime | sed 's/.*load average://')"
    echo "---"
} >"$tmp"
start=$(date +%s)
nice -n 10 "$@" 2>&1 | tee -a "$tmp"
rc=${PIPESTATUS[0]}
{
    echo "---"
    echo "exit status: $rc; wall time: $(( $(date +%s) - start )) s; load after:$(uptime | sed 's/.*load average://')"
} >>"$tmp"
mv "$tmp" "$out"
exit "$rc"
