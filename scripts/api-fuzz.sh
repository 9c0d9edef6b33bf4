#!/usr/bin/env bash
# Fuzzes the live API against its own OpenAPI document with schemathesis: the real bridge on
# 127.0.0.1 with a token, Codex runs against a local fake model, and schemathesis generating
# requests for every documented operation (valid and invalid ones). Fails on any 5xx, any
# status code the document does not list, and any body or content type that does not match
# the document.
#
# Everything runs in a network namespace of its own with only a loopback interface (so this
# needs root, as CI has): generated requests name arbitrary repository, tool and callback
# URLs, and although the bridge's URL policy refuses loopback and private hosts (no
# HB_ALLOWED_HOSTS here), a public address would otherwise really be fetched.
#
# API_FUZZ_EXAMPLES (default 25) bounds the cases per operation; the whole run takes about
# two minutes on two cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
state="$root/.data/api-fuzz"

if [[ -z "${HB_API_FUZZ_INSIDE:-}" ]]; then
  scripts/install-deps.sh >/dev/null
  scripts/install-codex.sh >/dev/null
  scripts/install-python-tools.sh >/dev/null
  cargo build --locked --quiet --bin headless-bridge --bin headless-bridge-shim --bin hb-testkit
  [[ $(id -u) == 0 ]] || { echo "api-fuzz: needs root for a network namespace (unshare --net)" >&2; exit 1; }
  exec unshare --net env HB_API_FUZZ_INSIDE=1 "$0" "$@"
fi

ip link set lo up
rm -rf "$state"
mkdir -p "$state"
port=18731
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
model_key="sk-fuzz-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

pids=()
# shellcheck disable=SC2329 # run by the EXIT trap below
cleanup() {
  exec 3>&- 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# The fake model serves until its stdin closes; fd 3 holds it open until cleanup.
mkfifo "$state/model.stdin"
HB_TESTKIT_API_KEY="$model_key" target/debug/hb-testkit model --codex-dir "$state/codex" \
  --reply "fuzzed" <"$state/model.stdin" >"$state/model.json" 2>"$state/model.log" &
pids+=($!)
exec 3>"$state/model.stdin"
for _ in $(seq 100); do [[ -s "$state/model.json" ]] && break; sleep 0.1; done
[[ -s "$state/model.json" ]] || { echo "api-fuzz: the fake model did not start:" >&2; cat "$state/model.log" >&2; exit 1; }

HB_LISTEN="127.0.0.1:$port" HB_API_TOKEN="$token" HB_DATA_DIR="$state/bridge" \
HB_CODEX_DIR="$state/codex" HB_CODEX_BIN="$root/.tools/codex/node_modules/.bin/codex" \
HB_LOG_FORMAT=text HB_MAX_RUN_TIMEOUT=60 HB_RUN_TIMEOUT=30 \
  target/debug/headless-bridge serve 2>"$state/bridge.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$port/health" >/dev/null || { echo "api-fuzz: the bridge did not start:" >&2; cat "$state/bridge.log" >&2; exit 1; }

# One real run first, whose id every `{id}` parameter then names: the record, its events, its
# log and a cancel of a finished run are checked against the document with real content.
run=$(curl -s -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  --data '{"adapter": "codex", "prompt": "say hello"}' "http://127.0.0.1:$port/v1/runs?wait=120")
run_id=$(printf '%s' "$run" | "$root/.tools/schemathesis/bin/python" -c 'import json, sys; r = json.load(sys.stdin); assert r["outcome"] == "succeeded", r; print(r["id"])') \
  || { echo "api-fuzz: the seed run failed: $run" >&2; exit 1; }
# The token reaches schemathesis through its environment, not its argv, where ps shows it.
cat >"$state/schemathesis.toml" <<EOF
headers = { Authorization = "Bearer \${HB_FUZZ_TOKEN}" }

[parameters]
"path.id" = "$run_id"
EOF

# The login relay is left out: each POST runs the real CLI's device-code login against the
# ChatGPT issuer, unreachable here, and answers 502 as it should; tests/e2e/login_relay.rs
# drives it against a loopback issuer instead.
# --request-timeout: `?wait=` may hold a request up to 600 s by design, but a run here
# finishes in a second or fails validation, so a slow answer is a finding.
status=0
# Run from the state directory, where schemathesis keeps its cache of crashes.
(cd "$state" && HB_FUZZ_TOKEN="$token" "$root/.tools/schemathesis/bin/st" \
  --config-file "$state/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path /v1/credentials/codex/login \
  --max-examples "${API_FUZZ_EXAMPLES:-25}" \
  --request-timeout 60 \
  --workers 2 \
  --seed "${API_FUZZ_SEED:-1}" \
  --no-color \
  --report junit --report-dir "$state/report") || status=$?

if grep -q "panicked" "$state/bridge.log"; then
  echo "api-fuzz: the bridge panicked:" >&2
  grep -A5 "panicked" "$state/bridge.log" >&2
  status=1
fi
[[ $status == 0 ]] || echo "api-fuzz: failed; the bridge's log is $state/bridge.log" >&2
exit "$status"
