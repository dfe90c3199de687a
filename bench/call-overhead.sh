#!/usr/bin/env bash
# Benchmark: whole-process `b24 call server.time` (start-up + one call) against loopback
# sandboxes, over https (the sandbox's --tls, as every real portal) and over plain http.
#
# Usage: bench/call-overhead.sh [N]            (default 200 runs per case)
#   B24_BIN=/path/to/b24       measure another build (e.g. an older one, for before/after)
#   PY_CLIENT=/path/to/bitrix24_client.py   also time the original Python CLI, side by side,
#                              against the same https sandbox (it must accept B24_* env).
# Uses hyperfine when installed (mean ± σ, user CPU), else a Python timing loop.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"
if [ -z "${B24_BIN:-}" ]; then
  cargo build --release -q -p b24-cli
  B24_BIN="$PWD/target/release/b24"
fi
tmp=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"' EXIT
"$B24_BIN" sandbox --no-limits --tls --json >"$tmp/tls.json" 2>/dev/null &
pids+=($!)
"$B24_BIN" sandbox --no-limits --json >"$tmp/http.json" 2>/dev/null &
pids+=($!)
for _ in $(seq 1 100); do [ -s "$tmp/tls.json" ] && [ -s "$tmp/http.json" ] && break; sleep 0.05; done
field() { python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
HTTPS_URL=$(field "$tmp/tls.json" webhook_url)
HTTP_URL=$(field "$tmp/http.json" webhook_url)
export B24_CA_FILE=$(field "$tmp/tls.json" ca_file)
export B24_STATE_DIR="$tmp/state" B24_CONFIG_DIR="$tmp/config" HOME="$tmp"
# A huge bucket so that the figure is overhead, not the limiter deliberately waiting.
export B24_RATE_BURST=1000000 B24_RATE_PER_SEC=1000000
B24_WEBHOOK_URL="$HTTPS_URL" "$B24_BIN" call server.time >/dev/null
cases=(-n "b24 https" "env B24_WEBHOOK_URL=$HTTPS_URL $B24_BIN call server.time"
       -n "b24 http" "env B24_WEBHOOK_URL=$HTTP_URL $B24_BIN call server.time")
if [ -n "${PY_CLIENT:-}" ]; then
  # The Python client trusts the sandbox's CA through the usual variables.
  export SSL_CERT_FILE="$B24_CA_FILE" REQUESTS_CA_BUNDLE="$B24_CA_FILE"
  # It reads the webhook as B24_DOMAIN + B24_WEBHOOK_USER_ID + B24_WEBHOOK_CODE, and writes its
  # audit and idempotency files under the working directory (here the temp dir). Its file
  # limiter gets the same huge bucket as ours, so both figures are overhead, not waiting.
  rest=${HTTPS_URL#https://}; py_domain=${rest%%/rest/*}; hook=${rest#*/rest/}
  py_user=${hook%%/*}; py_code=${hook#*/}; py_code=${py_code%/}
  cd "$tmp"
  cases+=(-n "python https" "env B24_RATE_LIMITER_RATE=1000000 B24_RATE_LIMITER_BURST=1000000 B24_DOMAIN=$py_domain B24_WEBHOOK_USER_ID=$py_user B24_WEBHOOK_CODE=$py_code python3 $PY_CLIENT server.time --params {} --allow-unlisted")
fi
if command -v hyperfine >/dev/null; then
  hyperfine -N -w 10 -r "$N" "${cases[@]}"
  exit 0
fi
python3 - "$N" "${cases[@]}" <<'PY'
import resource, shlex, statistics, subprocess, sys, time
n, args = int(sys.argv[1]), sys.argv[2:]
for i in range(0, len(args), 3):
    name, cmd = args[i + 1], shlex.split(args[i + 2])
    times = []
    # CPU time (user + system) of the child processes: steadier than wall time on a busy machine.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(n):
        t = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            sys.exit(f"{name} failed: {r.stderr.decode()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000 / n
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(len(times) * q))]
    print(f"{name}: {n} processes: mean {statistics.mean(times):.2f} ms, "
          f"p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, min {times[0]:.2f} ms, "
          f"cpu {cpu:.2f} ms/process")
PY
