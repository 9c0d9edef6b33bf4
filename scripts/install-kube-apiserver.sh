#!/usr/bin/env bash
# Builds a real kube-apiserver and kube-controller-manager (v1.20, from Debian bookworm's
# `kubernetes` source package) and installs Debian's etcd-server, for the Kubernetes test tier.
#
# No package registry ships kube-apiserver, kind, k3s or envtest binaries, so the only offline
# route is the Debian source package built with the upstream Makefile (a plain `go build` fails).
# The build takes about 5 minutes on 2 cores, so the two binaries are cached OUTSIDE the checkout
# (default ~/.cache/headless-bridge/kube-<version>/, override with HB_KUBE_CACHE) and later runs
# return at once. Prints nothing when everything is already present.
#
# The tests find the binaries through HB_KUBE_BIN_DIR or the default cache directory.
set -euo pipefail

version=1.20.2
cache=${HB_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/headless-bridge/kube-$version}
bin=$cache/bin

need_root() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "install-kube-apiserver: please install as root: $*" >&2
    exit 1
  fi
}

# etcd from Debian (etcd-server puts the binary in /usr/bin/etcd).
if ! command -v etcd >/dev/null; then
  need_root etcd-server
  echo "install-kube-apiserver: installing etcd-server" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >&2
  # The package starts a system etcd on the default ports; the tests run their own.
  if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if [[ -x $bin/kube-apiserver && -x $bin/kube-controller-manager ]]; then
  exit 0
fi

need_root "golang-go rsync dpkg-dev and the kubernetes source package"
echo "install-kube-apiserver: building kube-apiserver and kube-controller-manager $version (first run on this machine, ~5 min)" >&2

# A deb-src line for bookworm, next to the existing deb line.
src_list=/etc/apt/sources.list.d/headless-bridge-src.sources
if [[ ! -f $src_list ]]; then
  cat >"$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  golang-go rsync dpkg-dev make >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/kube-src.XXXXXX")
trap 'rm -rf "$work"' EXIT
(
  cd "$work"
  apt-get source -qq kubernetes >&2
  src=$(find . -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
  cd "$src"
  # GOFLAGS=-mod=vendor: the source package vendors every module; nothing is fetched.
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
  mkdir -p "$bin.partial"
  for b in kube-apiserver kube-controller-manager; do
    cp "$(find _output -type f -name "$b" -perm -u+x | head -n1)" "$bin.partial/$b"
  done
)
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "install-kube-apiserver: cached in $bin" >&2
