#!/usr/bin/env bash
# Installs the pinned Claude Code, Gemini, Vercel and Netlify CLIs from the npm registry into
# .tools/<name> (inside the checkout, ignored by git) and prints the path of each executable,
# one per line, in that order. Idempotent: a second call that finds the pinned versions
# installed does no network work.
#
# Netlify CLI is the largest: about 420 MB and 1193 packages, 75 s to install on 2 cores.
#
# Vercel is pinned at 58.10.0: 61 and newer do not install from the registry this project
# reaches (a dependency version is missing there).
set -euo pipefail

CLAUDE_VERSION="${CLAUDE_VERSION:-2.1.197}"
GEMINI_VERSION="${GEMINI_VERSION:-0.61.0}"
VERCEL_VERSION="${VERCEL_VERSION:-58.10.0}"
NETLIFY_VERSION="${NETLIFY_VERSION:-26.2.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

command -v npm >/dev/null || { echo "install-agent-clis: npm is required (apt-get install nodejs npm)" >&2; exit 1; }

# install NAME PACKAGE VERSION: npm-installs PACKAGE@VERSION into .tools/NAME unless present.
# --ignore-scripts: neither package needs its install script. Claude's only hardlinks its
# platform binary over a stub, which bin/NAME below replaces with a symlink.
install() {
  local name=$1 package=$2 version=$3 prefix="$root/.tools/$1"
  if [[ -x "$prefix/bin/$name" ]] && [[ "$(cat "$prefix/.version" 2>/dev/null)" == "$version" ]]; then
    return
  fi
  mkdir -p "$prefix/bin"
  npm install --prefix "$prefix" --no-audit --no-fund --no-save --ignore-scripts "$package@$version" >&2
  echo "$version" > "$prefix/.version.pending"
}

install claude @anthropic-ai/claude-code "$CLAUDE_VERSION"
install gemini @google/gemini-cli "$GEMINI_VERSION"
install vercel vercel "$VERCEL_VERSION"
install netlify netlify-cli "$NETLIFY_VERSION"

# Claude Code ships a native executable per platform as an optional dependency.
claude_prefix="$root/.tools/claude"
if [[ -f "$claude_prefix/.version.pending" ]]; then
  case "$(uname -m)" in
    x86_64) arch=x64 ;;
    aarch64) arch=arm64 ;;
    *) echo "install-agent-clis: no Claude Code build for $(uname -m)" >&2; exit 1 ;;
  esac
  libc=""
  if ldd --version 2>&1 | grep -qi musl; then libc="-musl"; fi
  ln -sfn "../node_modules/@anthropic-ai/claude-code-linux-$arch$libc/claude" "$claude_prefix/bin/claude"
fi
for name in gemini vercel netlify; do
  if [[ -f "$root/.tools/$name/.version.pending" ]]; then
    ln -sfn "../node_modules/.bin/$name" "$root/.tools/$name/bin/$name"
  fi
done

# A version check in a throwaway HOME proves each binary runs before it is marked installed.
for name in claude gemini vercel netlify; do
  prefix="$root/.tools/$name"
  if [[ -f "$prefix/.version.pending" ]]; then
    probe_home="$(mktemp -d)"
    # Claude Code sends nothing beyond its API with this set (other-clis.md §1.6.3); CI=1
    # keeps Netlify's telemetry off.
    HOME="$probe_home" CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 VERCEL_TELEMETRY_DISABLED=1 \
      NO_UPDATE_NOTIFIER=1 CI=1 "$prefix/bin/$name" --version >&2
    rm -rf "$probe_home"
    mv "$prefix/.version.pending" "$prefix/.version"
  fi
  echo "$prefix/bin/$name"
done
