//! The Job executor and credential write-back against a real Kubernetes API server on
//! loopback (`testkit::kube`: etcd, kube-apiserver and kube-controller-manager v1.20 built by
//! `scripts/install-kube-apiserver.sh`), with RBAC from the manifests in `k8s/`.
//!
//! There is no kubelet: the test plays its part. It watches for the Pod the Job controller
//! makes, runs the worker itself (the built binary) with the Pod's arguments, environment and
//! volumes (Secrets read through the API, emptyDirs as temporary directories), and then
//! patches the Pod's status to Succeeded or Failed, which the Job controller turns into the
//! Job's outcome. The Codex CLI in the worker is the real one, against the fake model.
//!
//! The clusters are heavy (about 470 MiB each), so these tests take turns.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use headless_bridge::config::KubeApi;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use testkit::agent_api::AgentBehavior;
use testkit::anthropic::FakeAnthropic;
use testkit::git::GitServer;
use testkit::kube::KubeCluster;
use testkit::model::{Behavior, FakeModel};

use crate::login::{TokenEndpoint, chatgpt_login, fresh_access_token};
use crate::support::{
    BridgeBuilder, BridgeProcess, Model, SseEvent, TestBridge, agent_cli_bin, secrets_dir,
};

const NS: &str = "headless-bridge";
/// The login Secret the base Role lets the bridge read and update.
const LOGIN_SECRET: &str = "headless-bridge-codex";

/// One cluster at a time: each takes about 470 MiB and two cores' worth of start-up.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A cluster with the job-executor overlay's namespace, ServiceAccounts and RBAC applied.
struct World {
    cluster: KubeCluster,
    admin: kube::Client,
}

impl World {
    async fn start() -> Self {
        assert!(
            testkit::kube::available(),
            "no kube-apiserver binaries in {}: run scripts/install-kube-apiserver.sh",
            testkit::kube::bin_dir().display()
        );
        let cluster = KubeCluster::start().await;
        let admin = headless_bridge::k8s::client(&KubeApi {
            url: Some(cluster.url.clone()),
            token_file: cluster.admin_token_file(),
            ca_file: cluster.ca_file.clone(),
        })
        .expect("an admin client");
        apply_overlay_rbac(&admin).await;
        Self { cluster, admin }
    }

    /// The settings that point the bridge at this cluster as its ServiceAccount.
    fn bridge_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HB_KUBE_API_URL", self.cluster.url.clone()),
            (
                "HB_KUBE_TOKEN_FILE",
                self.cluster
                    .service_account_token_file()
                    .display()
                    .to_string(),
            ),
            (
                "HB_KUBE_CA_FILE",
                self.cluster.ca_file.display().to_string(),
            ),
        ]
    }

    /// A client that authenticates as the bridge's ServiceAccount.
    fn bridge_client(&self) -> kube::Client {
        headless_bridge::k8s::client(&KubeApi {
            url: Some(self.cluster.url.clone()),
            token_file: self.cluster.service_account_token_file(),
            ca_file: self.cluster.ca_file.clone(),
        })
        .expect("a ServiceAccount client")
    }

    async fn create_secret(&self, name: &str, data: &[(&str, &str)]) {
        let string_data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name}, "stringData": string_data,
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.admin.clone(), NS)
            .create(&PostParams::default(), &secret)
            .await
            .expect("create a Secret");
    }

    async fn secret_value(&self, name: &str, key: &str) -> String {
        let secret = Api::<Secret>::namespaced(self.admin.clone(), NS)
            .get(name)
            .await
            .expect("read a Secret");
        let bytes = &secret.data.unwrap_or_default()[key];
        String::from_utf8(bytes.0.clone()).unwrap()
    }
}

/// The job-executor overlay, rendered by kubectl as CI validates it, applied in part: the
/// Namespace, the ServiceAccounts, and the Roles and RoleBindings the bridge works under.
/// (The rest uses APIs newer than this 1.20 server: PodDisruptionBudget policy/v1.)
async fn apply_overlay_rbac(admin: &kube::Client) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv_kubectl = root.join(".tools/k8s-venv/bin/kubectl");
    let kubectl = if venv_kubectl.exists() {
        venv_kubectl
    } else {
        PathBuf::from("kubectl")
    };
    let output = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(root.join("k8s/overlays/job-executor"))
        .output()
        .expect("kubectl runs (scripts/validate-k8s.sh installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8(output.stdout).unwrap()).unwrap();
    let create = PostParams::default();
    let mut applied = Vec::new();
    for kind in ["Namespace", "ServiceAccount", "Role", "RoleBinding"] {
        for doc in docs.iter().filter(|d| d["kind"] == kind) {
            let doc = doc.clone();
            match kind {
                "Namespace" => {
                    let ns: Namespace = serde_json::from_value(doc).unwrap();
                    Api::<Namespace>::all(admin.clone())
                        .create(&create, &ns)
                        .await
                        .map(|_| ())
                }
                "ServiceAccount" => {
                    let sa: ServiceAccount = serde_json::from_value(doc).unwrap();
                    Api::namespaced(admin.clone(), NS)
                        .create(&create, &sa)
                        .await
                        .map(|_| ())
                }
                "Role" => {
                    let role: Role = serde_json::from_value(doc).unwrap();
                    Api::namespaced(admin.clone(), NS)
                        .create(&create, &role)
                        .await
                        .map(|_| ())
                }
                _ => {
                    let binding: RoleBinding = serde_json::from_value(doc).unwrap();
                    Api::namespaced(admin.clone(), NS)
                        .create(&create, &binding)
                        .await
                        .map(|_| ())
                }
            }
            .unwrap_or_else(|e| panic!("apply a {kind}: {e}"));
            applied.push(kind);
        }
    }
    assert!(
        applied.iter().filter(|k| **k == "Role").count() >= 2,
        "the overlay has the executor's and the write-back's Roles: {applied:?}"
    );
}

