//! A bridge under test, built like a user would configure it, served on a loopback port.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use headless_bridge::config::RawConfig;
use headless_bridge::server::Bridge;
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use testkit::model::{Behavior, FakeModel};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The API token every test bridge requires.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// The model API key in each test login: a canary that must never appear in any answer.
pub const CANARY_KEY: &str = "sk-canary-5f1e0c9a7b3d42e8a6c0";

/// The pinned Codex CLI installed by the project's script.
pub fn codex_bin() -> PathBuf {
    let bin =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/codex/node_modules/.bin/codex");
    assert!(
        bin.exists(),
        "the Codex CLI is not installed: run scripts/install-codex.sh (the README's test command does)"
    );
    bin
}

/// A CLI installed by `scripts/install-clis.sh` (`claude`, `gemini` or `vercel`).
pub fn agent_cli_bin(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools")
        .join(name)
        .join("bin")
        .join(name);
    assert!(
        bin.exists(),
        "{name} is not installed: run scripts/install-clis.sh (the README's test command does)"
    );
    bin
}

/// A data directory a CLI run as another user (a profile's `run_as`) can pass through.
pub fn traversable_data_dir() -> TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the data dir");
    dir
}

/// A secrets directory holding `files` (name, content), each owner-only, as a mounted
/// Secret with `defaultMode: 0600`.
pub fn secrets_dir(files: &[(&str, &str)]) -> TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a temp dir");
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write a secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod a secret");
    }
    dir
}

/// Settings for a bridge under test.
pub struct BridgeBuilder {
    vars: Vec<(&'static str, String)>,
    data_dir: Option<TempDir>,
    listener: Option<tokio::net::TcpListener>,
    metrics: bool,
}

impl BridgeBuilder {
    pub fn new() -> Self {
        let vars = vec![
            ("HB_API_TOKEN", TOKEN.to_owned()),
            ("HB_CODEX_BIN", codex_bin().display().to_string()),
            ("HB_ALLOWED_HOSTS", "127.0.0.1".to_owned()),
            ("HB_LOG_FORMAT", "text".to_owned()),
            ("HB_SHUTDOWN_GRACE", "1".to_owned()),
            (
                "HB_SHIM_BIN",
                env!("CARGO_BIN_EXE_headless-bridge-shim").to_owned(),
            ),
        ];
        Self {
            vars,
            data_dir: None,
            listener: None,
            metrics: false,
        }
    }

    /// Serves on `listener` (bound beforehand, when a setting must name the bridge's address).
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Also serves the Prometheus metrics, on a loopback port of their own.
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Sets an `HB_*` variable.
    pub fn var(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.vars.retain(|(n, _)| *n != name);
        self.vars.push((name, value.into()));
        self
    }

    /// Points the bridge at a login directory.
    pub fn codex_dir(self, dir: &Path) -> Self {
        self.var("HB_CODEX_DIR", dir.display().to_string())
    }

    /// Reuses a data directory (to test what survives a restart).
    pub fn data_dir(mut self, dir: TempDir) -> Self {
        self.data_dir = Some(dir);
        self
    }

    /// The bridge these settings make, opened on its data directory but not serving.
    pub async fn open(self) -> (Bridge, TempDir) {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| tempfile::tempdir().expect("a temp dir"));
        let mut vars = self.vars;
        vars.push(("HB_DATA_DIR", data_dir.path().display().to_string()));
        let mut raw = RawConfig::default();
        raw.merge_env(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        });
        let config = raw.build().expect("test configuration is valid");
        let bridge = Bridge::open(config).await.expect("the bridge opens");
        (bridge, data_dir)
    }

    pub async fn start(mut self) -> TestBridge {
        let (listener, metrics) = (self.listener.take(), self.metrics);
        let (bridge, data_dir) = self.open().await;
        let listener = match listener {
            Some(listener) => listener,
            None => tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind a loopback port"),
        };
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let metrics = if metrics {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
            Some(listener.expect("bind a loopback port for metrics"))
        } else {
            None
        };
        let metrics_url = metrics
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().expect("bound address")));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            bridge
                .serve_with_metrics(listener, metrics, async {
                    let _ = stopped.await;
                })
                .await
                .expect("the bridge serves");
        });
        TestBridge {
            url,
            metrics_url,
            client: reqwest::Client::new(),
            data_dir: Some(data_dir),
            stop: Some(stop),
            server: Some(server),
        }
    }
}

