#!/usr/bin/env bash
# Every measurement in RESULTS.md, in order. Output goes to results/ (one file per part).
# Usage: cd tools/store-compare && ./run.sh      (STORE_DIR=/some/dir to put the files elsewhere)
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_BUILD_JOBS=1
cargo build --release --bin store-compare
B=$PWD/target/release/store-compare
OUT=${OUT:-results}; mkdir -p $OUT
D=${STORE_DIR:-/tmp}/store-compare-files; rm -rf "$D"; mkdir -p "$D"
STORES="sqlite-normal sqlite-full redb redb-qr"

# 1. cost per message stored + read + deleted, 100 devices, window 10, 3 runs each
{ uptime; for r in 1 2 3; do for s in $STORES; do
  $B steady $s 1 10000; $B steady $s 100 100000; $B steady $s 1000 100000
done; done; uptime; } | tee $OUT/1-steady.txt
# fsync calls per commit (200 appends + ~100 deletes... see commits= in the line)
for s in $STORES; do
  echo "== $s"; strace -f -c -e trace=fsync,fdatasync,pwrite64 $B steady $s 100 10000 2>&1
done | tee $OUT/1-fsync.txt

# 2. 600,000 messages for 1,000 devices (a 10-minute outage at 1,000 msg/s), then drain / refill / compact
uptime; for s in sqlite-full redb; do
  $B fill $s $D/$s-600k.db 600000 1000 1000
  cp $D/$s-600k.db $D/$s-space.db
  $B space $s $D/$s-space.db 1000; rm -f $D/$s-space.db*
done 2>&1 | tee $OUT/2-space.txt

# 2b. the bound: 600,000 appended under a 100 MiB payload cap (the oldest dropped in the append
# transactions), then the queue read back and checked
for s in sqlite-full redb; do
  $B fill $s $D/$s-cap.db 600000 1000 1000 100; $B probe $s $D/$s-cap.db 1000; rm -f $D/$s-cap.db*
done 2>&1 | tee $OUT/2-bound.txt

# 3. kill -9 of a writer at a random moment, reopen, verify; then with 600,000 queued
{
uptime
for s in $STORES; do $B crash $s 1 5 100; $B crash $s 100 10 100; done
for s in sqlite-normal sqlite-full; do $B crash $s 1000 3 1000 $D/sqlite-full-600k.db 600000; done
for s in redb redb-qr; do $B crash $s 1000 3 1000 $D/redb-600k.db 600000; done
} 2>&1 | tee $OUT/3-crash.txt
# redb's page cache (1 GiB by default) bounded, for the RSS figure
{ uptime; for c in 16 64; do echo "REDB_CACHE_MIB=$c"
  REDB_CACHE_MIB=$c $B fill redb $D/r$c.db 600000 1000 1000; cp $D/r$c.db $D/r$c-s.db
  REDB_CACHE_MIB=$c $B space redb $D/r$c-s.db 1000
  REDB_CACHE_MIB=$c $B steady redb 1000 100000; REDB_CACHE_MIB=$c $B steady redb 100 100000
  rm -f $D/r$c.db $D/r$c-s.db
done; } 2>&1 | tee $OUT/2-redb-cache.txt

# damaged files (copies of the 600k files)
for s in sqlite-full redb; do $B corrupt $s $D/$s-600k.db 1000; done 2>&1 | tee $OUT/3-corrupt.txt
rm -rf "$D"
# 4. build cost (clean builds, one job): ./build-cost.sh | tee results/4-build-cost.txt