/// Waits for the first Pod of run `id`.
async fn pod_of(admin: &kube::Client, id: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let config = watcher::Config::default().labels(&format!("headless-bridge/run-id={id}"));
    let stream = watcher(pods, config);
    futures::pin_mut!(stream);
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = stream.next().await {
            match event.expect("watch pods") {
                watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => return pod,
                _ => {}
            }
        }
        panic!("the pod watch ended");
    })
    .await;
    found.expect("the Job controller made the run's Pod")
}

/// Plays the kubelet for `pod`: runs its container (the worker binary) as the Pod's user with
/// its arguments, environment and volumes, then reports the Pod's phase by the exit code.
/// Returns the exit code.
/// Plays the kubelet for `pod` (the worker must report), then reads run `id` to its end:
/// its event stream and its record, which must say it succeeded.
async fn run_job_to_success(
    world: &World,
    pod: &Pod,
    bridge: &TestBridge,
    id: &str,
) -> (Vec<SseEvent>, Value) {
    assert_eq!(
        play_kubelet(&world.admin, pod).await,
        0,
        "the worker reported"
    );
    let events = bridge.sse(&format!("/v1/runs/{id}/events"), None).await;
    let (status, finished) = bridge.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(finished["outcome"], "succeeded", "{finished}");
    (events, finished)
}

async fn play_kubelet(admin: &kube::Client, pod: &Pod) -> i32 {
    let spec = pod.spec.clone().unwrap();
    let container = &spec.containers[0];
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let security = spec.security_context.clone().unwrap_or_default();
    let uid = security.run_as_user.expect("the pod names its user") as u32;
    let gid = security.run_as_group.expect("the pod names its group") as u32;
    let fs_group = security.fs_group.map(|g| g as u32);
    let root = tempfile::tempdir().unwrap();
    // As on a node: the pod's directories can be passed through, and an emptyDir is writable
    // by all (a profile's CLI may run as another user).
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    // Volumes: Secrets (waiting for them, as the kubelet does) and emptyDirs.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let volume = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        let dir = root.path().join(&mount.name);
        std::fs::create_dir_all(&dir).unwrap();
        if volume.empty_dir.is_some() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap();
            let secret = wait_for_secret(&secrets, &name).await;
            // The kubelet's Secret files: root's, of the pod's fsGroup, in the default mode.
            let mode = source.default_mode.unwrap_or(0o644) as u32;
            for (key, value) in secret.data.unwrap_or_default() {
                let path = dir.join(key);
                std::fs::write(&path, value.0).unwrap();
                std::os::unix::fs::chown(&path, Some(0), fs_group).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        mounts.push((mount.mount_path.clone(), dir));
    }
    // A path under a mount, moved to the mount's local directory (the longest mount wins).
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let local = |text: &str| {
        mounts
            .iter()
            .find_map(|(path, dir)| {
                let rest = text.strip_prefix(path.as_str())?;
                (rest.is_empty() || rest.starts_with('/'))
                    .then(|| format!("{}{rest}", dir.display()))
            })
            .unwrap_or_else(|| text.to_owned())
    };

    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_headless-bridge"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap());
    for arg in container.args.clone().unwrap_or_default() {
        command.arg(local(&arg));
    }
    for var in container.env.clone().unwrap_or_default() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => local(value),
            (None, Some(from)) => {
                let key = from
                    .secret_key_ref
                    .as_ref()
                    .expect("only secretKeyRef is used");
                let secret = wait_for_secret(&secrets, &key.name).await;
                String::from_utf8(secret.data.unwrap()[&key.key].0.clone()).unwrap()
            }
            (None, None) => String::new(),
        };
        command.env(&var.name, value);
    }
    let output = command
        .uid(uid)
        .gid(gid)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the worker runs");
    let code = output.status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!("worker log:\n{}", String::from_utf8_lossy(&output.stderr));
    }

    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let name = pod.metadata.name.clone().unwrap();
    pods.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .expect("patch the Pod's phase");
    code
}

async fn wait_for_secret(secrets: &Api<Secret>, name: &str) -> Secret {
    let found =
        kube::runtime::wait::await_condition(secrets.clone(), name, |s: Option<&Secret>| {
            s.is_some()
        });
    tokio::time::timeout(Duration::from_secs(30), found)
        .await
        .expect("the run's Secret appears")
        .expect("watch Secrets")
        .expect("the Secret exists")
}

