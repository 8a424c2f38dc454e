#!/usr/bin/env bash
# Build cost: a clean release build (one job, the leafgate release profile) of the probe binary
# with no store (baseline), with SQLite (rusqlite + bundled C), and with redb; and its size.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_BUILD_JOBS=1
for f in none sqlite redb; do
  T=/tmp/store-compare-build-$f; rm -rf "$T"
  feat=(--no-default-features); [ "$f" != none ] && feat+=(--features "$f")
  cargo fetch -q
  uptime
  /usr/bin/time -f "$f: %e s wall, %U s user, %S s sys, max rss %M KiB" \
    cargo build -q --release --offline --bin probe "${feat[@]}" --target-dir "$T"
  echo "$f: crates compiled: $(ls "$T"/release/deps/*.rlib 2>/dev/null | wc -l) rlibs; probe binary $(stat -c %s "$T"/release/probe) bytes"
  rm -rf "$T"
done