/// A running bridge.
pub struct TestBridge {
    pub url: String,
    /// The metrics listener's base URL, when the builder asked for one.
    pub metrics_url: Option<String>,
    pub client: reqwest::Client,
    data_dir: Option<TempDir>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestBridge {
    /// Sends a request with the test token and returns status and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the bridge answers");
        let status = response.status();
        let text = response.text().await.expect("a body");
        let json =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
        (status, json)
    }

    /// A GET with the test token, answered with status and raw bytes.
    pub async fn get_bytes(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the bridge answers");
        let status = response.status();
        (status, response.bytes().await.expect("a body").to_vec())
    }

    /// Sends the stop signal (as SIGTERM would) without waiting: the bridge drains its runs.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until the server has stopped, after [`TestBridge::begin_stop`].
    pub async fn stopped(&mut self) {
        if let Some(server) = self.server.take() {
            server.await.expect("the server task ends cleanly");
        }
    }

    /// The data directory, while the bridge runs.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.as_ref().expect("held until stop").path()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// Starts a run with `POST /v1/runs`, waits for it to finish, and returns its record.
    pub async fn run_to_end(&self, body: &Value) -> Value {
        let (status, run) = self.post("/v1/runs?wait=120", body).await;
        assert_eq!(status, 200, "the run did not finish in time: {run}");
        run
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// Stops serving, waits for runs in progress to be recorded, and hands back the data
    /// directory.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown().await;
        self.data_dir.take().expect("data dir is held until stop")
    }

    /// Stops this bridge and starts `next` on the same data directory.
    pub async fn restart(self, next: BridgeBuilder) -> TestBridge {
        let data_dir = self.stop().await;
        next.data_dir(data_dir).start().await
    }

    async fn shutdown(&mut self) {
        self.begin_stop();
        self.stopped().await;
    }
}

/// A fake model and a login directory pointing Codex at it.
pub struct Model {
    pub fake: FakeModel,
    pub codex_dir: TempDir,
}

impl Model {
    pub async fn start(behavior: Behavior) -> Self {
        let fake = FakeModel::start(behavior, CANARY_KEY).await;
        let codex_dir = tempfile::tempdir().expect("a temp dir");
        fake.write_codex_home(codex_dir.path())
            .expect("write the login");
        Self { fake, codex_dir }
    }

    /// A bridge using this model's login.
    pub async fn bridge(&self) -> TestBridge {
        BridgeBuilder::new()
            .codex_dir(self.codex_dir.path())
            .start()
            .await
    }
}

/// Asserts the canary key appears nowhere in `value`.
pub fn assert_no_canary(value: &Value) {
    let text = value.to_string();
    assert!(
        !text.contains(CANARY_KEY),
        "the model API key leaked: {text}"
    );
}

/// One Server-Sent Event as received.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

impl TestBridge {
    /// Reads an SSE stream to its end (the server ends it after the outcome event).
    pub async fn sse(&self, path: &str, last_event_id: Option<u64>) -> Vec<SseEvent> {
        let mut request = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.expect("the bridge answers");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        let text = response.text().await.expect("the stream ends");
        parse_sse(&text)
    }
}

/// Parses SSE frames, skipping comments (keep-alives).
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    text.split("\n\n")
        .filter_map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start().to_owned()))
            };
            Some(SseEvent {
                id: field("id:")?.parse().ok()?,
                event: field("event:")?,
                data: serde_json::from_str(&field("data:")?).ok()?,
            })
        })
        .collect()
}

/// The bridge as a real child process (`headless-bridge serve`), for tests that kill it.
pub struct BridgeProcess {
    pub child: tokio::process::Child,
    pub url: String,
    /// Every line the process wrote to stderr (its log) after the "serving" line.
    log: Arc<Mutex<Vec<String>>>,
    log_reader: JoinHandle<()>,
}

