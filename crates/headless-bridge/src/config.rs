//! The bridge's configuration: where each setting comes from and what makes it valid.
//!
//! Settings are read in two stages. First every source is collected as raw text per setting:
//! the TOML file given with `--config`, then `HB_*` environment variables, then command-line
//! flags, each overriding the one before. Then the merged text is parsed and checked as a whole,
//! and any error names the setting and the source that gave it, so an operator knows what to
//! fix. Secrets (API tokens) are accepted from the environment or a file, never from a flag,
//! because a flag shows up in `ps`.

use crate::adapter::profile::RunAs;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the original service and its container image expect the API.
const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// The original service's run timeout.
const DEFAULT_RUN_TIMEOUT_S: u64 = 600;
/// The longest run a request may ask for unless the operator raises it.
const DEFAULT_MAX_RUN_TIMEOUT_S: u64 = 3600;
/// A tool download, every mirror and retry included.
const DEFAULT_FETCH_TIMEOUT_S: u64 = 300;
/// A CLI silent this long is most likely waiting for something that will not come.
const DEFAULT_IDLE_TIMEOUT_S: u64 = 300;
/// A day's notice that a login will die is enough for a person to act on.
const DEFAULT_CREDENTIAL_WARN_WINDOW_S: u64 = 24 * 3600;
/// Runs mostly wait on a model provider, so a few at once fit even a small pod.
const DEFAULT_MAX_CONCURRENT: usize = 8;
const DEFAULT_MAX_QUEUED: usize = 64;
/// Below Kubernetes' default terminationGracePeriodSeconds (30), leaving time to record.
const DEFAULT_SHUTDOWN_GRACE_S: u64 = 25;
const DEFAULT_RETENTION_S: u64 = 7 * 86_400;
const DEFAULT_RETENTION_COUNT: usize = 10_000;
const DEFAULT_MAX_LOG_BYTES: u64 = 64 << 20;
/// API tokens shorter than this are guessable, so start-up refuses them.
const MIN_TOKEN_LEN: usize = 16;

/// One configurable setting and the names it goes by in each source.
struct Setting {
    key: &'static str,
    env: &'static str,
    flag: Option<&'static str>,
}

impl Setting {
    const fn new(key: &'static str, env: &'static str, flag: Option<&'static str>) -> Self {
        Self { key, env, flag }
    }
}

const SETTINGS: &[Setting] = &[
    Setting::new("listen", "HB_LISTEN", Some("--listen")),
    Setting::new(
        "metrics_listen",
        "HB_METRICS_LISTEN",
        Some("--metrics-listen"),
    ),
    Setting::new("data_dir", "HB_DATA_DIR", Some("--data-dir")),
    Setting::new("api_token", "HB_API_TOKEN", None),
    Setting::new(
        "api_tokens_file",
        "HB_API_TOKENS_FILE",
        Some("--api-tokens-file"),
    ),
    Setting::new("codex_dir", "HB_CODEX_DIR", Some("--codex-dir")),
    Setting::new("auth_file", "HB_AUTH_FILE", Some("--auth-file")),
    Setting::new("codex_bin", "HB_CODEX_BIN", Some("--codex-bin")),
    Setting::new("codex_bypass_sandbox", "HB_CODEX_BYPASS_SANDBOX", None),
    Setting::new("codex_home_template", "HB_CODEX_HOME_TEMPLATE", None),
    Setting::new("allowed_hosts", "HB_ALLOWED_HOSTS", Some("--allowed-hosts")),
    Setting::new("run_timeout", "HB_RUN_TIMEOUT", Some("--run-timeout")),
    Setting::new("max_run_timeout", "HB_MAX_RUN_TIMEOUT", None),
    Setting::new("run_idle_timeout", "HB_RUN_IDLE_TIMEOUT", None),
    Setting::new(
        "max_concurrent_runs",
        "HB_MAX_CONCURRENT_RUNS",
        Some("--max-concurrent-runs"),
    ),
    Setting::new("max_queued_runs", "HB_MAX_QUEUED_RUNS", None),
    Setting::new("shutdown_grace", "HB_SHUTDOWN_GRACE", None),
    Setting::new("run_retention", "HB_RUN_RETENTION", None),
    Setting::new("run_retention_count", "HB_RUN_RETENTION_COUNT", None),
    Setting::new("max_log_bytes", "HB_MAX_LOG_BYTES", None),
    Setting::new("webhook_secret", "HB_WEBHOOK_SECRET", None),
    Setting::new("adapters_dir", "HB_ADAPTERS_DIR", Some("--adapters-dir")),
    Setting::new("shim_bin", "HB_SHIM_BIN", None),
    Setting::new("codex_login_issuer", "HB_CODEX_LOGIN_ISSUER", None),
    Setting::new("codex_credentials", "HB_CODEX_CREDENTIALS", None),
    Setting::new("credential_warn_window", "HB_CREDENTIAL_WARN_WINDOW", None),
    Setting::new("claude_bin", "HB_CLAUDE_BIN", None),
    Setting::new("claude_dir", "HB_CLAUDE_DIR", None),
    Setting::new("claude_base_url", "HB_CLAUDE_BASE_URL", None),
    Setting::new("claude_run_as", "HB_CLAUDE_RUN_AS", None),
    Setting::new("gemini_bin", "HB_GEMINI_BIN", None),
    Setting::new("gemini_dir", "HB_GEMINI_DIR", None),
    Setting::new("gemini_base_url", "HB_GEMINI_BASE_URL", None),
    Setting::new("gemini_run_as", "HB_GEMINI_RUN_AS", None),
    Setting::new("keep_workspaces", "HB_KEEP_WORKSPACES", None),
    Setting::new("log_format", "HB_LOG_FORMAT", None),
    Setting::new(
        "tool_cache_dir",
        "HB_TOOL_CACHE_DIR",
        Some("--tool-cache-dir"),
    ),
    Setting::new("tool_max_bytes", "HB_TOOL_MAX_BYTES", None),
    Setting::new("fetch_timeout", "HB_FETCH_TIMEOUT", None),
    Setting::new("workspace_max_bytes", "HB_WORKSPACE_MAX_BYTES", None),
    Setting::new(
        "workspace_min_free_bytes",
        "HB_WORKSPACE_MIN_FREE_BYTES",
        None,
    ),
    Setting::new("artifact_max_bytes", "HB_ARTIFACT_MAX_BYTES", None),
    Setting::new("git_credentials_dir", "HB_GIT_CREDENTIALS_DIR", None),
    Setting::new("executor", "HB_EXECUTOR", None),
    Setting::new("job_namespace", "HB_JOB_NAMESPACE", None),
    Setting::new("job_image", "HB_JOB_IMAGE", None),
    Setting::new("job_service_account", "HB_JOB_SERVICE_ACCOUNT", None),
    Setting::new("job_bridge_url", "HB_JOB_BRIDGE_URL", None),
    Setting::new("job_cpu", "HB_JOB_CPU", None),
    Setting::new("job_memory", "HB_JOB_MEMORY", None),
    Setting::new("job_ttl_seconds", "HB_JOB_TTL_SECONDS", None),
    Setting::new("credential_secret", "HB_CREDENTIAL_SECRET", None),
    Setting::new("kube_api_url", "HB_KUBE_API_URL", None),
    Setting::new("kube_token_file", "HB_KUBE_TOKEN_FILE", None),
    Setting::new("kube_ca_file", "HB_KUBE_CA_FILE", None),
    Setting::new("max_sessions", "HB_MAX_SESSIONS", None),
    Setting::new("session_idle_timeout", "HB_SESSION_IDLE_TIMEOUT", None),
    Setting::new("session_max_lifetime", "HB_SESSION_MAX_LIFETIME", None),
    Setting::new(
        "session_max_output_rate",
        "HB_SESSION_MAX_OUTPUT_RATE",
        None,
    ),
    Setting::new("session_quiet_ms", "HB_SESSION_QUIET_MS", None),
];