/// A bridge with the Job executor against `world`, using `model`'s login.
async fn job_bridge(world: &World, model: &Model) -> TestBridge {
    job_builder(world)
        .await
        .codex_dir(model.codex_dir.path())
        .start()
        .await
}

/// The settings of a bridge with the Job executor against `world`, on a listener bound now.
async fn job_builder(world: &World) -> BridgeBuilder {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut builder = BridgeBuilder::new()
        .listener(listener)
        .var("HB_EXECUTOR", "kubernetes")
        .var("HB_JOB_NAMESPACE", NS)
        .var("HB_JOB_IMAGE", "headless-bridge:test")
        .var("HB_JOB_BRIDGE_URL", url)
        .var("HB_WORKSPACE_MIN_FREE_BYTES", "1M");
    for (name, value) in world.bridge_vars() {
        builder = builder.var(name, value);
    }
    builder
}

fn uuid_like() -> &'static str {
    "01900000-0000-7000-8000-000000000000"
}

/// The shape of a run's event log: kinds, with the state of state events and the type of
/// CLI events, leaving out notices (the Job executor adds one) and stderr.
fn event_shape(events: &[crate::support::SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| !matches!(e.event.as_str(), "notice" | "stderr"))
        .map(|e| {
            let detail = e.data["state"]
                .as_str()
                .or(e.data["type"].as_str())
                .unwrap_or("");
            format!("{}:{detail}", e.event)
        })
        .collect()
}

#[tokio::test]
async fn a_run_in_a_job_reports_its_output_outcome_and_events_as_a_local_run_does() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let model = Model::start(Behavior::Reply("answered from a Job".into())).await;
    let bridge = job_bridge(&world, &model).await;

    let body = json!({"adapter": "codex", "prompt": "say something"});
    let (status, run) = bridge.post("/v1/runs", &body).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();

    let pod = pod_of(&world.admin, &id).await;
    let job_name = format!("hb-run-{id}");
    let jobs: Api<Job> = Api::namespaced(world.admin.clone(), NS);
    let job = jobs.get(&job_name).await.expect("the run's Job exists");
    let job_spec = job.spec.clone().unwrap();
    assert_eq!(job_spec.backoff_limit, Some(0));
    assert!(job_spec.active_deadline_seconds.unwrap() >= 600);
    let pod_spec = pod.spec.clone().unwrap();
    assert_eq!(pod_spec.automount_service_account_token, Some(false));
    let env = pod_spec.containers[0].env.clone().unwrap();
    let token_var = env.iter().find(|v| v.name == "HB_WORKER_TOKEN").unwrap();
    assert!(
        token_var.value.is_none(),
        "the report token travels in a Secret only"
    );

    // The report route takes only the run's own token, and only for a run in progress.
    let report = format!("{}/internal/v1/runs/{id}/report", bridge.url);
    let refused = bridge
        .client
        .post(&report)
        .bearer_auth(crate::support::TOKEN)
        .json(&json!({"calls": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "an API token is not a run's token");
    let unknown = format!("{}/internal/v1/runs/{}/report", bridge.url, uuid_like());
    let refused = bridge
        .client
        .post(unknown)
        .bearer_auth("x")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 404);

    // The event stream ends with the outcome, as the run ends.
    let (events, finished) = run_job_to_success(&world, &pod, &bridge, &id).await;
    assert_eq!(finished["output"], "answered from a Job");
    assert_eq!(finished["exit_code"], 0);
    assert!(
        events
            .iter()
            .any(|e| e.event == "notice" && e.data.to_string().contains(&job_name)),
        "the log says where the run ran"
    );

    // The same request run locally leaves the same event log.
    let local = model.bridge().await;
    let local_run = local.run_to_end(&body).await;
    assert_eq!(local_run["outcome"], "succeeded");
    let local_id = local_run["id"].as_str().unwrap();
    let local_events = local
        .sse(&format!("/v1/runs/{local_id}/events"), None)
        .await;
    assert_eq!(event_shape(&events), event_shape(&local_events));

    // The finished Job is deleted, and its Secret with it (the garbage collector).
    let job_name = format!("hb-run-{id}");
    let gone = kube::runtime::wait::await_condition(jobs, &job_name, |j: Option<&Job>| j.is_none());
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .expect("the finished Job is deleted")
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(world.admin.clone(), NS);
    let gone =
        kube::runtime::wait::await_condition(secrets, &job_name, |s: Option<&Secret>| s.is_none());
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .expect("the run's Secret goes with its Job")
        .unwrap();
}

