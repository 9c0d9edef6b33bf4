#!/usr/bin/env bash
# The fetch benchmark of issue 8: the bridge's fetcher against `curl | sha256sum` on the same
# large file over loopback, and the cost of a cache hit, side by side. Release build.
# HB_BENCH_MB (default 256) and HB_BENCH_RUNS (default 3) tune it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v curl >/dev/null || { echo "bench-fetch: curl is required (apt-get install curl)" >&2; exit 1; }
cargo bench --locked -p headless-bridge --bench fetch