/// Where a pod finds its ServiceAccount's token, CA and namespace (the kubelet mounts them).
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A run pod's CPU and memory when the operator names none: one Codex turn with git and a
/// test run fits, and the scheduler can still pack a few per node.
const DEFAULT_JOB_CPU: &str = "1";
const DEFAULT_JOB_MEMORY: &str = "2Gi";
/// How long a finished Job may linger when the bridge could not delete it (API servers with
/// the TTL controller only; the bridge deletes the Jobs it sees finish).
const DEFAULT_JOB_TTL_S: u64 = 600;

/// The validated configuration of a running bridge.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics listener, never the API's port; `None` is off.
    pub metrics_listen: Option<SocketAddr>,
    /// Root of the run store, workspaces and tool cache.
    pub data_dir: PathBuf,
    /// Bearer tokens accepted by the API; empty only when listening on loopback.
    pub api_tokens: ApiTokens,
    /// How to find and run the Codex CLI.
    pub codex: CodexConfig,
    /// Hosts that may resolve to non-public addresses and use plain http.
    pub allowed_hosts: Vec<String>,
    /// Wall-clock limit of a run that does not ask for one.
    pub run_timeout: Duration,
    /// The most a run may ask for.
    pub max_run_timeout: Duration,
    /// Longest silence before a run counts as stalled, unless it asks for less.
    pub run_idle_timeout: Duration,
    /// Runs executing at once; more wait in the queue.
    pub max_concurrent_runs: usize,
    /// Runs waiting for a slot; past this, submissions get 429.
    pub max_queued_runs: usize,
    /// On SIGTERM, how long runs in progress may go on before they are cancelled.
    pub shutdown_grace: Duration,
    /// Finished runs older than this are deleted.
    pub run_retention: Duration,
    /// At most this many finished runs are kept.
    pub run_retention_count: usize,
    /// The full output stream of a run is kept in a file up to this size.
    pub max_log_bytes: u64,
    /// Key for the HMAC signature of completion webhooks; webhooks are refused without one.
    pub webhook_secret: Option<Secret>,
    /// A directory of adapter profiles (`*.toml`), one CLI each.
    pub adapters_dir: Option<PathBuf>,
    /// The run shim (`headless-bridge-shim`) that wraps each CLI so none of its processes
    /// outlives it; the one beside the bridge's binary unless set. Without one, runs rely on
    /// process groups and the marker sweep alone.
    pub shim_bin: Option<PathBuf>,
    /// More Codex logins by name (another account, say), each a directory like HB_CODEX_DIR;
    /// a run picks one with `credential`.
    pub codex_credentials: BTreeMap<String, PathBuf>,
    /// Start each Codex run's private CODEX_HOME from a template of the CLI's first start,
    /// made once per login, instead of letting every run pay for that start.
    pub codex_home_template: bool,
    /// The ChatGPT issuer the login relay's device-code logins use instead of the CLI's own
    /// (a test's loopback issuer, or a company's proxy in front of the real one).
    pub codex_login_issuer: Option<url::Url>,
    /// Deep health says `degraded` when a login will stop working within this window unless a
    /// person acts (an access token that expires with no refresh token to renew it).
    pub credential_warn_window: Duration,
    /// Settings of the built-in Claude Code adapter.
    pub claude: BuiltinConfig,
    /// Settings of the built-in Gemini CLI adapter.
    pub gemini: BuiltinConfig,
    /// Keep each run's workspace after it finishes (for debugging).
    pub keep_workspaces: bool,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Where and within which limits tools are fetched.
    pub fetch: crate::fetch::FetchSettings,
    /// Disk limits of a run's workspace and its artifacts.
    pub workspace: crate::workspace::WorkspaceLimits,
    /// A directory of files named after git hosts, each holding a token for that host.
    pub git_credentials_dir: Option<PathBuf>,
    /// Limits of interactive sessions.
    pub sessions: crate::session::SessionLimits,
    /// Where runs execute: child processes of the bridge, or Kubernetes Jobs.
    pub executor: Executor,
    /// The Secret refreshed logins are written back to, if any.
    pub credential_secret: Option<SecretRef>,
    /// How the bridge reaches the Kubernetes API (Job executor, credential write-back).
    pub kube: KubeApi,
}