#[tokio::test]
async fn cancelling_a_run_deletes_its_job_in_the_foreground() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let model = Model::start(Behavior::Reply("never asked".into())).await;
    let bridge = job_bridge(&world, &model).await;

    let (_, run) = bridge
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "wait"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let pod = pod_of(&world.admin, &id).await;

    // Follow the Job from before the cancel, to see how it is deleted.
    let jobs: Api<Job> = Api::namespaced(world.admin.clone(), NS);
    let config = watcher::Config::default().labels(&format!("headless-bridge/run-id={id}"));
    let mut stream = Box::pin(watcher(jobs, config));
    let watched = tokio::spawn(async move {
        let mut foreground = false;
        while let Some(event) = stream.next().await {
            match event.expect("watch Jobs") {
                watcher::Event::Apply(job) => {
                    let finalizers = job.metadata.finalizers.unwrap_or_default();
                    foreground |= job.metadata.deletion_timestamp.is_some()
                        && finalizers.iter().any(|f| f == "foregroundDeletion");
                }
                watcher::Event::Delete(_) => return foreground,
                _ => {}
            }
        }
        panic!("the Job watch ended");
    });

    let (status, cancelled) = bridge
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["outcome"], "cancelled");
    assert_eq!(cancelled["reason"], "cancelled");
    let foreground = tokio::time::timeout(Duration::from_secs(60), watched)
        .await
        .expect("the Job is deleted")
        .unwrap();
    assert!(
        foreground,
        "the Job waited for its Pod (foreground propagation)"
    );
    let pods: Api<Pod> = Api::namespaced(world.admin.clone(), NS);
    assert!(
        pods.get_opt(&pod.metadata.name.unwrap())
            .await
            .unwrap()
            .is_none(),
        "the Pod went before the Job"
    );
}

#[tokio::test]
async fn the_bridge_service_account_reads_no_secret_but_its_login() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    world
        .create_secret(LOGIN_SECRET, &[("auth.json", "{}")])
        .await;
    world
        .create_secret("headless-bridge-api", &[("token", "not for the bridge")])
        .await;

    let secrets: Api<Secret> = Api::namespaced(world.bridge_client(), NS);
    secrets
        .get(LOGIN_SECRET)
        .await
        .expect("its own login Secret");
    for refused in [
        secrets.get("headless-bridge-api").await.map(|_| ()),
        secrets.list(&Default::default()).await.map(|_| ()),
    ] {
        match refused {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!("the bridge read another Secret: {other:?}"),
        }
    }
    let other_ns: Api<Secret> = Api::namespaced(world.bridge_client(), "default");
    assert!(matches!(
        other_ns.get("anything").await,
        Err(kube::Error::Api(status)) if status.code == 403
    ));
}

/// A ChatGPT login whose access token has expired, against `model` and a token endpoint.
fn chatgpt_codex_dir(model: &FakeModel) -> (tempfile::TempDir, String) {
    let codex_dir = tempfile::tempdir().unwrap();
    let origin = model.base_url().trim_end_matches("/v1").to_owned();
    let base = model
        .codex_config_toml()
        .replace("[features]\n", "[features]\napps = false\n");
    let config = format!("chatgpt_base_url = \"{origin}/backend-api\"\n{base}");
    std::fs::write(codex_dir.path().join("config.toml"), &config).unwrap();
    let login = chatgpt_login("rt_initial");
    std::fs::write(codex_dir.path().join("auth.json"), &login).unwrap();
    (codex_dir, login)
}

async fn refreshing_bridge(
    world: &World,
    secret: &str,
) -> (
    FakeModel,
    TokenEndpoint,
    BridgeProcess,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    refreshing_bridge_with(world, secret, Vec::new()).await
}

async fn refreshing_bridge_with(
    world: &World,
    secret: &str,
    extra: Vec<(&'static str, String)>,
) -> (
    FakeModel,
    TokenEndpoint,
    BridgeProcess,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    let model = FakeModel::start(Behavior::Reply("refreshed".into()), &fresh_access_token()).await;
    let tokens = TokenEndpoint::start("rt_initial").await;
    let (codex_dir, login) = chatgpt_codex_dir(&model);
    world
        .create_secret(LOGIN_SECRET, &[("auth.json", &login)])
        .await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut vars: Vec<(&str, String)> = world.bridge_vars();
    vars.push(("HB_CODEX_DIR", codex_dir.path().display().to_string()));
    vars.push(("HB_CREDENTIAL_SECRET", format!("{NS}/{secret}")));
    vars.push(("CODEX_REFRESH_TOKEN_URL_OVERRIDE", tokens.url.clone()));
    vars.extend(extra);
    let vars: Vec<(&str, &Path)> = vars
        .iter()
        .map(|(k, v)| (*k, Path::new(v.as_str())))
        .collect();
    let bridge = BridgeProcess::start_with(data_dir.path(), &vars).await;
    (model, tokens, bridge, codex_dir, data_dir)
}

#[tokio::test]
async fn a_refreshed_login_is_written_back_to_its_secret() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let (_model, tokens, bridge, _codex, _data) = refreshing_bridge(&world, LOGIN_SECRET).await;
    let client = bridge.client();

    let run = client
        .run_to_end(&json!({"adapter": "codex", "prompt": "refresh please"}))
        .await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(tokens.seen().0, 1, "the CLI refreshed once");
    let written: Value =
        serde_json::from_str(&world.secret_value(LOGIN_SECRET, "auth.json").await).unwrap();
    assert_eq!(written["tokens"]["refresh_token"], "rt_rotated_1");

    let (_, health) = client.get("/health?deep=1").await;
    let write_back = &health["adapters"]["codex"]["credentials"]["write_back"];
    assert_eq!(write_back["ok"], true, "{health}");
    assert_eq!(write_back["secret"], format!("{NS}/{LOGIN_SECRET}"));
}

