#!/usr/bin/env bash
# Event pipeline benchmark: the real worker loop on SQLite and PostgreSQL with a no-op handler,
# and the real online receiver under concurrent senders (crates/b24-events/examples/events_bench.rs).
#
# Usage: bench/events/run.sh
# Settings (environment):
#   SQLITE_EVENTS=50000  SQLITE_CONCURRENCY="1 4 16"   worker-sqlite runs, one per concurrency
#   PG_EVENTS=20000      PG_WORKERS="1 2 4"  PG_CONCURRENCY=16
#   RECEIVER_EVENTS=10000  RECEIVER_CLIENTS=50
#   B24_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/test   (a fresh schema per run, dropped after)
#   SKIP_PG=1      leave out the PostgreSQL runs
#   SKIP_BUILD=1   reuse the built example
# Prints every run's figures; writes bench/events/out/results.txt and results.jsonl (one JSON
# object per run) and prints a summary table.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=$ROOT/bench/events/out
mkdir -p "$OUT"

SQLITE_EVENTS=${SQLITE_EVENTS:-50000}
SQLITE_CONCURRENCY=${SQLITE_CONCURRENCY:-1 4 16}
PG_EVENTS=${PG_EVENTS:-20000}
PG_WORKERS=${PG_WORKERS:-1 2 4}
PG_CONCURRENCY=${PG_CONCURRENCY:-16}
RECEIVER_EVENTS=${RECEIVER_EVENTS:-10000}
RECEIVER_CLIENTS=${RECEIVER_CLIENTS:-50}
export B24_TEST_PG_URL=${B24_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p b24-events --example events_bench >&2
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/events_bench
[ -x "$BIN" ] || { echo "no $BIN (build it, or unset SKIP_BUILD)" >&2; exit 1; }

: >"$OUT/results.txt"
: >"$OUT/results.jsonl"
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), nproc $(nproc), $(uname -sr)" | tee -a "$OUT/results.txt"

run() {
  echo "\$ events_bench $*" | tee -a "$OUT/results.txt"
  local log
  log=$(mktemp)
  "$BIN" "$@" | tee "$log" | grep -v '^json: ' | tee -a "$OUT/results.txt"
  sed -n 's/^json: //p' "$log" >>"$OUT/results.jsonl"
  rm -f "$log"
}

for c in $SQLITE_CONCURRENCY; do
  run worker-sqlite --events "$SQLITE_EVENTS" --concurrency "$c"
done
if [ -z "${SKIP_PG:-}" ]; then
  for w in $PG_WORKERS; do
    run worker-pg --events "$PG_EVENTS" --workers "$w" --concurrency "$PG_CONCURRENCY"
  done
fi
run receiver --events "$RECEIVER_EVENTS" --clients "$RECEIVER_CLIENTS"

python3 - "$OUT/results.jsonl" <<'PY' | tee -a "$OUT/results.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
print("| run | events | seconds | per second | CPU us/event | peak RSS MiB | extra |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    n = r["events"]
    cpu = f'{r["cpu_seconds"] * 1e6 / n:.1f}' if r.get("cpu_seconds") is not None else "-"
    rss = f'{r["peak_rss_mib"]:.1f}' if r.get("peak_rss_mib") is not None else "-"
    if r["mode"] == "worker-sqlite":
        name, rate, extra = f'worker-sqlite c={r["concurrency"]}', r["events_per_sec"], ""
    elif r["mode"] == "worker-pg":
        name, rate = f'worker-pg w={r["workers"]} c={r["concurrency"]}', r["events_per_sec"]
        extra = "per worker " + "/".join(str(h) for h in r["handled"])
    else:
        name, rate = f'receiver k={r["clients"]}', r["accepted_per_sec"]
        l = r["latency_ms"]
        extra = (f'p50 {l["p50"]:.2f} / p90 {l["p90"]:.2f} / p99 {l["p99"]:.2f} / max {l["max"]:.2f} ms; '
                 f'queue check {"OK" if r["check"] else "FAILED"}')
    print(f'| {name} | {n:,} | {r["seconds"]:.3f} | {rate:,.0f} | {cpu} | {rss} | {extra} |')
PY