/// Where runs execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executor {
    /// A child process of the bridge, under its shim.
    Local,
    /// A Kubernetes Job per run.
    Kubernetes(JobSettings),
}

/// How run Jobs are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSettings {
    /// The namespace Jobs (and their per-run Secrets) are created in.
    pub namespace: String,
    /// The image of run pods: the bridge's own, whose `worker` subcommand runs the run.
    pub image: String,
    /// The ServiceAccount of run pods (its token is never mounted).
    pub service_account: String,
    /// The address run pods report to: this bridge's Service or pod address.
    pub bridge_url: String,
    /// CPU request and limit of a run pod, as a Kubernetes quantity.
    pub cpu: String,
    /// Memory request and limit of a run pod, as a Kubernetes quantity.
    pub memory: String,
    /// `ttlSecondsAfterFinished` of run Jobs.
    pub ttl_seconds: u64,
}

/// A namespaced object's name: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The Kubernetes API as the bridge reaches it: in a pod, its ServiceAccount's mounted token
/// and CA and the `KUBERNETES_SERVICE_*` address; each can be set for tests or out-of-cluster
/// use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeApi {
    /// `https://host:port`; `None` means from `KUBERNETES_SERVICE_HOST`/`_PORT` when used.
    pub url: Option<String>,
    /// A file holding a bearer token, read again as the kubelet rotates it.
    pub token_file: PathBuf,
    /// The PEM bundle the API server's certificate must chain to.
    pub ca_file: PathBuf,
}

/// Where the Codex CLI and its login live.
#[derive(Debug, Clone)]
pub struct CodexConfig {
    /// The `codex` executable: a path, or a name looked up on PATH.
    pub bin: PathBuf,
    /// The credential directory (in a pod, a mounted Secret) with auth.json and config.toml.
    pub dir: Option<PathBuf>,
    /// An explicit auth.json path; overrides `dir/auth.json`.
    pub auth_file: Option<PathBuf>,
    /// Run with approvals and the sandbox bypassed: the pod is the sandbox.
    pub bypass_sandbox: bool,
}

impl CodexConfig {
    /// The auth.json the credential is read from, if any source is configured.
    pub fn auth_path(&self) -> Option<PathBuf> {
        self.auth_file
            .clone()
            .or_else(|| self.dir.as_ref().map(|d| d.join("auth.json")))
    }

    /// The optional config.toml copied next to auth.json for each run.
    pub fn config_toml_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("config.toml"))
    }
}

/// Settings of a built-in profile adapter, applied over its shipped profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltinConfig {
    /// The executable, when not the name on PATH.
    pub bin: Option<PathBuf>,
    /// The directory of its login (a mounted Secret).
    pub dir: Option<PathBuf>,
    /// The API base URL the CLI is pointed at (a gateway, or a test's fake).
    pub base_url: Option<String>,
    /// The user to run it as when the bridge runs as root.
    pub run_as: Option<RunAs>,
}

/// The API's bearer tokens. `Debug` shows only how many there are.
#[derive(Clone, Default)]
pub struct ApiTokens(Vec<String>);

impl ApiTokens {
    /// Tokens accepted by the API.
    pub fn new(tokens: Vec<String>) -> Self {
        Self(tokens)
    }

    /// Whether the API is open (no token configured).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token values, for comparison and redaction.
    pub fn values(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokens({} configured)", self.0.len())
    }
}

/// A secret setting. `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The secret value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (a container), text otherwise.
    Auto,
    Json,
    Text,
}

/// A setting that stopped start-up, with the source that gave its value.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}{origin}: {message}")]
pub struct ConfigError {
    setting: String,
    origin: String,
    message: String,
}

impl ConfigError {
    fn new(setting: &str, source: Option<&Source>, message: impl Into<String>) -> Self {
        let origin = source.map(|s| format!(" (from {s})")).unwrap_or_default();
        Self {
            setting: setting.to_owned(),
            origin,
            message: message.into(),
        }
    }
}

/// Where a raw value came from.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Env,
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "config file {}", path.display()),
            Self::Env => f.write_str("the environment"),
            Self::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Settings as text, before parsing, with their sources.