#[tokio::test]
async fn a_forbidden_write_back_shows_in_deep_health() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    world
        .create_secret("someone-elses-login", &[("auth.json", "{}")])
        .await;
    let (_model, _tokens, bridge, _codex, _data) =
        refreshing_bridge(&world, "someone-elses-login").await;
    let client = bridge.client();

    let run = client
        .run_to_end(&json!({"adapter": "codex", "prompt": "refresh please"}))
        .await;
    assert_eq!(
        run["outcome"], "succeeded",
        "the working copy kept the login: {run}"
    );
    assert_eq!(
        world.secret_value("someone-elses-login", "auth.json").await,
        "{}"
    );

    let (_, health) = client.get("/health?deep=1").await;
    let credentials = &health["adapters"]["codex"]["credentials"];
    let write_back = &credentials["write_back"];
    assert_eq!(write_back["ok"], false, "{health}");
    let error = write_back["last_attempt"]["error"].as_str().unwrap();
    assert!(error.contains("403"), "{error}");
    assert!(
        credentials["warning"]
            .as_str()
            .unwrap()
            .contains("written back")
    );
    assert!(
        !health.to_string().contains("rt_rotated"),
        "no token in health"
    );
}

/// The Job a run becomes, and its Secret, pass the Kubernetes schemas CI checks the manifests
/// against (kubernetes-validate, strict) and the Job the hardening policy of
/// `scripts/check-k8s-policy.py`. Needs no cluster.
#[test]
fn run_jobs_pass_the_schemas_and_the_hardening_policy() {
    use headless_bridge::config::{Executor, RawConfig};
    let vars = [
        ("HB_EXECUTOR", "kubernetes"),
        ("HB_JOB_NAMESPACE", NS),
        ("HB_JOB_IMAGE", "headless-bridge:0.1.0"),
        ("HB_JOB_BRIDGE_URL", "http://10.0.0.7:8000"),
    ];
    let mut raw = RawConfig::default();
    raw.merge_env(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    });
    let config = raw.build().unwrap();
    let Executor::Kubernetes(settings) = config.executor.clone() else {
        panic!("the Job executor is configured")
    };
    let record = headless_bridge::run::RunRecord::queued(
        serde_json::from_value(json!({"adapter": "codex", "prompt": "p", "timeout_s": 600}))
            .unwrap(),
    );
    let job = headless_bridge::k8s::job::job(&config, &settings, &record);
    let mut carried = headless_bridge::k8s::carry::Carried::default();
    carried.codex_login(b"{}", None);
    let secret = headless_bridge::k8s::job::run_secret(NS, &record, "token", carried, "uid");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join(".tools/k8s-venv/bin");
    assert!(
        venv.join("kubernetes-validate").exists(),
        "run scripts/validate-k8s.sh once: it installs kubernetes-validate"
    );
    let dir = tempfile::tempdir().unwrap();
    let job_file = dir.path().join("job.yaml");
    // JSON is YAML: the files hold the objects exactly as the executor sends them.
    std::fs::write(&job_file, serde_json::to_string(&job).unwrap()).unwrap();
    let both = dir.path().join("both.yaml");
    let text = format!(
        "{}\n---\n{}\n",
        serde_json::to_string(&job).unwrap(),
        serde_json::to_string(&secret).unwrap()
    );
    std::fs::write(&both, text).unwrap();

    for version in ["1.31.0", "1.37.0"] {
        let output = std::process::Command::new(venv.join("kubernetes-validate"))
            .args(["--quiet", "-k", version, "--strict"])
            .arg(&both)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "kubernetes-validate {version}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = std::process::Command::new(venv.join("python"))
        .arg(root.join("scripts/check-k8s-policy.py"))
        .arg(&job_file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check-k8s-policy: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_login_refreshed_in_a_job_becomes_the_working_copy_and_goes_back_to_its_secret() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = vec![
        ("HB_LISTEN", format!("127.0.0.1:{port}")),
        ("HB_EXECUTOR", "kubernetes".to_owned()),
        ("HB_JOB_NAMESPACE", NS.to_owned()),
        ("HB_JOB_IMAGE", "headless-bridge:test".to_owned()),
        ("HB_JOB_BRIDGE_URL", format!("http://127.0.0.1:{port}")),
        ("HB_WORKSPACE_MIN_FREE_BYTES", "1M".to_owned()),
        (
            "HB_SHIM_BIN",
            env!("CARGO_BIN_EXE_headless-bridge-shim").to_owned(),
        ),
    ];
    let (_model, tokens, bridge, _codex, _data) =
        refreshing_bridge_with(&world, LOGIN_SECRET, extra).await;
    let client = bridge.client();

    for round in 1..=2 {
        let (status, run) = client
            .post(
                "/v1/runs",
                &json!({"adapter": "codex", "prompt": "refresh please"}),
            )
            .await;
        assert_eq!(status, 202, "{run}");
        let id = run["id"].as_str().unwrap().to_owned();
        let pod = pod_of(&world.admin, &id).await;
        assert_eq!(play_kubelet(&world.admin, &pod).await, 0);
        client.sse(&format!("/v1/runs/{id}/events"), None).await;
        let (_, finished) = client.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(
            finished["outcome"], "succeeded",
            "round {round}: {finished}"
        );
        assert_eq!(
            tokens.seen(),
            (1, 0),
            "round {round}: one refresh in all, and the second Job got the rotated token"
        );
    }
    let written: Value =
        serde_json::from_str(&world.secret_value(LOGIN_SECRET, "auth.json").await).unwrap();
    assert_eq!(written["tokens"]["refresh_token"], "rt_rotated_1");
}

#[tokio::test]
async fn a_pod_that_fails_without_reporting_fails_the_run_with_executor_error() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let model = Model::start(Behavior::Reply("never asked".into())).await;
    let bridge = job_bridge(&world, &model).await;

    let (_, run) = bridge
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "crash"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let pod = pod_of(&world.admin, &id).await;
    // The kubelet reports the container dead before the worker could say anything.
    Api::<Pod>::namespaced(world.admin.clone(), NS)
        .patch_status(
            &pod.metadata.name.unwrap(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();

    bridge.sse(&format!("/v1/runs/{id}/events"), None).await;
    let (_, finished) = bridge.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(finished["outcome"], "failed", "{finished}");
    assert_eq!(finished["reason"], "executor_error");
    assert!(
        finished["message"]
            .as_str()
            .unwrap()
            .contains("without its worker reporting"),
        "{finished}"
    );
}

/// Settings for a bridge process with the Job executor on a port picked now.
fn job_process_vars(world: &World, model: &Model) -> Vec<(&'static str, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut vars = world.bridge_vars();
    vars.extend([
        ("HB_LISTEN", format!("127.0.0.1:{port}")),
        ("HB_CODEX_DIR", model.codex_dir.path().display().to_string()),
        ("HB_EXECUTOR", "kubernetes".to_owned()),
        ("HB_JOB_NAMESPACE", NS.to_owned()),
        ("HB_JOB_IMAGE", "headless-bridge:test".to_owned()),
        ("HB_JOB_BRIDGE_URL", format!("http://127.0.0.1:{port}")),
    ]);
    vars
}

#[tokio::test]
async fn a_bridge_killed_mid_run_deletes_the_runs_job_when_it_starts_again() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let model = Model::start(Behavior::Reply("never asked".into())).await;
    let data_dir = tempfile::tempdir().unwrap();
    let start = |vars: Vec<(&'static str, String)>| {
        let data = data_dir.path().to_owned();
        async move {
            let vars: Vec<(&str, &Path)> = vars
                .iter()
                .map(|(k, v)| (*k, Path::new(v.as_str())))
                .collect();
            BridgeProcess::start_with(&data, &vars).await
        }
    };
    let mut bridge = start(job_process_vars(&world, &model)).await;
    let (_, run) = bridge
        .client()
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "wait"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    pod_of(&world.admin, &id).await;

    bridge.child.start_kill().unwrap();
    bridge.child.wait().await.unwrap();
    let restarted = start(job_process_vars(&world, &model)).await;

    let jobs: Api<Job> = Api::namespaced(world.admin.clone(), NS);
    let job_name = format!("hb-run-{id}");
    let gone = kube::runtime::wait::await_condition(jobs, &job_name, |j: Option<&Job>| j.is_none());
    tokio::time::timeout(Duration::from_secs(60), gone)
        .await
        .expect("the dead run's Job is deleted")
        .unwrap();
    let (_, record) = restarted.client().get(&format!("/v1/runs/{id}")).await;
    assert_eq!(record["outcome"], "interrupted", "{record}");
}

/// The key the fake Anthropic API takes: a canary that may travel in the run's Secret only.
const CLAUDE_KEY: &str = "sk-ant-canary-job-5e2a9c0d7b1f3e48";
/// A file of the secrets directory that the profile does not name: it must not travel at all.
const UNNAMED_SECRET: &str = "unnamed-secret-canary-0c7d94e1";

/// Whether `bytes` contain `needle`.
fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// Asserts that `value` appears nowhere in the cluster's view of run `id` but its own Secret
/// (there only when `in_run_secret`): not in the Job, not in the Pod (its env literals and
/// argv), not in any other Secret.
async fn assert_only_in_run_secret(world: &World, id: &str, value: &str, in_run_secret: bool) {
    let name = format!("hb-run-{id}");
    let job = Api::<Job>::namespaced(world.admin.clone(), NS)
        .get(&name)
        .await
        .expect("the run's Job");
    let pods = Api::<Pod>::namespaced(world.admin.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    let specs = format!(
        "{}{}",
        serde_json::to_string(&job).unwrap(),
        serde_json::to_string(&pods).unwrap()
    );
    assert!(!specs.contains(value), "a secret in a Job or Pod: {specs}");
    let secrets = Api::<Secret>::namespaced(world.admin.clone(), NS)
        .list(&Default::default())
        .await
        .unwrap();
    for secret in secrets {
        let held = secret
            .data
            .unwrap_or_default()
            .values()
            .any(|v| holds(&v.0, value));
        let secret_name = secret.metadata.name.unwrap_or_default();
        assert_eq!(
            held,
            in_run_secret && secret_name == name,
            "Secret {secret_name}: the value belongs in the run's Secret only, if anywhere"
        );
    }
}

#[tokio::test]
async fn a_claude_run_in_a_job_gets_only_its_login_and_only_through_the_runs_secret() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let fake = FakeAnthropic::start(
        AgentBehavior::Reply("answered by Claude in a Job".into()),
        CLAUDE_KEY,
    )
    .await;
    let secrets = secrets_dir(&[("api_key", CLAUDE_KEY), ("unrelated", UNNAMED_SECRET)]);
    let bridge = job_builder(&world)
        .await
        .var(
            "HB_CLAUDE_BIN",
            agent_cli_bin("claude").display().to_string(),
        )
        .var("HB_CLAUDE_DIR", secrets.path().display().to_string())
        .var("HB_CLAUDE_BASE_URL", fake.base_url())
        .start()
        .await;

    let body = json!({"adapter": "claude", "prompt": "say hello"});
    let (status, run) = bridge.post("/v1/runs", &body).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let pod = pod_of(&world.admin, &id).await;
    let secrets_api: Api<Secret> = Api::namespaced(world.admin.clone(), NS);
    wait_for_secret(&secrets_api, &format!("hb-run-{id}")).await;
    assert_only_in_run_secret(&world, &id, CLAUDE_KEY, true).await;
    assert_only_in_run_secret(&world, &id, UNNAMED_SECRET, false).await;

    let (_, finished) = run_job_to_success(&world, &pod, &bridge, &id).await;
    assert_eq!(finished["output"], "answered by Claude in a Job");
    assert!(!finished.to_string().contains(CLAUDE_KEY), "{finished}");
    let calls = fake.message_calls();
    assert!(!calls.is_empty(), "the real CLI called the API");
    assert_eq!(calls[0].header("x-api-key"), Some(CLAUDE_KEY));
}

/// The token the private repository's server takes: it may travel in the run's Secret only.
const GIT_TOKEN: &str = "git-token-canary-job-81c4f2d07e";
/// The operator's token for another host: no run of this repository may carry it.
const OTHER_HOST_TOKEN: &str = "git-token-canary-other-host-3a9b";
const README: &str = "private-readme-in-a-job-6d1e\n";

#[tokio::test]
async fn a_job_clones_a_private_repo_with_its_hosts_token_and_its_artifact_is_served() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let git = GitServer::start_with_password(GIT_TOKEN).await;
    let repo_url = git.create_repo("private", &[("README.md", README)]);
    let creds = crate::workspaces::credentials_dir(&repo_url, GIT_TOKEN);
    std::fs::write(creds.path().join("other.example"), OTHER_HOST_TOKEN).unwrap();
    let model = Model::start(Behavior::RunThenReply {
        command: "cp README.md summary.txt && head -c 4096 /dev/zero > big.bin && cat README.md"
            .into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = job_builder(&world)
        .await
        .codex_dir(model.codex_dir.path())
        .var("HB_GIT_CREDENTIALS_DIR", creds.path().display().to_string())
        .var("HB_ARTIFACT_MAX_BYTES", "1K")
        .start()
        .await;

    let request = json!({"adapter": "codex", "prompt": "summarize the repository",
        "repo": {"url": repo_url}, "artifacts": ["summary.txt", "big.bin"]});
    let (status, run) = bridge.post("/v1/runs", &request).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let pod = pod_of(&world.admin, &id).await;
    let secrets_api: Api<Secret> = Api::namespaced(world.admin.clone(), NS);
    let run_secret = wait_for_secret(&secrets_api, &format!("hb-run-{id}")).await;
    assert_only_in_run_secret(&world, &id, GIT_TOKEN, true).await;
    assert_only_in_run_secret(&world, &id, OTHER_HOST_TOKEN, false).await;

    // The artifact route takes the run's own token, declared paths, and no more than the cap.
    let run_token = String::from_utf8(run_secret.data.unwrap()["token"].0.clone()).unwrap();
    let put = |path: &str, token: &str, body: Vec<u8>| {
        bridge
            .client
            .put(format!(
                "{}/internal/v1/runs/{id}/artifacts/{path}",
                bridge.url
            ))
            .bearer_auth(token)
            .body(body)
            .send()
    };
    let refused = put("summary.txt", crate::support::TOKEN, b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "an API token is not a run's token");
    let refused = put("other.txt", &run_token, b"x".to_vec()).await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "artifact_not_declared", "{body}");
    let refused = put("summary.txt", &run_token, vec![0; 2048]).await.unwrap();
    assert_eq!(refused.status(), 413);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "artifact_too_large", "{body}");

    let (_, finished) = run_job_to_success(&world, &pod, &bridge, &id).await;
    assert!(
        finished["output"]
            .as_str()
            .unwrap()
            .contains("private-readme-in-a-job"),
        "{finished}"
    );
    assert!(git.refused() >= 1, "the server asked for credentials first");
    assert!(!finished.to_string().contains(GIT_TOKEN), "{finished}");

    // The artifact under the cap is served by the bridge; the one over it is explained.
    let artifacts = finished["artifacts"].as_array().unwrap();
    assert_eq!(artifacts.len(), 1, "{finished}");
    assert_eq!(artifacts[0]["path"], "summary.txt");
    assert_eq!(artifacts[0]["size"], README.len());
    let logs = finished["logs"].as_str().unwrap();
    assert!(logs.contains("artifact `big.bin` not kept"), "{logs}");
    let (status, bytes) = bridge
        .get_bytes(&format!("/v1/runs/{id}/artifacts/summary.txt"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(bytes, README.as_bytes());
}

/// A profile secret with no token shape: only knowing its value can mask it.
const PROFILE_SECRET: &str = "profile-secret-canary-job-4f0b7e2d";

/// A CLI that reads its run's report token where its pod has it (the run's Secret, mounted
/// where its worker's command line says; the CLI runs as the worker's user), reports straight
/// to the bridge (its address is the prompt: a Service's address is no secret) with its
/// secret in a notice, then prints the secret as well.
const FORGER: &str = r#"
import json, os, sys, urllib.request
pid, secret_dir = os.getppid(), None
while pid > 1 and secret_dir is None:
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        argv = f.read().decode().split("\0")
    if "worker" in argv and "--run" in argv:
        secret_dir = os.path.dirname(argv[argv.index("--run") + 1])
    with open("/proc/%d/stat" % pid) as f:
        pid = int(f.read().rsplit(")", 1)[1].split()[1])
with open(os.path.join(secret_dir, "token")) as f:
    token = f.read().strip()
secret = os.environ["API_KEY"]
run = os.environ["HEADLESS_BRIDGE_RUN"]
url = sys.argv[1].rstrip("/") + "/internal/v1/runs/%s/report" % run
report = dict(calls=[dict(call="notice", message="forged: " + secret)])
headers = [("Authorization", "Bearer " + token), ("Content-Type", "application/json")]
request = urllib.request.Request(url, data=json.dumps(report).encode(), headers=dict(headers))
print("forged report:", urllib.request.urlopen(request).status)
print("printed: " + secret)
"#;

/// The status the bridge answers `head` (method and path) with a token not the run's and a
/// large body announced but not sent: it must not wait for the body to refuse.
/// Regression: the internal routes read a body of up to 64 MiB before they looked at the token.
async fn status_before_body(bridge: &TestBridge, head: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = bridge.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{head} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer not-the-runs\r\n\
         Content-Length: 60000000\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = [0_u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
        .await
        .expect("an answer before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer[9..12].parse().unwrap_or_else(|_| panic!("{answer}"))
}

/// Regression: the bridge stored what a Job's worker reported without redacting it, so a CLI
/// that reported with its worker's token put its own secret in the run's events.
#[tokio::test]
async fn a_report_sent_past_the_worker_is_redacted_by_the_bridge() {
    let _turn = TURN.lock().await;
    let world = World::start().await;
    let profiles = tempfile::tempdir().unwrap();
    let secrets = secrets_dir(&[("api_key", PROFILE_SECRET)]);
    let profile = format!(
        "description = \"forger\"\nexecutable = \"/usr/bin/python3\"\n\
         args = [\"-c\", {FORGER:?}, \"{{prompt}}\"]\n\
         secrets_dir = {:?}\n[secret_env]\nAPI_KEY = {{ file = \"api_key\" }}\n",
        secrets.path().display().to_string()
    );
    std::fs::write(profiles.path().join("forger.toml"), profile).unwrap();
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = job_builder(&world)
        .await
        .codex_dir(model.codex_dir.path())
        .var("HB_ADAPTERS_DIR", profiles.path().display().to_string())
        .start()
        .await;

    let body = json!({"adapter": "forger", "prompt": bridge.url, "artifacts": ["leak.txt"]});
    let (status, run) = bridge.post("/v1/runs", &body).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let pod = pod_of(&world.admin, &id).await;
    for (method, route) in [("POST", "report"), ("PUT", "artifacts/leak.txt")] {
        let head = format!("{method} /internal/v1/runs/{id}/{route}");
        assert_eq!(
            status_before_body(&bridge, &head).await,
            401,
            "{head} with another token"
        );
    }
    let (events, finished) = run_job_to_success(&world, &pod, &bridge, &id).await;

    let output = finished["output"].as_str().unwrap();
    assert!(output.contains("forged report: 204"), "{finished}");
    let events: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
    assert!(
        events.iter().any(|e| e.contains("forged: ")),
        "the forged notice arrived: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e.contains(PROFILE_SECRET)),
        "a secret in the run's events: {events:?}"
    );
    assert!(!finished.to_string().contains(PROFILE_SECRET), "{finished}");
}
