#!/usr/bin/env bash
# Builds the container image without a Docker engine or a registry to pull from, then runs it
# once. As root, on Debian:
#   1. builds the bridge on the host (`cargo build --release --locked`);
#   2. debootstraps a Debian bookworm root filesystem into a cache outside the checkout and
#      imports it into buildah as the base image (once; later runs reuse it);
#   3. builds the Containerfile with buildah (vfs storage, chroot isolation), taking the host's
#      binary through the `prebuilt` stage, since no Rust image can be pulled here; the codex
#      stage installs the pinned Codex CLI from npm;
#   4. writes the image as an OCI archive to .data/image/headless-bridge.oci.tar;
#   5. smoke-tests it with `buildah run`, as the image's uid 10001: `headless-bridge --version`,
#      `codex --version`, a search for credential files in the image, then `serve` with the
#      testkit's stand-ins on 127.0.0.1 (fake model, git and download hosts) and their login
#      mounted at run time: /health, /health?deep=1, one real run through POST
#      /run_codex_session, SIGTERM with a clean exit, and nothing written outside the paths the
#      pod mounts as emptyDir volumes. Skip with HB_IMAGE_SMOKE=0; HB_IMAGE_BUILD=0 skips
#      steps 2-4 and smoke-tests the image already built.
#
# Settings: HB_IMAGE_CACHE (default ~/.cache/headless-bridge/image: base filesystem and buildah
# storage, several GB), HB_IMAGE (the tag), HB_DEBIAN_MIRROR, HB_IMAGE_SMOKE_PORT, and
# HB_BUILD_CA_FILE: the CA bundle npm trusts during the build (default: the host's system
# bundle, which holds a TLS-inspecting proxy's CA where there is one; empty for none).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

suite=bookworm
cache="${HB_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/headless-bridge/image}"
mirror="${HB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' crates/headless-bridge/Cargo.toml)
image="${HB_IMAGE:-localhost/headless-bridge:$version}"
base="localhost/headless-bridge-base:$suite"
archive=.data/image/headless-bridge.oci.tar
port="${HB_IMAGE_SMOKE_PORT:-18391}"
build_ca="${HB_BUILD_CA_FILE-/etc/ssl/certs/ca-certificates.crt}"

step() { echo "== [${SECONDS}s] $*" >&2; }
die() { echo "build-image: $*" >&2; exit 1; }
bah() { buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs "$@"; }

[[ $(id -u) -eq 0 ]] || die "run as root: debootstrap and buildah's vfs storage need it"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
mkdir -p "$cache" "$(dirname "$archive")"

# hb-testkit serves the smoke test's stand-in model, git and download hosts.
step "cargo build --release --locked --bin headless-bridge --bin headless-bridge-shim --bin hb-testkit"
cargo build --release --locked --quiet --bin headless-bridge --bin headless-bridge-shim --bin hb-testkit

if [[ "${HB_IMAGE_BUILD:-1}" == 1 ]]; then
# The base: what debian:bookworm-slim would be, made locally. The same apt sources as the
# official image (updates and security included) and its dpkg filter that skips docs and
# manuals.
rootfs="$cache/rootfs-$suite"
if ! bah inspect --type image "$base" >/dev/null 2>&1; then
  if [[ ! -d "$rootfs" ]]; then
    step "debootstrap --variant=minbase $suite ($mirror)"
    rm -rf "$rootfs.partial"
    debootstrap --variant=minbase "$suite" "$rootfs.partial" "$mirror" >"$cache/debootstrap.log"
    mv "$rootfs.partial" "$rootfs"
  fi
  step "importing $rootfs as $base"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/excludes" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EXCLUDES
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
  tar --numeric-owner -C "$rootfs" -cf "$cache/rootfs-$suite.tar" .
  ctr=$(bah from scratch)
  bah add "$ctr" "$cache/rootfs-$suite.tar" / >/dev/null
  bah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.description=Debian $suite minbase (debootstrap)" "$ctr"
  bah commit --quiet --rm "$ctr" "$base" >/dev/null
  rm -f "$cache/rootfs-$suite.tar"
fi