#[derive(Debug, Default)]
pub struct RawConfig {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl RawConfig {
    /// Reads a TOML file whose keys are the settings' lowercase names (`listen`, `data_dir`, ...).
    pub fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let fail = |message: String| ConfigError::new("--config", None, message);
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("failed to read {}: {e}", path.display())))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| fail(format!("failed to parse {}: {e}", path.display())))?;

        for (key, value) in table {
            let setting = SETTINGS.iter().find(|s| s.key == key).ok_or_else(|| {
                let known: Vec<_> = SETTINGS.iter().map(|s| s.key).collect();
                fail(format!(
                    "unknown key `{key}` in {}; known: {}",
                    path.display(),
                    known.join(", ")
                ))
            })?;
            let text = toml_to_text(&value).ok_or_else(|| {
                fail(format!(
                    "key `{key}` in {} must be a string, number, boolean or list",
                    path.display()
                ))
            })?;
            self.values
                .insert(setting.key, (text, Source::File(path.to_owned())));
        }
        Ok(())
    }

    /// Reads `HB_*` variables through `lookup` (the process environment in production).
    pub fn merge_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for setting in SETTINGS {
            if let Some(value) = lookup(setting.env).filter(|v| !v.is_empty()) {
                self.values.insert(setting.key, (value, Source::Env));
            }
        }
    }

    /// Applies a command-line flag by its setting key (for example `run_timeout`).
    pub fn merge_flag(&mut self, key: &str, value: Option<String>) {
        let Some(value) = value else { return };
        let setting = SETTINGS
            .iter()
            .find(|s| s.key == key)
            .expect("flags are declared only for known settings");
        let flag = setting
            .flag
            .expect("only settings with a flag are set from flags");
        self.values.insert(setting.key, (value, Source::Flag(flag)));
    }

    /// Parses and checks the merged settings.
    pub fn build(self) -> Result<Config, ConfigError> {
        let listen = self.address(
            "listen",
            DEFAULT_LISTEN,
            "an IP address and port, such as 127.0.0.1:8080 or 0.0.0.0:8080",
            |v| v.parse::<SocketAddr>().ok(),
        )?;
        let api_tokens = self.api_tokens()?;
        if api_tokens.is_empty() && !listen.ip().is_loopback() {
            return Err(ConfigError::new(
                "HB_LISTEN",
                self.source("listen"),
                format!(
                    "refusing to serve {listen} without authentication: set HB_API_TOKEN or \
                     HB_API_TOKENS_FILE, or listen on a loopback address such as {DEFAULT_LISTEN}"
                ),
            ));
        }

        let metrics_listen = self.address(
            "metrics_listen",
            "off",
            "`off`, or an IP address and port, such as 127.0.0.1:9090",
            parse_optional_address,
        )?;
        if let Some(metrics) = metrics_listen
            && shares_port(metrics, listen)
        {
            return Err(self.error(
                "metrics_listen",
                format!(
                    "{metrics} would share the API's port ({listen}): give the metrics a port \
                     of their own, such as 127.0.0.1:9090"
                ),
            ));
        }

        let run_timeout = self.seconds("run_timeout", DEFAULT_RUN_TIMEOUT_S)?;
        let max_run_timeout = self.seconds("max_run_timeout", DEFAULT_MAX_RUN_TIMEOUT_S)?;
        if run_timeout > max_run_timeout {
            return Err(self.error("run_timeout", "must not exceed HB_MAX_RUN_TIMEOUT"));
        }

        let data_dir = self.path("data_dir").unwrap_or_else(default_data_dir);
        let fetch = crate::fetch::FetchSettings {
            cache_dir: self
                .path("tool_cache_dir")
                .unwrap_or_else(|| data_dir.join("tool-cache")),
            max_bytes: self.bytes("tool_max_bytes", "512M")?,
            total_timeout: self.seconds("fetch_timeout", DEFAULT_FETCH_TIMEOUT_S)?,
            ..crate::fetch::FetchSettings::default()
        };
        let workspace = crate::workspace::WorkspaceLimits {
            max_bytes: self.bytes("workspace_max_bytes", "4G")?,
            min_free_bytes: self.bytes("workspace_min_free_bytes", "1G")?,
            artifact_max_bytes: self.bytes("artifact_max_bytes", "16M")?,
        };
        let run_idle_timeout = self.seconds("run_idle_timeout", DEFAULT_IDLE_TIMEOUT_S)?;
        let webhook_secret = self
            .values
            .get("webhook_secret")
            .map(|(v, _)| Secret(v.trim().to_owned()));
        if webhook_secret
            .as_ref()
            .is_some_and(|s| s.0.len() < MIN_TOKEN_LEN)
        {
            return Err(self.error(
                "webhook_secret",
                format!("use at least {MIN_TOKEN_LEN} random characters"),
            ));
        }

        Ok(Config {
            listen,
            metrics_listen,
            data_dir,
            api_tokens,
            codex: CodexConfig {
                bin: self
                    .path("codex_bin")
                    .unwrap_or_else(|| PathBuf::from("codex")),
                dir: self.path("codex_dir"),
                auth_file: self.path("auth_file"),
                bypass_sandbox: self.parse("codex_bypass_sandbox", "true", parse_bool)?,
            },
            allowed_hosts: self.list("allowed_hosts"),
            run_timeout,
            max_run_timeout,
            run_idle_timeout,
            max_concurrent_runs: self.count("max_concurrent_runs", DEFAULT_MAX_CONCURRENT)?,
            max_queued_runs: self.count("max_queued_runs", DEFAULT_MAX_QUEUED)?,
            shutdown_grace: self.seconds("shutdown_grace", DEFAULT_SHUTDOWN_GRACE_S)?,
            run_retention: self.seconds("run_retention", DEFAULT_RETENTION_S)?,
            run_retention_count: self.count("run_retention_count", DEFAULT_RETENTION_COUNT)?,
            max_log_bytes: self.parse(
                "max_log_bytes",
                &DEFAULT_MAX_LOG_BYTES.to_string(),
                |v| v.parse().ok(),
            )?,
            webhook_secret,
            adapters_dir: self.path("adapters_dir"),
            shim_bin: self.path("shim_bin"),
            codex_login_issuer: self.http_url("codex_login_issuer")?,
            codex_credentials: self.named_dirs("codex_credentials")?,
            credential_warn_window: self
                .seconds("credential_warn_window", DEFAULT_CREDENTIAL_WARN_WINDOW_S)?,
            claude: self.builtin("claude")?,
            gemini: self.builtin("gemini")?,
            keep_workspaces: self.parse("keep_workspaces", "false", parse_bool)?,
            codex_home_template: self.parse("codex_home_template", "true", parse_bool)?,
            log_format: self.parse("log_format", "auto", parse_log_format)?,
            fetch,
            workspace,
            git_credentials_dir: self.path("git_credentials_dir"),
            executor: self.executor()?,
            credential_secret: self.secret_ref("credential_secret")?,
            kube: KubeApi {
                url: self
                    .values
                    .get("kube_api_url")
                    .map(|(v, _)| v.trim().to_owned()),
                token_file: self
                    .path("kube_token_file")
                    .unwrap_or_else(|| Path::new(SERVICE_ACCOUNT_DIR).join("token")),
                ca_file: self
                    .path("kube_ca_file")
                    .unwrap_or_else(|| Path::new(SERVICE_ACCOUNT_DIR).join("ca.crt")),
            },
            sessions: self.sessions()?,
        })
    }

    fn sessions(&self) -> Result<crate::session::SessionLimits, ConfigError> {
        let defaults = crate::session::SessionLimits::default();
        let quiet_ms = self.count("session_quiet_ms", defaults.quiet.as_millis() as usize)?;
        if quiet_ms as u64 > crate::session::spec::MAX_QUIET_MS {
            return Err(self.error(
                "session_quiet_ms",
                format!("must be at most {}", crate::session::spec::MAX_QUIET_MS),
            ));
        }
        Ok(crate::session::SessionLimits {
            max_sessions: self.count("max_sessions", defaults.max_sessions)?,
            idle_timeout: self.seconds("session_idle_timeout", defaults.idle_timeout.as_secs())?,
            max_lifetime: self.seconds("session_max_lifetime", defaults.max_lifetime.as_secs())?,
            max_output_rate: self.bytes("session_max_output_rate", "1M")?.max(1),
            quiet: Duration::from_millis(quiet_ms as u64),
        })
    }

    fn executor(&self) -> Result<Executor, ConfigError> {
        match self.values.get("executor").map(|(v, _)| v.trim()) {
            None | Some("local") => return Ok(Executor::Local),
            Some("kubernetes") => {}
            Some(other) => {
                return Err(self.error(
                    "executor",
                    format!("cannot use `{other}`; expected `local` or `kubernetes`"),
                ));
            }
        }
        let required = |key: &str| {
            self.values
                .get(key)
                .map(|(v, _)| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| self.error(key, "is required when HB_EXECUTOR=kubernetes"))
        };
        let namespace = match self.values.get("job_namespace") {
            Some((v, _)) => v.trim().to_owned(),
            // In a pod, the namespace the ServiceAccount lives in.
            None => std::fs::read_to_string(Path::new(SERVICE_ACCOUNT_DIR).join("namespace"))
                .map(|n| n.trim().to_owned())
                .map_err(|_| self.error("job_namespace", "is required outside a Kubernetes pod"))?,
        };
        if !is_dns_label(&namespace) {
            return Err(self.error("job_namespace", "must be a Kubernetes namespace name"));
        }
        let bridge_url = required("job_bridge_url")?;
        if url::Url::parse(&bridge_url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
            return Err(self.error("job_bridge_url", "must be an http(s) URL"));
        }
        let quantity = |key: &str, default: &str| {
            self.parse(key, default, |v| is_quantity(v).then(|| v.to_owned()))
                .map_err(|_| self.error(key, "expected a Kubernetes quantity such as 500m, 1, 2Gi"))
        };
        Ok(Executor::Kubernetes(JobSettings {
            namespace,
            image: required("job_image")?,
            service_account: self.parse("job_service_account", "headless-bridge-run", |v| {
                is_dns_subdomain(v).then(|| v.to_owned())
            })?,
            bridge_url: bridge_url.trim_end_matches('/').to_owned(),
            cpu: quantity("job_cpu", DEFAULT_JOB_CPU)?,
            memory: quantity("job_memory", DEFAULT_JOB_MEMORY)?,
            ttl_seconds: self.parse("job_ttl_seconds", &DEFAULT_JOB_TTL_S.to_string(), |v| {
                v.parse().ok()
            })?,
        }))
    }

    fn secret_ref(&self, key: &str) -> Result<Option<SecretRef>, ConfigError> {
        let Some((text, _)) = self.values.get(key) else {
            return Ok(None);
        };
        match text.trim().split_once('/') {
            Some((namespace, name)) if is_dns_label(namespace) && is_dns_subdomain(name) => {
                Ok(Some(SecretRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                }))
            }
            _ => Err(self.error(
                key,
                "expected namespace/name, such as headless-bridge/codex-login",
            )),
        }
    }

    fn api_tokens(&self) -> Result<ApiTokens, ConfigError> {
        let mut tokens = Vec::new();
        if let Some((token, _)) = self.values.get("api_token") {
            tokens.push(token.trim().to_owned());
        }
        if let Some(path) = self.path("api_tokens_file") {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                self.error(
                    "api_tokens_file",
                    format!("failed to read {}: {e}", path.display()),
                )
            })?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if let Some(short) = tokens.iter().find(|t| t.len() < MIN_TOKEN_LEN) {
            let message = format!(
                "an API token has {} characters; use at least {MIN_TOKEN_LEN} random ones \
                 (for example `openssl rand -hex 32`)",
                short.len()
            );
            let key = if self.values.contains_key("api_tokens_file") {
                "api_tokens_file"
            } else {
                "api_token"
            };
            return Err(self.error(key, message));
        }
        Ok(ApiTokens::new(tokens))
    }

    fn env_name(key: &str) -> &'static str {
        SETTINGS
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.env)
            .expect("known setting key")
    }

    fn source(&self, key: &str) -> Option<&Source> {
        self.values.get(key).map(|(_, source)| source)
    }

    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(Self::env_name(key), self.source(key), message)
    }

    fn parse<T>(
        &self,
        key: &str,
        default: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        let text = self
            .values
            .get(key)
            .map(|(v, _)| v.as_str())
            .unwrap_or(default);
        parse(text.trim()).ok_or_else(|| self.error(key, format!("cannot use `{text}`")))
    }

    /// A listening address. Host names are not resolved (`localhost` may name more than one
    /// address, or another one than meant), so the message says what is expected.
    fn address<T>(
        &self,
        key: &str,
        default: &str,
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        self.parse(key, default, parse).map_err(|_| {
            let text = self.values.get(key).map_or(default, |(v, _)| v.as_str());
            self.error(key, format!("cannot use `{text}`: expected {expected}"))
        })
    }

    fn seconds(&self, key: &str, default: u64) -> Result<Duration, ConfigError> {
        let default = default.to_string();
        match self.parse(key, &default, parse_duration_s) {
            Ok(0) => Err(self.error(key, "must be at least 1 second")),
            Ok(secs) => Ok(Duration::from_secs(secs)),
            Err(_) => Err(self.error(key, "expected seconds such as 600, or 10m, 2h, 7d")),
        }
    }

    fn count(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.parse(key, &default.to_string(), |v| v.parse::<usize>().ok()) {
            Ok(0) | Err(_) => Err(self.error(key, "expected a whole number of at least 1")),
            Ok(n) => Ok(n),
        }
    }

    fn bytes(&self, key: &str, default: &str) -> Result<u64, ConfigError> {
        self.parse(key, default, parse_bytes)
            .map_err(|_| self.error(key, "expected a size in bytes, such as 1048576, 512M or 4G"))
    }

    fn builtin(&self, name: &str) -> Result<BuiltinConfig, ConfigError> {
        let key = |setting: &str| {
            let full = format!("{name}_{setting}");
            SETTINGS
                .iter()
                .map(|s| s.key)
                .find(|k| *k == full)
                .expect("each built-in has the four settings")
        };
        let run_as =
            match self.values.get(key("run_as")) {
                None => None,
                Some((text, _)) => Some(parse_run_as(text.trim()).ok_or_else(|| {
                    self.error(key("run_as"), "expected uid:gid such as 1000:1000")
                })?),
            };
        Ok(BuiltinConfig {
            bin: self.path(key("bin")),
            dir: self.path(key("dir")),
            base_url: self
                .values
                .get(key("base_url"))
                .map(|(v, _)| v.trim().to_owned()),
            run_as,
        })
    }

    /// `name=dir,name=dir`: names of lower-case letters, digits and dashes, none `default`
    /// (the login HB_CODEX_DIR holds) and none twice.
    fn named_dirs(&self, key: &str) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
        let mut named = BTreeMap::new();
        for item in self.list(key) {
            let Some((name, dir)) = item.split_once('=') else {
                return Err(self.error(key, format!("`{item}` is not name=directory")));
            };
            let (name, dir) = (name.trim(), dir.trim());
            let valid = (1..=32).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid || name == crate::credentials::logins::DEFAULT {
                return Err(self.error(
                    key,
                    format!(
                        "`{name}` is not a credential name: use up to 32 lower-case letters, \
                         digits and dashes, and not `default`"
                    ),
                ));
            }
            if dir.is_empty() {
                return Err(self.error(key, format!("credential `{name}` names no directory")));
            }
            if named.insert(name.to_owned(), PathBuf::from(dir)).is_some() {
                return Err(self.error(key, format!("credential `{name}` is given twice")));
            }
        }
        Ok(named)
    }

    /// An http or https URL, if set.
    fn http_url(&self, key: &str) -> Result<Option<url::Url>, ConfigError> {
        let Some((text, _)) = self.values.get(key) else {
            return Ok(None);
        };
        match url::Url::parse(text.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Ok(Some(url))
            }
            _ => Err(self.error(key, "expected an http:// or https:// URL")),
        }
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.values.get(key).map(|(v, _)| PathBuf::from(v.trim()))
    }

    fn list(&self, key: &str) -> Vec<String> {
        let Some((text, _)) = self.values.get(key) else {
            return Vec::new();
        };
        text.split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn toml_to_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(toml_to_text).collect();
            parts.map(|p| p.join(","))
        }
        _ => None,
    }
}

