#!/usr/bin/env bash
# The service benchmark: per-run overhead, load, memory and output throughput of the bridge,
# printed side by side with baselines measured in the same run (the CLI spawned directly, and
# Debian's `webhook`). Builds in release mode; takes a few minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/install-codex.sh >/dev/null
if ! command -v webhook >/dev/null && [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq webhook >&2 || echo "bench: webhook unavailable, its rows stay empty" >&2
fi
cargo bench --locked --bench service
