#!/usr/bin/env bash
# The main job, end to end, on this machine: starts a local fake model (speaking the OpenAI
# Responses API), a git server with a demo repository and a file server with the `ak` tool,
# all on 127.0.0.1; starts the bridge with a Codex login pointing at the fake model; POSTs a
# task to /run_codex_session; prints the JSON answer. The real, pinned Codex CLI does the run;
# the fake model fixes nothing: it has Codex run `ak --version && head -n 3 README.md` and
# answers with what that printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

scripts/install-deps.sh
codex_bin=$(scripts/install-codex.sh)
cargo build --locked --quiet --bin headless-bridge --bin headless-bridge-shim --bin hb-testkit

state="$root/.data/demo"
rm -rf "$state"
mkdir -p "$state"
port="${DEMO_PORT:-8765}"
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
model_key="sk-demo-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

pids=()
cleanup() {
  exec 3>&- 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# The testkit serves until its stdin closes; fd 3 holds it open until cleanup.
mkfifo "$state/testkit.stdin"
HB_TESTKIT_API_KEY="$model_key" target/debug/hb-testkit demo --state-dir "$state" \
  <"$state/testkit.stdin" >"$state/world.json" 2>"$state/testkit.log" &
pids+=($!)
exec 3>"$state/testkit.stdin"
for _ in $(seq 100); do [[ -s "$state/world.json" ]] && break; sleep 0.1; done
[[ -s "$state/world.json" ]] || { echo "demo: the testkit did not start:" >&2; cat "$state/testkit.log" >&2; exit 1; }

HB_LISTEN="127.0.0.1:$port" HB_API_TOKEN="$token" HB_DATA_DIR="$state/bridge" \
HB_CODEX_DIR="$(jq -r .codex_dir "$state/world.json")" HB_CODEX_BIN="$codex_bin" \
HB_ALLOWED_HOSTS=127.0.0.1 HB_LOG_FORMAT=text \
  target/debug/headless-bridge serve 2>"$state/bridge.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$port/health" >/dev/null || { echo "demo: the bridge did not start:" >&2; cat "$state/bridge.log" >&2; exit 1; }

echo "demo: deep health:" >&2
curl -s "http://127.0.0.1:$port/health?deep=1" | jq -c . >&2

request=$(jq -n --slurpfile w "$state/world.json" '{
  contract_id: "demo-1",
  repo_url: $w[0].repo_url,
  failure_details: "`python3 stats.py` prints 2.0 instead of 3.0",
  ak_url: $w[0].tool_url,
  ak_hash: $w[0].tool_sha256
}')
echo "demo: POST /run_codex_session" >&2
echo "$request" | jq . >&2
curl -s -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  --data "$request" "http://127.0.0.1:$port/run_codex_session" | jq .
