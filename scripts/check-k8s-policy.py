#!/usr/bin/env python3
"""Checks rendered manifests for the hardening rules that no JSON schema knows.

Usage: check-k8s-policy.py RENDERED.yaml  (the output of `kubectl kustomize`)

Each rule below is one an SRE review would ask for; k8s/README.md explains why it holds. Prints
every violation, not only the first, and exits 1 if there is any.
"""

import sys

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
SECRET_SETTINGS = {"HB_API_TOKEN", "HB_WEBHOOK_SECRET"}


def pod_spec(obj):
    """The pod template of a workload, or None for other kinds."""
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def check_pod(where, spec, problems):
    pod_ctx = spec.get("securityContext", {})
    if pod_ctx.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if pod_ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile must be RuntimeDefault")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.append(f"{where}: host namespaces are not allowed")

    for volume in spec.get("volumes", []):
        if "hostPath" in volume:
            problems.append(f"{where}: volume {volume['name']} is a hostPath")
        if "emptyDir" in volume and "sizeLimit" not in (volume["emptyDir"] or {}):
            problems.append(f"{where}: emptyDir {volume['name']} has no sizeLimit")

    for c in spec.get("initContainers", []) + spec["containers"]:
        cwhere = f"{where} container {c['name']}"
        ctx = c.get("securityContext", {})
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cwhere}: allowPrivilegeEscalation must be false")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cwhere}: readOnlyRootFilesystem must be true")
        if ctx.get("privileged"):
            problems.append(f"{cwhere}: must not be privileged")
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            problems.append(f"{cwhere}: capabilities must drop ALL")
        if ctx.get("capabilities", {}).get("add"):
            problems.append(f"{cwhere}: must not add capabilities")
        for kind in ("requests", "limits"):
            if "ephemeral-storage" not in c.get("resources", {}).get(kind, {}):
                problems.append(f"{cwhere}: resources.{kind} lacks ephemeral-storage")
        for mount in c.get("volumeMounts", []):
            if "subPath" in mount or "subPathExpr" in mount:
                problems.append(f"{cwhere}: mount {mount['name']} uses subPath")
        for env in c.get("env", []):
            if env["name"] in SECRET_SETTINGS and "value" in env:
                problems.append(f"{cwhere}: {env['name']} must come from a Secret")
        liveness = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
        if liveness is not None and liveness != "/health":
            problems.append(f"{cwhere}: liveness must be /health, never the deep check")


def check(obj, problems):
    kind, name = obj["kind"], obj["metadata"]["name"]
    where = f"{kind}/{name}"
    if kind not in CLUSTER_SCOPED and not obj["metadata"].get("namespace"):
        problems.append(f"{where}: has no namespace")
    if kind == "Secret":
        problems.append(f"{where}: Secrets are created by the operator, never shipped")
    if kind == "Service" and obj["spec"].get("type", "ClusterIP") != "ClusterIP":
        problems.append(f"{where}: must be ClusterIP")
    if kind in ("Role", "ClusterRole"):
        for rule in obj.get("rules", []):
            if "*" in rule.get("verbs", []) + rule.get("resources", []):
                problems.append(f"{where}: wildcard in a rule")
    if kind in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj.get("subjects", []):
            if subject["kind"] == "ServiceAccount" and not subject.get("namespace"):
                problems.append(f"{where}: ServiceAccount subject has no namespace")
    spec = pod_spec(obj)
    if spec is not None:
        check_pod(where, spec, problems)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    problems = []
    for obj in objects:
        check(obj, problems)
    for problem in problems:
        print(f"{sys.argv[1]}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
