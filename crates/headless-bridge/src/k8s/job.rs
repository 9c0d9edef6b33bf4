//! The Job a run becomes, and the Secret that carries the run into its pod.
//!
//! The pod runs the bridge's own image with the `worker` subcommand. What the worker needs
//! that is not a plain setting travels in a per-run Secret, never in the Job's spec (which
//! anyone who may read Jobs sees) nor in argv: the run (`run.json`, the prompt included), what
//! it carries (`carry.rs`: the Codex login or the profile and its secrets, and the repository
//! host's credential), and the token the worker reports back with (`token`, read into
//! `HB_WORKER_TOKEN` with `secretKeyRef`). The Secret is mounted as the worker's Codex
//! directory; the Job owns it, so the garbage collector deletes it with the Job.
//!
//! Hardening is that of the bridge's own pod (`k8s/base/deployment.yaml`): non-root, no
//! privilege escalation, every capability dropped, a read-only root, the runtime's seccomp
//! profile, no ServiceAccount token. The run's limits become the Job's: its timeout (plus a
//! grace for the worker to report) is `activeDeadlineSeconds`; the workspace limit sizes the
//! data volume and the ephemeral-storage request.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;

use super::carry::Carried;
use crate::config::{Config, JobSettings};
use crate::run::{RunId, RunRecord};

/// Where the per-run Secret is mounted in the run pod; also the worker's `HB_CODEX_DIR`.
pub const RUN_DIR: &str = "/run/secrets/headless-bridge/run";
/// The worker's data directory (workspace, tool cache, working copy): an emptyDir.
pub const DATA_DIR: &str = "/var/lib/headless-bridge";
/// Keys of the per-run Secret.
pub const RUN_KEY: &str = "run.json";
pub const TOKEN_KEY: &str = "token";
/// The label every run pod and Job carries with its run id.
pub const RUN_ID_LABEL: &str = "headless-bridge/run-id";
/// Seconds past the run's own timeout before Kubernetes stops the pod: the worker enforces
/// the timeout itself and needs a moment to report the outcome.
pub const DEADLINE_GRACE_S: u64 = 60;
/// The run's uid and gid, those of the bridge's own pod and image.
const RUN_UID: i64 = 10001;
/// Room past the workspace limit for the tool cache, logs and the worker's store.
const DATA_SLACK_BYTES: u64 = 1 << 30;

/// The name of a run's Job and of its Secret.
pub fn name(id: RunId) -> String {
    format!("hb-run-{id}")
}

/// The Job that runs `record` in a pod of its own.
pub fn job(config: &Config, settings: &JobSettings, record: &RunRecord) -> Job {
    let name = name(record.id);
    let labels = json!({
        "app.kubernetes.io/name": "headless-bridge",
        "app.kubernetes.io/component": "run",
        RUN_ID_LABEL: record.id.to_string(),
    });
    let storage = (config.workspace.max_bytes + DATA_SLACK_BYTES).to_string();
    let resources = json!({
        "cpu": settings.cpu, "memory": settings.memory, "ephemeral-storage": storage,
    });
    let mut env = vec![
        json!({"name": "HB_WORKER_BRIDGE_URL", "value": settings.bridge_url}),
        json!({"name": "HB_WORKER_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}}}),
    ];
    env.extend(
        worker_settings(config)
            .into_iter()
            .map(|(name, value)| json!({"name": name, "value": value})),
    );
    let job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": record.spec.timeout_s + DEADLINE_GRACE_S,
            "ttlSecondsAfterFinished": settings.ttl_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.service_account,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": RUN_UID, "runAsGroup": RUN_UID,
                        "fsGroup": RUN_UID, "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "run",
                        "image": settings.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["worker", "--run", format!("{RUN_DIR}/{RUN_KEY}")],
                        "env": env,
                        "resources": {"requests": resources, "limits": resources},
                        "securityContext": {
                            "runAsNonRoot": true, "allowPrivilegeEscalation": false,
                            "privileged": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "run", "mountPath": RUN_DIR, "readOnly": true},
                            {"name": "data", "mountPath": DATA_DIR},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [
                        {"name": "run", "secret": {"secretName": name, "defaultMode": 0o440}},
                        {"name": "data", "emptyDir": {"sizeLimit": storage}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        },
    });
    serde_json::from_value(job).expect("the Job literal matches the Job schema")
}

/// The per-run Secret: the run, what it carries (its login and keys, see `carry.rs`) and its
/// report token, owned by the Job `owner_uid` names so that deleting the Job deletes it.
pub fn run_secret(
    namespace: &str,
    record: &RunRecord,
    token: &str,
    carried: Carried,
    owner_uid: &str,
) -> Secret {
    let name = name(record.id);
    let mut data: BTreeMap<String, ByteString> = carried
        .into_entries()
        .into_iter()
        .map(|(key, bytes)| (key, ByteString(bytes)))
        .collect();
    let run = serde_json::to_vec(record).expect("a run record serializes");
    data.insert(RUN_KEY.to_owned(), ByteString(run));
    data.insert(TOKEN_KEY.to_owned(), ByteString(token.as_bytes().to_vec()));
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "headless-bridge", RUN_ID_LABEL: record.id.to_string()},
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": owner_uid,
            }],
        },
    });
    let mut secret: Secret =
        serde_json::from_value(secret).expect("the Secret literal matches the Secret schema");
    secret.data = Some(data);
    secret
}

