#!/usr/bin/env bash
# The soak run of issue 5 (not part of CI): 200 devices for 30 minutes under random hub drops,
# hub outages and throttling, Modbus TCP endpoint outages, silent and garbling units, an RTU
# adapter unplugged and replugged, and a steady method load. Prints every call's outcome by
# status, the lost count (must be 0), reconnects, leafgate's RSS by minute and its log's health.
# Exit code: 0 passed, 1 a check failed, 2 the run could not be carried out.
# Usage: scripts/soak.sh [OUT] [leafgate-bench soak options, e.g. --duration-s 300]
# (default OUT bench-out/; writes OUT/soak.txt and OUT/soak.json).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-out}
shift || true
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin leafgate --bin leafgate-bench
{
    echo "date: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/soak.txt"
"$target/release/leafgate-bench" soak --json "$out/soak.json" "$@" 2>&1 | tee -a "$out/soak.txt"
