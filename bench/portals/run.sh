#!/usr/bin/env bash
# Many portals: one app on N sandbox portals (one process), the receiver verifying every
# install, W fleet+worker instances on PostgreSQL, one portal flooded
# (crates/b24-events/examples/portals_bench.rs). See README.md here.
#
# Usage: bench/portals/run.sh [extra args, e.g. --portals 200 --flood 5000]
#   B24_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test   (a fresh schema, dropped after)
#   SKIP_BUILD=1   reuse the built example
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/bench/portals/out
mkdir -p "$OUT"
export B24_TEST_PG_URL=${B24_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p b24-events --example portals_bench >&2
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/portals_bench
# 1,000 portals: a listener each, plus connections.
ulimit -n 20000 2>/dev/null || true
"$BIN" --portals 1000 --active 300 --flood 20000 --workers 4 --concurrency 16 --rate 50 "$@" \
  | tee "$OUT/results.txt"
