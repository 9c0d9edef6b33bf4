#!/usr/bin/env bash
# Installs the system packages the bridge and its tests need, from Debian, when missing:
# git (clones), Node.js and npm (the Codex, Claude Code, Gemini and Vercel CLIs ship through
# npm), curl and jq (the demo sends its request and reads the JSON answers), gh (the GitHub
# CLI example profile's tests), OpenSSH's client and server (`ssh://` repositories are tested
# against a real sshd on loopback), Chromium (the runs page is tested in it, headless, driven
# by playwright-core from install-playwright.sh), python3 with venv (interactive sessions are
# tested with a script that asks questions; the MCP client and schemathesis live in virtual
# environments), dialog (a curses program for sessions) and iproute2 (the API fuzz runs in a
# network namespace whose loopback it brings up).
set -euo pipefail

missing=()
command -v git >/dev/null || missing+=(git)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
command -v gh >/dev/null || missing+=(gh)
{ command -v ssh && command -v ssh-keygen; } >/dev/null || missing+=(openssh-client)
# sshd lives in /usr/sbin, which a non-root PATH may not hold.
[[ -x /usr/sbin/sshd ]] || command -v sshd >/dev/null || missing+=(openssh-server)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
# Debian's own python3: a version manager's shim on PATH needs a HOME that sessions replace.
[[ -x /usr/bin/python3 ]] || missing+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v dialog >/dev/null || missing+=(dialog)
command -v ip >/dev/null || [[ -x /usr/sbin/ip ]] || missing+=(iproute2)
command -v cargo >/dev/null || { echo "install-deps: a Rust toolchain (cargo) is required: https://rustup.rs" >&2; exit 1; }

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install-deps: please install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
