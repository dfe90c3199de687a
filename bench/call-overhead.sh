#!/usr/bin/env bash
# Benchmark: whole-process `b24 call` wall time against a loopback sandbox (start-up + one call).
# Usage: bench/call-overhead.sh [N]   (default 200 calls)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-200}"
cargo build --release -q -p b24-cli
B24="$PWD/target/release/b24"
tmp=$(mktemp -d)
trap 'kill "$sb_pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
"$B24" sandbox --no-limits --json >"$tmp/info.json" 2>/dev/null &
sb_pid=$!
for _ in $(seq 1 100); do [ -s "$tmp/info.json" ] && break; sleep 0.05; done
export B24_WEBHOOK_URL=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["webhook_url"])' "$tmp/info.json")
export B24_STATE_DIR="$tmp/state" B24_CONFIG_DIR="$tmp/config"
python3 - "$B24" "$N" <<'PY'
import subprocess, sys, time, statistics
b24, n = sys.argv[1], int(sys.argv[2])
for limiter in ("sqlite", "memory"):
    # A huge bucket so that the figure is overhead, not the limiter deliberately waiting.
    env = dict(__import__("os").environ, B24_RATE_LIMITER=limiter, B24_RATE_BURST="1000000", B24_RATE_PER_SEC="1000000")
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = subprocess.run([b24, "call", "server.time"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        times.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            sys.exit(f"b24 call failed: {r.stderr.decode()}")
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(len(times) * q))]
    print(f"b24 call server.time ({limiter} limiter), {n} processes: mean {statistics.mean(times):.2f} ms, "
          f"p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms, min {times[0]:.2f} ms")
t = time.perf_counter()
subprocess.run([b24, "--version"], stdout=subprocess.DEVNULL)
print(f"b24 --version (start-up only): {(time.perf_counter() - t) * 1000:.2f} ms")
PY
