#!/usr/bin/env bash
# Installs the pinned Codex CLI from the npm registry into .tools/codex (inside the checkout,
# ignored by git) and prints the path of its executable. Idempotent: a second call that finds
# the pinned version already installed does no network work.
set -euo pipefail

CODEX_VERSION="${CODEX_VERSION:-0.171.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.tools/codex"
bin="$prefix/node_modules/.bin/codex"

if [[ -x "$bin" ]] && [[ "$(cat "$prefix/.version" 2>/dev/null)" == "$CODEX_VERSION" ]]; then
  echo "$bin"
  exit 0
fi

command -v npm >/dev/null || { echo "install-codex: npm is required (apt-get install nodejs npm)" >&2; exit 1; }
mkdir -p "$prefix"
# --ignore-scripts is safe: the package ships its native binary as an optional dependency, no
# install script is needed to place it.
npm install --prefix "$prefix" --no-audit --no-fund --no-save --ignore-scripts \
  "@openai/codex@$CODEX_VERSION" >&2
# Codex refuses to put its helper links in a home under /tmp and warns that it could not
# create PATH aliases; a throw-away home inside the install keeps that harmless line away.
version_home="$(mktemp -d "$prefix/version-home.XXXXXX")"
CODEX_HOME="$version_home" "$bin" --version >&2
rm -rf "$version_home"
echo "$CODEX_VERSION" > "$prefix/.version"
echo "$bin"
