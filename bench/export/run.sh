#!/usr/bin/env bash
# Export benchmark: `b24 export` against `b24 sandbox --plan standard` (limits ON, 50 ms latency),
# peak RSS at 10,000 vs 100,000 leads, and the same export with fast_bitrix24 (the yardstick).
#
# Usage: bench/export/run.sh [N_SMALL] [N_LARGE]     (defaults 10000 100000)
# Needs: cargo, python3 (a venv with fast_bitrix24 is created in bench/export/.venv), curl, jq,
# /usr/bin/time. Prints a table and writes bench/export/out/results.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/bench/export
OUT=$HERE/out
N_SMALL=${1:-10000}
N_LARGE=${2:-100000}
LATENCY=${LATENCY:-50ms}
# realistic (default): each call takes its modelled duration and its operating time, as on a
# portal; instant: the old behaviour (only the rate bucket and the latency fault).
TIMING=${TIMING:-realistic}
mkdir -p "$OUT"

if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release -p b24-cli >&2; fi  # SKIP_BUILD=1: use the existing binary
B24=$ROOT/target/release/b24

if [ ! -x "$HERE/.venv/bin/python" ]; then
  python3 -m venv "$HERE/.venv" >&2
  "$HERE/.venv/bin/pip" install -q fast_bitrix24 >&2
fi

SB_PID=
cleanup() { if [ -n "$SB_PID" ]; then kill "$SB_PID" 2>/dev/null || true; wait "$SB_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT

# start_sandbox N → sets BASE, HOOK
start_sandbox() {
  cleanup
  local fifo=$OUT/sandbox.out
  rm -f "$fifo"
  "$B24" sandbox --plan standard --timing "$TIMING" --seed-leads "$1" --faults "latency=$LATENCY" --json >"$fifo" 2>"$OUT/sandbox.err" &
  SB_PID=$!
  for _ in $(seq 1 600); do
    if [ -s "$fifo" ] && head -n1 "$fifo" | jq -e .base_url >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  BASE=$(head -n1 "$fifo" | jq -r .base_url)
  HOOK=$(head -n1 "$fifo" | jq -r .webhook_url)
}

stats() { curl -fsS "$BASE/_sandbox/stats"; }
reset() { curl -fsS -X POST "$BASE/_sandbox/reset-stats" >/dev/null; }

# run_b24 N → one JSON line of figures
run_b24() {
  local n=$1 state
  state=$(mktemp -d)
  start_sandbox "$n"
  reset
  local t0 t1
  t0=$(date +%s.%N)
  env -i PATH="$PATH" HOME="$state" B24_STATE_DIR="$state/state" B24_CONFIG_DIR="$state/config" \
    B24_WEBHOOK_URL="$HOOK" \
    /usr/bin/time -v -o "$OUT/time-$n.txt" "$B24" export crm.lead.list --select '*' \
    >"$OUT/leads-$n.ndjson" 2>"$OUT/b24-$n.err"
  t1=$(date +%s.%N)
  local s items uniq rss
  s=$(stats)
  items=$(wc -l <"$OUT/leads-$n.ndjson")
  uniq=$(jq -r .ID "$OUT/leads-$n.ndjson" | sort -u | wc -l)
  rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$OUT/time-$n.txt")
  rm -rf "$state"
  jq -n --argjson n "$n" --argjson items "$items" --argjson uniq "$uniq" --argjson rss "$rss" \
     --arg t0 "$t0" --arg t1 "$t1" --argjson s "$s" \
     '{tool:"b24", n:$n, items:$items, unique:$uniq, seconds:(($t1|tonumber)-($t0|tonumber)),
       requests:$s.requests, count_503:$s.count_503, max_rss_kb:$rss, max_bucket:$s.max_bucket_level}
      | .items_per_s = (.items/.seconds)'
}

run_fast() {
  local n=$1
  start_sandbox "$n"
  reset
  local r s
  r=$("$HERE/.venv/bin/python" "$HERE/fast_bitrix24_export.py" "$HOOK" 2>"$OUT/fast-$n.err")
  s=$(stats)
  jq -n --argjson n "$n" --argjson r "$r" --argjson s "$s" \
     '{tool:"fast_bitrix24", n:$n, items:$r.items, unique:$r.unique, seconds:$r.seconds,
       requests:$s.requests, count_503:$s.count_503, count_429:$s.count_429,
       max_bucket:$s.max_bucket_level, error:$r.error}
      | .items_per_s = (.items/.seconds)'
}

small=$(run_b24 "$N_SMALL")
large=$(run_b24 "$N_LARGE")
# Optional: a run long enough to exhaust the bucket's burst (50 requests = 125,000 items) and
# measure the sustained rate at the portal's 2 requests/s (e.g. SUSTAINED_N=400000).
if [ -n "${SUSTAINED_N:-}" ]; then
  sustained=$(run_b24 "$SUSTAINED_N")
  echo "$sustained" | tee "$OUT/sustained.json" | jq -c '{n, items, unique, seconds, items_per_s, requests, count_503, max_rss_kb}' >&2
fi
fast_small=$(run_fast "$N_SMALL")
fast=$(run_fast "$N_LARGE")

jq -n --argjson small "$small" --argjson large "$large" --argjson fast_small "$fast_small" --argjson fast "$fast" '
  {b24_small:$small, b24_large:$large, fast_bitrix24_small:$fast_small, fast_bitrix24:$fast,
   wall_ratio_small_fast_over_b24: ($fast_small.seconds/$small.seconds),
   request_ratio_small_fast_over_b24: ($fast_small.requests/$small.requests),
   request_budget: (($large.n/2500|ceil) + 5),
   rss_delta_mb: (($large.max_rss_kb - $small.max_rss_kb)/1024),
   wall_ratio_fast_over_b24: ($fast.seconds/$large.seconds),
   request_ratio_fast_over_b24: ($fast.requests/$large.requests)}' | tee "$OUT/results.json"

jq -r '
  "tool           N        items    unique   seconds  items/s   requests  503s  peakRSS(MB)",
  ([.b24_small, .b24_large, .fast_bitrix24_small, .fast_bitrix24][] |
    "\(.tool|.+"               "|.[0:14]) \(.n|tostring|.+"        "|.[0:8]) \(.items|tostring|.+"        "|.[0:8]) \(.unique|tostring|.+"        "|.[0:8]) \(.seconds*100|round/100|tostring|.+"        "|.[0:8]) \(.items_per_s|round|tostring|.+"        "|.[0:9]) \(.requests|tostring|.+"          "|.[0:9]) \(.count_503|tostring|.+"     "|.[0:5]) \(if .max_rss_kb then (.max_rss_kb/1024*10|round/10|tostring) else "-" end)\(if .error then "   FAILED: \(.error)" else "" end)"),
  "request budget ceil(N/2500)+5: \(.request_budget)   RSS delta 10k→100k: \(.rss_delta_mb*10|round/10) MB",
  "fast_bitrix24 / b24 at N=\(.b24_small.n): wall time x\(.wall_ratio_small_fast_over_b24*100|round/100), requests x\(.request_ratio_small_fast_over_b24*100|round/100)",
  "fast_bitrix24 / b24 at N=\(.b24_large.n): wall time x\(.wall_ratio_fast_over_b24*100|round/100), requests x\(.request_ratio_fast_over_b24*100|round/100)\(if .fast_bitrix24.error then " (fast_bitrix24 FAILED after that time)" else "" end)"
' "$OUT/results.json" >&2
