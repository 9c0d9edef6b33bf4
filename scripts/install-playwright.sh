#!/usr/bin/env bash
# Installs the pinned playwright-core from the npm registry into .tools/playwright (inside the
# checkout, ignored by git) and prints the path of its node_modules directory. The runs page's
# browser test drives Debian's chromium with it (install-deps.sh installs chromium);
# playwright-core downloads no browser of its own. Idempotent: a second call that finds the
# pinned version installed does no network work.
set -euo pipefail

PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.tools/playwright"
modules="$prefix/node_modules"

if [[ -f "$modules/playwright-core/package.json" ]] \
  && [[ "$(cat "$prefix/.version" 2>/dev/null)" == "$PLAYWRIGHT_VERSION" ]]; then
  echo "$modules"
  exit 0
fi

command -v npm >/dev/null || { echo "install-playwright: npm is required (apt-get install nodejs npm)" >&2; exit 1; }
mkdir -p "$prefix"
# --ignore-scripts: playwright-core has no install script; nothing is downloaded beyond it.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$prefix" --no-audit --no-fund \
  --no-save --ignore-scripts "playwright-core@$PLAYWRIGHT_VERSION" >&2
NODE_PATH="$modules" node -e 'require("playwright-core")' >&2
echo "$PLAYWRIGHT_VERSION" > "$prefix/.version"
echo "$modules"
