#!/usr/bin/env bash
# Installs the pinned Python tools the tests drive into virtual environments under .tools/
# (inside the checkout, ignored by git) and prints the path of each environment's bin
# directory, one per line, in this order:
#   .tools/mcp-client    the official MCP Python SDK (`mcp` on PyPI), the MCP e2e test's client
#   .tools/schemathesis  schemathesis, which fuzzes the live API against its OpenAPI document
# Idempotent: a second call that finds the pinned versions installed does no network work.
set -euo pipefail

MCP_VERSION="${MCP_VERSION:-2.3.0}"
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

python=$(command -v python3) || { echo "install-python-tools: python3 is required (apt-get install python3 python3-venv)" >&2; exit 1; }

# install NAME REQUIREMENT: a venv in .tools/NAME holding REQUIREMENT unless already there.
install() {
  local name=$1 requirement=$2
  local prefix="$root/.tools/$name"
  if [[ -x "$prefix/bin/python" ]] && [[ "$(cat "$prefix/.version" 2>/dev/null)" == "$requirement" ]]; then
    echo "$prefix/bin"
    return
  fi
  rm -rf "$prefix"
  "$python" -m venv "$prefix" >&2
  "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "$requirement" >&2
  echo "$requirement" > "$prefix/.version"
  echo "$prefix/bin"
}

install mcp-client "mcp==$MCP_VERSION"
install schemathesis "schemathesis==$SCHEMATHESIS_VERSION"