/// A size in bytes, with an optional binary suffix K, M or G.
fn parse_bytes(text: &str) -> Option<u64> {
    let upper = text.to_ascii_uppercase();
    let (number, shift) = match upper.trim_end_matches('B').trim_end_matches('I') {
        n if n.ends_with('K') => (&n[..n.len() - 1], 10),
        n if n.ends_with('M') => (&n[..n.len() - 1], 20),
        n if n.ends_with('G') => (&n[..n.len() - 1], 30),
        n => (n, 0),
    };
    number.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// Seconds, optionally with a unit: `600`, `600s`, `10m`, `2h`, `7d`.
fn parse_duration_s(text: &str) -> Option<u64> {
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

/// `uid:gid`, both numeric.
fn parse_run_as(text: &str) -> Option<RunAs> {
    let (uid, gid) = text.split_once(':')?;
    Some(RunAs {
        uid: uid.parse().ok()?,
        gid: gid.parse().ok()?,
    })
}

/// A DNS label (RFC 1123) as Kubernetes names namespaces: lowercase alphanumerics and `-`.
fn is_dns_label(text: &str) -> bool {
    (1..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A DNS subdomain (RFC 1123), the shape of most Kubernetes object names.
fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// A Kubernetes resource quantity in the forms an operator writes: `500m`, `2`, `1.5`, `2Gi`,
/// `512M`.
fn is_quantity(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1;
    number_ok
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "Ki" | "Mi" | "Gi" | "Ti"
        )
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// An address to listen on, or `off` (also `none`, `false`, `0`) for none.
fn parse_optional_address(text: &str) -> Option<Option<SocketAddr>> {
    match text.to_ascii_lowercase().as_str() {
        "off" | "none" | "false" | "0" => Some(None),
        _ => text.parse().ok().map(Some),
    }
}

/// Whether two listeners would collide or serve one port: the same port on the same address,
/// or on any address when either is a wildcard. Port 0 (any free port) never collides.
fn shares_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn parse_log_format(text: &str) -> Option<LogFormat> {
    match text {
        "auto" => Some(LogFormat::Auto),
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => None,
    }
}

/// `$XDG_STATE_HOME/headless-bridge`, else `~/.local/state/headless-bridge`, else `./hb-data`.
fn default_data_dir() -> PathBuf {
    let state_home = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")));
    match state_home {
        Some(dir) => dir.join("headless-bridge"),
        None => PathBuf::from("hb-data"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rstest::rstest;

    use super::*;

    fn from_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut raw = RawConfig::default();
        raw.merge_env(|name| vars.get(name).cloned());
        raw.build()
    }

    #[rstest]
    #[case("1048576", 1 << 20)]
    #[case("512M", 512 << 20)]
    #[case("4G", 4 << 30)]
    #[case("64k", 64 << 10)]
    #[case("2GiB", 2 << 30)]
    fn sizes_take_binary_suffixes(#[case] text: &str, #[case] bytes: u64) {
        assert_eq!(parse_bytes(text), Some(bytes));
    }

    #[test]
    fn the_job_executor_needs_an_image_and_a_bridge_url() {
        let base = [("HB_EXECUTOR", "kubernetes"), ("HB_JOB_NAMESPACE", "runs")];
        let err = from_env(&base).unwrap_err().to_string();
        assert!(err.contains("HB_JOB_BRIDGE_URL"), "{err}");
        let err = from_env(&[base[0], base[1], ("HB_JOB_BRIDGE_URL", "http://b:8000")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("HB_JOB_IMAGE"), "{err}");
        let config = from_env(&[
            base[0],
            base[1],
            ("HB_JOB_BRIDGE_URL", "http://b:8000"),
            ("HB_JOB_IMAGE", "hb:1"),
        ])
        .unwrap();
        let Executor::Kubernetes(jobs) = config.executor else {
            panic!("kubernetes")
        };
        assert_eq!((jobs.cpu.as_str(), jobs.memory.as_str()), ("1", "2Gi"));
        assert_eq!(from_env(&[]).unwrap().executor, Executor::Local);
    }

    #[rstest]
    #[case("HB_EXECUTOR", "docker")]
    #[case("HB_CREDENTIAL_SECRET", "just-a-name")]
    #[case("HB_CREDENTIAL_SECRET", "Bad_NS/name")]
    fn kubernetes_settings_are_checked(#[case] name: &str, #[case] value: &str) {
        let err = from_env(&[(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }

    #[rstest]
    #[case("500m", true)]
    #[case("2Gi", true)]
    #[case("1.5", true)]
    #[case("2 Gi", false)]
    #[case("lots", false)]
    fn quantities_are_checked(#[case] text: &str, #[case] ok: bool) {
        assert_eq!(is_quantity(text), ok);
    }

    #[test]
    fn defaults_match_the_original_service() {
        let config = from_env(&[]).expect("defaults are valid");
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.run_timeout, Duration::from_secs(600));
        assert!(config.codex.bypass_sandbox);
        assert_eq!(config.codex.bin, PathBuf::from("codex"));
    }

    #[test]
    fn refuses_a_public_listener_without_tokens() {
        let err = from_env(&[("HB_LISTEN", "0.0.0.0:8000")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("HB_LISTEN") && err.contains("HB_API_TOKEN"),
            "{err}"
        );
    }

    #[test]
    fn accepts_a_public_listener_with_a_token() {
        let config = from_env(&[
            ("HB_LISTEN", "0.0.0.0:8000"),
            ("HB_API_TOKEN", "0123456789abcdef0"),
        ]);
        assert_eq!(config.expect("valid").api_tokens.values().len(), 1);
    }

    #[test]
    fn metrics_are_off_unless_given_a_port_of_their_own() {
        assert_eq!(from_env(&[]).expect("defaults").metrics_listen, None);
        let config = from_env(&[("HB_METRICS_LISTEN", "127.0.0.1:9090")]).expect("valid");
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        let off = from_env(&[("HB_METRICS_LISTEN", "off")]).expect("valid");
        assert_eq!(off.metrics_listen, None);
    }

    #[rstest]
    #[case::listen("HB_LISTEN", "localhost")]
    #[case::timeout_text("HB_RUN_TIMEOUT", "ten minutes")]
    #[case::timeout_zero("HB_RUN_TIMEOUT", "0")]
    #[case::timeout_over_max("HB_RUN_TIMEOUT", "7200")]
    #[case::bool("HB_CODEX_BYPASS_SANDBOX", "maybe")]
    #[case::short_token("HB_API_TOKEN", "secret")]
    #[case::tokens_file("HB_API_TOKENS_FILE", "/nonexistent/tokens")]
    #[case::log_format("HB_LOG_FORMAT", "xml")]
    #[case::metrics_listen("HB_METRICS_LISTEN", "9090")]
    #[case::metrics_on_the_api_port("HB_METRICS_LISTEN", "127.0.0.1:8000")]
    #[case::metrics_on_every_address_of_the_api_port("HB_METRICS_LISTEN", "0.0.0.0:8000")]
    #[case::size_text("HB_WORKSPACE_MAX_BYTES", "lots")]
    #[case::size_unit("HB_TOOL_MAX_BYTES", "12T")]
    #[case::concurrency("HB_MAX_CONCURRENT_RUNS", "0")]
    #[case::retention("HB_RUN_RETENTION", "1w")]
    #[case::webhook_secret("HB_WEBHOOK_SECRET", "secret")]
    #[case::claude_run_as("HB_CLAUDE_RUN_AS", "nobody")]
    #[case::gemini_run_as("HB_GEMINI_RUN_AS", "1000")]
    fn names_the_setting_that_is_wrong(#[case] name: &str, #[case] value: &str) {
        let err = from_env(&[(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
        assert!(
            !err.contains("secret"),
            "the message must not echo a token: {err}"
        );
    }

    /// Regression: `HB_LISTEN=localhost` was refused as "cannot use `localhost`", with no word
    /// of what would do.
    #[rstest]
    #[case::listen_name("HB_LISTEN", "localhost", "127.0.0.1:8080")]
    #[case::listen_without_port("HB_LISTEN", "127.0.0.1", "127.0.0.1:8080")]
    #[case::metrics_name("HB_METRICS_LISTEN", "localhost:9090", "127.0.0.1:9090")]
    fn a_listen_address_that_is_not_ip_and_port_says_what_is_expected(
        #[case] name: &str,
        #[case] value: &str,
        #[case] example: &str,
    ) {
        let err = from_env(&[(name, value)]).unwrap_err().to_string();
        assert!(
            err.contains(&format!("cannot use `{value}`: expected")) && err.contains(example),
            "{err}"
        );
    }

    #[test]
    fn built_in_adapters_take_their_settings() {
        let config = from_env(&[
            ("HB_CLAUDE_BIN", "/opt/claude"),
            ("HB_CLAUDE_DIR", "/secrets/claude"),
            ("HB_CLAUDE_BASE_URL", "http://127.0.0.1:9"),
            ("HB_CLAUDE_RUN_AS", "1000:1001"),
        ])
        .unwrap();
        assert_eq!(
            config.claude,
            BuiltinConfig {
                bin: Some("/opt/claude".into()),
                dir: Some("/secrets/claude".into()),
                base_url: Some("http://127.0.0.1:9".into()),
                run_as: Some(RunAs {
                    uid: 1000,
                    gid: 1001
                }),
            }
        );
        assert_eq!(config.gemini, BuiltinConfig::default());
    }

    #[test]
    fn flags_override_env_which_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hb.toml");
        std::fs::write(
            &file,
            "run_timeout = 30\nallowed_hosts = [\"a\", \"b\"]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let mut raw = RawConfig::default();
        raw.merge_file(&file).unwrap();
        raw.merge_env(|name| (name == "HB_RUN_TIMEOUT").then(|| "40".to_owned()));
        raw.merge_flag("listen", Some("127.0.0.1:2".to_owned()));
        let config = raw.build().unwrap();
        assert_eq!(config.run_timeout, Duration::from_secs(40));
        assert_eq!(config.allowed_hosts, ["a", "b"]);
        assert_eq!(config.listen.port(), 2);
    }

    #[test]
    fn an_unknown_file_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hb.toml");
        std::fs::write(&file, "run_timout = 30\n").unwrap();
        let err = RawConfig::default()
            .merge_file(&file)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run_timout"), "{err}");
    }

    #[test]
    fn a_file_value_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hb.toml");
        std::fs::write(&file, "run_timeout = \"soon\"\n").unwrap();
        let mut raw = RawConfig::default();
        raw.merge_file(&file).unwrap();
        let err = raw.build().unwrap_err().to_string();
        assert!(
            err.contains("HB_RUN_TIMEOUT") && err.contains("hb.toml"),
            "{err}"
        );
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration_s("600"), Some(600));
        assert_eq!(parse_duration_s("10m"), Some(600));
        assert_eq!(parse_duration_s("7d"), Some(604_800));
        assert_eq!(parse_duration_s("1.5h"), None);
    }

    #[test]
    fn debug_never_shows_tokens() {
        let tokens = ApiTokens::new(vec!["super-secret-token-value".into()]);
        assert_eq!(format!("{tokens:?}"), "ApiTokens(1 configured)");
    }
}
