#!/usr/bin/env bash
# Form decoder benchmark: b24_events::form (scan + build) against serde_qs on realistic and
# hostile Bitrix24 event bodies (crates/b24-events/examples/form_bench.rs).
#
# Usage: bench/form/run.sh
#   SKIP_BUILD=1   reuse the built example
# Prints per case what each decoder returned, the median time per parse and the peak RSS growth,
# then two tables; a copy goes to target/form-bench/results.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -p b24-events --example form_bench
fi
mkdir -p target/form-bench
target/release/examples/form_bench | tee target/form-bench/results.txt