/// The bridge's settings a worker needs to run a run the same way, as `HB_*` variables.
fn worker_settings(config: &Config) -> Vec<(&'static str, String)> {
    let seconds = |d: std::time::Duration| d.as_secs().to_string();
    let mut vars = vec![
        ("HB_DATA_DIR", DATA_DIR.to_owned()),
        ("HB_CODEX_DIR", RUN_DIR.to_owned()),
        ("HB_CODEX_BIN", config.codex.bin.display().to_string()),
        (
            "HB_CODEX_BYPASS_SANDBOX",
            config.codex.bypass_sandbox.to_string(),
        ),
        ("HB_RUN_IDLE_TIMEOUT", seconds(config.run_idle_timeout)),
        ("HB_MAX_RUN_TIMEOUT", seconds(config.max_run_timeout)),
        ("HB_FETCH_TIMEOUT", seconds(config.fetch.total_timeout)),
        ("HB_TOOL_MAX_BYTES", config.fetch.max_bytes.to_string()),
        (
            "HB_WORKSPACE_MAX_BYTES",
            config.workspace.max_bytes.to_string(),
        ),
        (
            "HB_WORKSPACE_MIN_FREE_BYTES",
            config.workspace.min_free_bytes.to_string(),
        ),
        (
            "HB_ARTIFACT_MAX_BYTES",
            config.workspace.artifact_max_bytes.to_string(),
        ),
        ("HB_MAX_LOG_BYTES", config.max_log_bytes.to_string()),
        ("HB_LOG_FORMAT", "json".to_owned()),
        ("TMPDIR", "/tmp".to_owned()),
    ];
    if !config.allowed_hosts.is_empty() {
        vars.push(("HB_ALLOWED_HOSTS", config.allowed_hosts.join(",")));
    }
    if let Some(shim) = &config.shim_bin {
        vars.push(("HB_SHIM_BIN", shim.display().to_string()));
    }
    // The operator's token endpoint override (a gateway) applies to runs in Jobs too.
    if let Ok(url) = std::env::var(crate::adapter::codex::REFRESH_URL_OVERRIDE) {
        vars.push((crate::adapter::codex::REFRESH_URL_OVERRIDE, url));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Executor, RawConfig};
    use crate::run::RunSpec;

    pub(crate) fn config() -> (Config, JobSettings) {
        let vars = [
            ("HB_EXECUTOR", "kubernetes"),
            ("HB_JOB_NAMESPACE", "runs"),
            ("HB_JOB_IMAGE", "registry.example.com/headless-bridge:1"),
            ("HB_JOB_BRIDGE_URL", "http://10.0.0.7:8000/"),
            ("HB_JOB_CPU", "500m"),
            ("HB_JOB_MEMORY", "1Gi"),
            ("HB_WORKSPACE_MAX_BYTES", "2G"),
            ("HB_ALLOWED_HOSTS", "git.internal"),
        ];
        let mut raw = RawConfig::default();
        raw.merge_env(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        });
        let config = raw.build().expect("valid settings");
        let Executor::Kubernetes(settings) = config.executor.clone() else {
            panic!("the Job executor is configured");
        };
        (config, settings)
    }

    pub(crate) fn record() -> RunRecord {
        RunRecord::queued(RunSpec {
            adapter: "codex".into(),
            prompt: "a prompt that must stay out of the Job".into(),
            repo: None,
            tools: Vec::new(),
            timeout_s: 900,
            idle_timeout_s: None,
            callback_url: None,
            contract_id: None,
            artifacts: Vec::new(),
            credential: None,
        })
    }

    #[test]
    fn a_run_maps_to_a_hardened_job_with_its_limits() {
        let (config, settings) = config();
        let record = record();
        let job = serde_json::to_value(job(&config, &settings, &record)).unwrap();
        let spec = &job["spec"];
        assert_eq!(job["metadata"]["name"], format!("hb-run-{}", record.id));
        assert_eq!(job["metadata"]["namespace"], "runs");
        assert_eq!(spec["activeDeadlineSeconds"], 900 + DEADLINE_GRACE_S);
        assert_eq!(spec["backoffLimit"], 0);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["serviceAccountName"], "headless-bridge-run");
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "registry.example.com/headless-bridge:1");
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        let limits = &container["resources"]["limits"];
        assert_eq!(
            (&limits["cpu"], &limits["memory"]),
            (&"500m".into(), &"1Gi".into())
        );
        assert_eq!(
            limits["ephemeral-storage"],
            ((2u64 << 30) + DATA_SLACK_BYTES).to_string()
        );

        let env = container["env"].as_array().unwrap();
        let var = |name: &str| env.iter().find(|v| v["name"] == name).cloned();
        assert_eq!(
            var("HB_WORKER_BRIDGE_URL").unwrap()["value"],
            "http://10.0.0.7:8000"
        );
        assert_eq!(var("HB_ALLOWED_HOSTS").unwrap()["value"], "git.internal");
        let token = var("HB_WORKER_TOKEN").unwrap();
        assert!(token.get("value").is_none());
        assert_eq!(token["valueFrom"]["secretKeyRef"]["key"], TOKEN_KEY);
        let text = job.to_string();
        assert!(
            !text.contains("a prompt that must stay"),
            "the prompt travels in the Secret"
        );
    }

    #[test]
    fn the_run_secret_is_owned_by_its_job_and_carries_the_run() {
        let record = record();
        let mut carried = Carried::default();
        carried.codex_login(b"{}", None);
        let secret = run_secret("runs", &record, "tok", carried, "uid-1");
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Job", "uid-1"));
        let data = secret.data.unwrap();
        let run: RunRecord = serde_json::from_slice(&data[RUN_KEY].0).unwrap();
        assert_eq!(run.id, record.id);
        assert_eq!(data[TOKEN_KEY].0, b"tok");
        assert!(data.contains_key("auth.json") && !data.contains_key("config.toml"));
    }
}
