#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need (git, Node.js, gh,
# Chromium, the pinned Codex, Claude Code and Gemini CLIs, playwright-core, promtool, the
# manifest validators, the MCP Python SDK and schemathesis), then checks formatting, lints,
# docs, the Kubernetes manifests and the Containerfile, runs every test, and fuzzes the live
# API against its OpenAPI document.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
scripts/install-codex.sh >/dev/null
scripts/install-clis.sh >/dev/null
scripts/install-playwright.sh >/dev/null
scripts/install-python-tools.sh >/dev/null
scripts/install-kube-apiserver.sh
scripts/install-promtool.sh >/dev/null

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet
echo "== kubernetes manifests and Containerfile"
scripts/validate-k8s.sh
echo "== cargo test"
cargo test --locked --workspace
echo "== API fuzz (schemathesis against /openapi.json)"
scripts/api-fuzz.sh
