#!/usr/bin/env bash
# Many portals, many processes: one app on N sandbox portals hosted by the bench process,
# the receiver (`b24 events serve`) verifying every install, W separate
# `b24 worker --all-portals` processes on one PostgreSQL store, one portal flooded
# (crates/b24-events/examples/portals_bench.rs). See README.md here.
#
# Usage: bench/portals/run.sh [extra args, e.g. --portals 200 --flood 5000 --idle-secs 60]
#   B24_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test   (a fresh schema, dropped after)
#   SKIP_BUILD=1   reuse the built binaries
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/bench/portals/out
mkdir -p "$OUT"
export B24_TEST_PG_URL=${B24_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p b24-cli --bin b24 >&2
  cargo build --release -q -p b24-events --example portals_bench >&2
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
# 1,000 portals: a listener each, plus every worker's connections to them.
ulimit -n 65536 2>/dev/null || ulimit -n 20000 2>/dev/null || true
"$TARGET/examples/portals_bench" --b24 "$TARGET/b24" --out "$OUT" \
  --portals 1000 --active 300 --flood 20000 --workers 4 --concurrency 16 --rate 50 "$@" \
  | tee "$OUT/results.txt"