# A machine that reaches npm through a TLS-inspecting proxy trusts the proxy's CA in its own
# bundle; the npm step gets that bundle as a build secret, which never lands in a layer.
ca_args=()
if [[ -n "$build_ca" ]]; then
  [[ -f "$build_ca" ]] || die "HB_BUILD_CA_FILE=$build_ca is not a file"
  ca_args=(--secret "id=npm_ca,src=$build_ca")
fi

# This storage is the script's own. buildah 1.28 leaves a working container behind for a
# stage without instructions (`binary`), and a failed build leaves its own: clear them.
bah rm --all >/dev/null

step "buildah bud -f Containerfile -t $image (BINARY_SOURCE=prebuilt)"
bah bud --quiet --isolation chroot --layers --pull=never "${ca_args[@]}" \
  --build-arg BASE_IMAGE="$base" --build-arg BINARY_SOURCE=prebuilt \
  -f Containerfile -t "$image" . >/dev/null

step "writing $archive"
rm -f "$archive"
bah push --quiet "$image" "oci-archive:$archive:$image"
step "image: $image, $(du -h "$archive" | cut -f1) as an OCI archive"
fi

[[ "${HB_IMAGE_SMOKE:-1}" == 1 ]] || exit 0

# The smoke test: the image's own user and binaries, with the credential mounted only for the
# run (a placeholder API key, never part of the image), on loopback only.
scratch=$(mktemp -d)
ctr=$(bah from --quiet --pull=never "$image")
server=
# `buildah run` with chroot isolation passes no signal on to the container, so stopping the
# server means signalling the container's tini, a descendant of that buildah process; tini
# forwards SIGTERM to the bridge, which shuts down gracefully.
descendants() {
  local child
  for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done
}
stop_server() {
  local pid
  for pid in $(descendants "$server"); do
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == tini ]] && kill -TERM "$pid"
  done
  local status=0
  wait "$server" || status=$?
  server=
  return "$status"
}
testkit=
cleanup() {
  if [[ -n "$server" ]]; then stop_server || true; fi
  if [[ -n "$testkit" ]]; then exec 3>&-; wait "$testkit" 2>/dev/null || true; fi
  bah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$scratch"
}
trap cleanup EXIT
run() { bah run --isolation chroot "$@"; }

step "smoke: the image's user; headless-bridge --version; codex --version"
[[ "$(run "$ctr" -- id -u)" == 10001 ]] || die "the image does not run as uid 10001"
run "$ctr" -- headless-bridge --version
run "$ctr" -- codex --version
# The run shim the bridge starts every CLI under, beside it: the CLI's exit code comes through.
status=0
run "$ctr" -- headless-bridge-shim -- /bin/sh -c 'exit 7' || status=$?
[[ $status == 7 ]] || die "headless-bridge-shim is missing or broken in the image (exit $status)"

# Logins, npm settings and caches, build-time CA mounts, private keys: none may be left.
step "smoke: no credential or build-time file anywhere in the image"
mnt=$(bah mount "$ctr")
found=$(find "$mnt" -xdev \( -name auth.json -o -name .npmrc -o -name .npm -o -name '*-ca.crt' \
  -o -name 'id_rsa*' -o -name 'id_ed25519*' -o -path "$mnt/etc/ssl/private/?*" \) -print)
bah umount "$ctr" >/dev/null
[[ -z "$found" ]] || die "found in the image: ${found//"$mnt"/}"

# The stand-ins for the clouds a run touches, on the host's loopback (chroot isolation shares
# the host's network): a fake model speaking the Responses API, a git host, a download host.
# The testkit serves until its stdin closes; fd 3 holds it open until cleanup.
step "smoke: starting the testkit (fake model, git and download hosts on 127.0.0.1)"
mkfifo "$scratch/testkit.stdin"
HB_TESTKIT_API_KEY="sk-smoke-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" \
  target/release/hb-testkit demo --state-dir "$scratch/world" <"$scratch/testkit.stdin" \
  >"$scratch/world.json" 2>"$scratch/testkit.log" &
