#!/usr/bin/env bash
# Installs promtool, Prometheus' own checker of the metrics exposition format, into
# .tools/promtool (inside the checkout, ignored by git) and prints its path. The e2e metrics
# test pipes a real scrape through `promtool check metrics`. Debian's `prometheus` package is
# downloaded and unpacked rather than installed: installing it would start a Prometheus server.
# Idempotent: a second call that finds the pinned version does no network work.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.tools/promtool"
bin="$prefix/promtool"

if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "install-promtool: apt-get and dpkg-deb are required (Debian)" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# `apt-get download` needs package lists; refresh them only when it cannot find the package.
(cd "$work" && { apt-get download -qq prometheus 2>/dev/null \
  || { apt-get update -qq && apt-get download -qq prometheus; }; }) >&2
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$prefix"
install -m 0755 "$work/root/usr/bin/promtool" "$bin"
"$bin" --version >&2
echo "$bin"
