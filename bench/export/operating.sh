#!/usr/bin/env bash
# Operating-time benchmark (issue 20): `b24 export --strategy offset` of N leads against
# `b24 sandbox --timing realistic` (each call answers after its modelled duration and bills it
# against the method's operating-time budget), compared with the budget's own floor:
#   floor = total operating seconds billed ÷ (limit ÷ window)      (480 s per 600 s by default)
# i.e. the shortest time in which that much work can pass without the portal blocking it.
#
# Usage: bench/export/operating.sh [N]                        (default 20000)
#   CONFIGS="480:600 48:60"   limit:window pairs (seconds) to run; the default runs the
#                             portal's own budget, then the same rate with a ten times shorter
#                             window so the run lasts several windows (pacing must do the work)
#   FAST=1                    also run fast_bitrix24 (get_all, offset with counting) on each
#   SKIP_BUILD=1              reuse target/release/b24
# Needs: cargo, curl, jq. Prints a table; writes bench/export/out/operating.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/bench/export
OUT=$HERE/out
N=${1:-20000}
CONFIGS=${CONFIGS:-"480:600 48:60"}
mkdir -p "$OUT"
if [ -z "${SKIP_BUILD:-}" ]; then cargo build --release -p b24-cli >&2; fi
B24=$ROOT/target/release/b24

SB_PID=
cleanup() { if [ -n "$SB_PID" ]; then kill "$SB_PID" 2>/dev/null || true; wait "$SB_PID" 2>/dev/null || true; SB_PID=; fi; }
trap cleanup EXIT

# start_sandbox LIMIT WINDOW → sets BASE, HOOK
start_sandbox() {
  cleanup
  local info=$OUT/operating-sandbox.out
  rm -f "$info"
  "$B24" sandbox --plan standard --timing realistic --seed-leads "$N" \
    --operating-limit "$1" --operating-window "$2" --json >"$info" 2>"$OUT/operating-sandbox.err" &
  SB_PID=$!
  for _ in $(seq 1 600); do
    if [ -s "$info" ] && head -n1 "$info" | jq -e .base_url >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  BASE=$(head -n1 "$info" | jq -r .base_url)
  HOOK=$(head -n1 "$info" | jq -r .webhook_url)
}

# figures TOOL LIMIT WINDOW SECONDS ITEMS UNIQUE [ERROR] → one JSON line from the sandbox's stats
figures() {
  local s
  s=$(curl -fsS "$BASE/_sandbox/stats")
  jq -n --arg tool "$1" --argjson limit "$2" --argjson window "$3" --argjson secs "$4" \
     --argjson items "$5" --argjson uniq "$6" --arg err "${7:-}" --argjson n "$N" --argjson s "$s" '
    ($s.operating_billed["crm.lead.list"] // 0) as $billed
    | {tool:$tool, n:$n, limit:$limit, window:$window, items:$items, unique:$uniq,
       seconds:$secs, requests:$s.requests, blocks:$s.operation_time_limit,
       peak_operating:($s.max_operating["crm.lead.list"] // 0), billed:$billed,
       floor:($billed / ($limit / $window)), error:$err}
    | .ratio = (.seconds / .floor)'
}

run_b24() {
  local limit=$1 window=$2 state t0 t1 items uniq
  state=$(mktemp -d)
  start_sandbox "$limit" "$window"
  t0=$(date +%s.%N)
  env -i PATH="$PATH" HOME="$state" B24_STATE_DIR="$state/state" B24_CONFIG_DIR="$state/config" \
    B24_WEBHOOK_URL="$HOOK" B24_OPERATING_LIMIT_SECS="$limit" \
    "$B24" export crm.lead.list --strategy offset >"$OUT/operating-leads.ndjson" 2>"$OUT/operating-b24.err" || true
  t1=$(date +%s.%N)
  items=$(wc -l <"$OUT/operating-leads.ndjson")
  uniq=$(jq -r .ID "$OUT/operating-leads.ndjson" | sort -u | wc -l)
  rm -rf "$state"
  figures b24 "$limit" "$window" "$(echo "$t1 - $t0" | bc)" "$items" "$uniq" \
    "$(grep -o 'OPERATION_TIME_LIMIT.*' "$OUT/operating-b24.err" | head -n1 || true)"
  cleanup  # this runs in a pipeline's subshell: the EXIT trap of the script cannot see it
}

run_fast() {
  local limit=$1 window=$2 line
  if [ ! -x "$HERE/.venv/bin/python" ]; then
    python3 -m venv "$HERE/.venv" >&2
    "$HERE/.venv/bin/pip" install -q fast_bitrix24 >&2
  fi
  start_sandbox "$limit" "$window"
  line=$("$HERE/.venv/bin/python" "$HERE/fast_bitrix24_export.py" "$HOOK")
  figures fast_bitrix24 "$limit" "$window" "$(jq .seconds <<<"$line")" "$(jq .items <<<"$line")" \
    "$(jq .unique <<<"$line")" "$(jq -r '.error // ""' <<<"$line")"
  cleanup
}

: >"$OUT/operating.json"
for c in $CONFIGS; do
  run_b24 "${c%%:*}" "${c##*:}" | tee -a "$OUT/operating.json" >&2
  if [ -n "${FAST:-}" ]; then run_fast "${c%%:*}" "${c##*:}" | tee -a "$OUT/operating.json" >&2; fi
done

echo
printf '| tool | limit / window | items (unique) | wall s | floor s | wall ÷ floor | requests | blocks | peak operating |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
jq -r '"| \(.tool) | \(.limit) s / \(.window) s | \(.items) (\(.unique)) | \(.seconds*10|round/10) | \(.floor*10|round/10) | \(.ratio*100|round/100) | \(.requests) | \(.blocks) | \(.peak_operating*10|round/10) s |"' "$OUT/operating.json"