testkit=$!
exec 3>"$scratch/testkit.stdin"
for _ in $(seq 100); do [[ -s "$scratch/world.json" ]] && break; sleep 0.1; done
[[ -s "$scratch/world.json" ]] || { cat "$scratch/testkit.log" >&2; die "the testkit did not start"; }

# The login laid out as the kubelet lays out a Secret volume: each file a symlink through
# `..data`, which the kubelet swaps to a new timestamped directory on every update. Mounted
# read-only; readable to all here, where there is no fsGroup.
generation="..$(date -u +%Y_%m_%d_%H_%M_%S).000000001"
mkdir -p "$scratch/codex/$generation"
cp "$(jq -r .codex_dir "$scratch/world.json")"/{auth.json,config.toml} "$scratch/codex/$generation/"
ln -s "$generation" "$scratch/codex/..data"
ln -s ..data/auth.json "$scratch/codex/auth.json"
ln -s ..data/config.toml "$scratch/codex/config.toml"
chmod -R a+rX "$scratch/codex"

step "smoke: serve as uid 10001 on 127.0.0.1:$port, then /health and /health?deep=1"
touch "$scratch/started"
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
run --env HB_LISTEN="127.0.0.1:$port" --env HB_API_TOKEN="$token" --env HB_LOG_FORMAT=text \
  --env HB_ALLOWED_HOSTS=127.0.0.1 \
  --volume "$scratch/codex:/run/secrets/headless-bridge/codex:ro" \
  "$ctr" -- /usr/bin/tini -s -- /usr/local/bin/headless-bridge serve 2>"$scratch/serve.log" &
server=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$port/health" || { cat "$scratch/serve.log" >&2; die "/health did not answer"; }
echo >&2
curl -sS "http://127.0.0.1:$port/health?deep=1" | tee "$scratch/deep.json"
echo >&2
jq -e '.status == "ok"' "$scratch/deep.json" >/dev/null \
  || { cat "$scratch/serve.log" >&2; die "/health?deep=1 is not ok"; }
grep -q "no run shim" "$scratch/serve.log" && die "the bridge did not find its run shim in the image"

step "smoke: POST /run_codex_session: clone, verified tool, the real Codex CLI, in the image"
request=$(jq -n --slurpfile w "$scratch/world.json" '{
  contract_id: "image-smoke", repo_url: $w[0].repo_url, ak_url: $w[0].tool_url,
  ak_hash: $w[0].tool_sha256, failure_details: "stats.py prints 2.0 instead of 3.0"}')
curl -sS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  --data "$request" "http://127.0.0.1:$port/run_codex_session" >"$scratch/run.json"
jq -c '{status, outcome: .meta.outcome, reason: .meta.reason, duration_ms: .meta.duration_ms,
  output: (.output | .[0:120])}' "$scratch/run.json" >&2
jq -e '.status == "success"' "$scratch/run.json" >/dev/null \
  || { jq . "$scratch/run.json" >&2; cat "$scratch/serve.log" >&2; die "the run did not succeed"; }

step "smoke: SIGTERM, and the bridge exits 0"
stop_server || { cat "$scratch/serve.log" >&2; die "the bridge did not shut down cleanly"; }
# The pod's root filesystem is read-only: whatever the bridge, git and Codex wrote must be
# under the two paths the pod mounts as emptyDir volumes. buildah's own files are exempt.
step "smoke: nothing written outside /var/lib/headless-bridge and /tmp"
mnt=$(bah mount "$ctr")
written=$(find "$mnt" -xdev -newer "$scratch/started" \
  -not -path "$mnt/var/lib/headless-bridge" -not -path "$mnt/var/lib/headless-bridge/*" \
  -not -path "$mnt/tmp" -not -path "$mnt/tmp/*" \
  -not -path "$mnt/run" -not -path "$mnt/run/secrets*" -not -path "$mnt/run/.containerenv" \
  -not -path "$mnt/etc/hosts" -not -path "$mnt/etc/resolv.conf" -not -path "$mnt/etc/hostname" \
  -print)
bah umount "$ctr" >/dev/null
[[ -z "$written" ]] || die "written outside the emptyDir paths: ${written//"$mnt"/}"
step "smoke: passed"
