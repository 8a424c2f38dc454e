#!/usr/bin/env bash
# One full benchmark run (issue 6): scale at N = 100, 1,000 and 10,000, then the RTU line.
# Writes OUT/{scale-N,rtu}.{md,json} and OUT/machine.txt. Not part of CI: takes ~15 minutes.
# Usage: scripts/bench-full.sh [OUT] (default bench-out/); extra sizes via SIZES="100 1000".
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked
bin="$target/release"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo || true
    grep MemTotal /proc/meminfo
    uname -sr
    echo "leafgate stripped: $(stat -c %s "$bin/leafgate") bytes"
} > "$out/machine.txt"
for n in ${SIZES:-100 1000 10000}; do
    echo "== scale N=$n (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    "$bin/leafgate-bench" scale --devices "$n" --rates 1000,5000 --json "$out/scale-$n.json" \
        | tee "$out/scale-$n.md"
done
echo "== rtu (load average $(cut -d' ' -f1-3 /proc/loadavg))"
"$bin/leafgate-bench" rtu --json "$out/rtu.json" | tee "$out/rtu.md"