impl BridgeProcess {
    /// Starts the binary for `codex_dir` on a free loopback port and waits until it serves.
    pub async fn start(codex_dir: &Path, data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[("HB_CODEX_DIR", codex_dir)]).await
    }

    /// Starts the binary with these extra settings and waits for its "serving" log line.
    pub async fn start_with(data_dir: &Path, vars: &[(&str, &Path)]) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_headless-bridge"));
        command.arg("serve");
        Self::launch(command, data_dir, vars).await
    }

    /// Starts the binary as PID 1 of a new PID namespace, as in a container without an init.
    /// Needs root (CI and the development machines run as root).
    pub async fn start_in_pid_namespace(data_dir: &Path, vars: &[(&str, &Path)]) -> Self {
        let mut command = tokio::process::Command::new("unshare");
        command
            .args(["--pid", "--fork", "--mount", "--mount-proc", "--kill-child"])
            .arg(env!("CARGO_BIN_EXE_headless-bridge"))
            .arg("serve");
        Self::launch(command, data_dir, vars).await
    }

    /// The host pid of PID 1 in the namespace `unshare` made: its only child.
    pub fn namespace_init_pid(&self) -> u32 {
        let unshare = self.child.id().expect("unshare is running");
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .expect("read children");
        children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
            .expect("unshare has forked the bridge")
    }

    async fn launch(
        mut command: tokio::process::Command,
        data_dir: &Path,
        vars: &[(&str, &Path)],
    ) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        command
            .env("HB_LISTEN", "127.0.0.1:0")
            .env("HB_API_TOKEN", TOKEN)
            .env("HB_DATA_DIR", data_dir)
            .env("HB_CODEX_BIN", codex_bin())
            .env("HB_LOG_FORMAT", "json")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the bridge binary starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let address = loop {
            let line = lines
                .next_line()
                .await
                .expect("read the log")
                .expect("the bridge logs before it exits");
            log.lock().expect("not poisoned").push(line.clone());
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["message"] == "headless-bridge serving" {
                break entry["address"]
                    .as_str()
                    .expect("the address is logged")
                    .to_owned();
            }
        };
        // Keep draining the log so the bridge never blocks on a full pipe.
        let kept = Arc::clone(&log);
        let log_reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("not poisoned").push(line);
            }
        });
        Self {
            child,
            url: format!("http://{address}"),
            log,
            log_reader,
        }
    }

    /// Stops the process as Kubernetes would (SIGTERM), waits for it to exit, and returns
    /// every line it logged, up to its last.
    pub async fn stop_and_read_log(mut self) -> Vec<String> {
        let pid = self.child.id().expect("the bridge is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM the bridge");
        let status = self.child.wait().await.expect("the bridge exits");
        assert!(status.success(), "the bridge stopped cleanly: {status}");
        self.log_reader.await.expect("the log reader ends at EOF");
        std::mem::take(&mut *self.log.lock().expect("not poisoned"))
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.memory_kib("VmHWM")
    }

    /// The process's resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.memory_kib("VmRSS")
    }

    fn memory_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("the bridge is running");
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
        let line = status
            .lines()
            .find(|l| {
                l.strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with(':'))
            })
            .unwrap_or_else(|| panic!("{field} is reported"));
        line.split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("{field} is a number"))
    }

    /// A client view of this process.
    pub fn client(&self) -> TestBridge {
        TestBridge {
            url: self.url.clone(),
            metrics_url: None,
            client: reqwest::Client::new(),
            data_dir: None,
            stop: None,
            server: None,
        }
    }
}

/// Everything the bridge logs, from every test of this binary, at every level of its own
/// crates. One global subscriber: a thread-local one would miss events whose callsites
/// another test's thread cached as uninteresting.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

#[derive(Clone)]
struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    pub fn start() -> Self {
        static BUFFER: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
        let buffer = BUFFER.get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = SharedWriter(Arc::clone(&buffer));
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("headless_bridge=trace,testkit=trace")
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other test sets a global subscriber");
            buffer
        });
        Self {
            buffer: Arc::clone(buffer),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().expect("not poisoned")).into_owned()
    }
}

/// For tests whose CLI contacts a host it cannot be pointed away from: runs the test called
/// `name` (its path in this binary, such as `example_profiles::x`) again in a new network
/// namespace with only loopback up, where such a lookup fails at once instead of reaching
/// the internet, and returns false: the caller then returns. Inside that namespace it brings
/// loopback up and returns true: the caller goes on with the test. Needs root (CI and the
/// development machines run as root) and `ip` (scripts/install-deps.sh installs iproute2).
pub fn in_private_network(name: &str) -> bool {
    const INSIDE: &str = "HB_E2E_PRIVATE_NETWORK";
    if std::env::var_os(INSIDE).is_some() {
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip runs");
        assert!(up.success(), "bring loopback up in the namespace");
        return true;
    }
    let out = std::process::Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", name, "--nocapture"])
        .env(INSIDE, "1")
        .output()
        .expect("unshare runs (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in its own network namespace:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// A JWT with these claims and no signature: what the Codex CLI and the bridge read of a
/// ChatGPT token is its claims, never its signature.
pub fn unsigned_jwt(claims: &Value) -> String {
    use base64::Engine as _;
    let encode = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.signature",
        encode(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        encode(claims)
    )
}

/// A tar.gz archive holding one executable file at `path`.
pub fn tar_gz(path: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    builder.append_data(&mut header, path, data).unwrap();
    let mut gz = builder.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}
