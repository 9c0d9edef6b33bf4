//! The `headless-bridge` command: `serve` runs the HTTP gateway; `fetch` downloads one tool
//! with the same fetcher, cache and URL policy the runs use; `submit`, `runs`, `logs` and
//! `cancel` are a client of a running bridge.
//!
//! Exit codes of `serve`: 0 after a clean shutdown, 2 when the configuration is invalid, 1 when
//! the bridge failed to start or stopped serving on an error. Those of `fetch` are in
//! [`fetch_command`], those of `attach` in [`attach_command`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use headless_bridge::config::{Config, RawConfig};
use headless_bridge::server::Bridge;
use headless_bridge::{error_chain, telemetry};

mod attach_command;
mod client_command;
mod fetch_command;
mod run_request;

#[derive(Parser)]
#[command(
    name = "headless-bridge",
    version,
    about = "Run developer CLIs headless behind an HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Download a tool, verify it and copy it out of the tool cache.
    Fetch(fetch_command::FetchArgs),
    /// Join this terminal to a session's terminal (Ctrl-] detaches); token from HB_TOKEN.
    Attach(attach_command::AttachArgs),
    /// Run the deep health check with `serve`'s settings and explain it (exit 1 if unhealthy).
    Doctor(Box<ServeArgs>),
    /// Kubernetes Secrets for a login.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Internal: run one run inside the pod of its Kubernetes Job and report it to the bridge
    /// (used by the Job executor). Settings come from HB_* variables, as for `serve`.
    #[command(hide = true)]
    Worker {
        /// The run, as the Job executor wrote it into the run's Secret.
        #[arg(long, value_name = "FILE")]
        run: PathBuf,
    },
    #[command(flatten)]
    Client(client_command::ClientCommand),
}

/// `secret` subcommands.
#[derive(Subcommand)]
enum SecretCommand {
    /// Print a Secret manifest holding a Codex login, for `kubectl apply -f -`.
    Create {
        /// The auth.json written by `codex login`.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// A config.toml to ship with it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The Secret's name.
        #[arg(long)]
        name: String,
        /// The Secret's namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// Flags of `serve`; each overrides its HB_* variable and the config file.
#[derive(Args)]
struct ServeArgs {
    /// A TOML file of settings (keys: listen, data_dir, codex_dir, run_timeout, ...).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [env: HB_LISTEN] [default: 127.0.0.1:8000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Address of the Prometheus metrics listener, never the API's port, or `off`
    /// [env: HB_METRICS_LISTEN] [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Run store, workspaces and tool cache [env: HB_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// File of API tokens, one per line [env: HB_API_TOKENS_FILE]. A single token is read
    /// from HB_API_TOKEN only, never from a flag, which `ps` would show.
    #[arg(long, value_name = "FILE")]
    api_tokens_file: Option<String>,
    /// Directory holding the Codex auth.json and config.toml [env: HB_CODEX_DIR].
    #[arg(long, value_name = "DIR")]
    codex_dir: Option<String>,
    /// Path of auth.json, if not in the codex directory [env: HB_AUTH_FILE].
    #[arg(long, value_name = "FILE")]
    auth_file: Option<String>,
    /// The codex executable [env: HB_CODEX_BIN] [default: codex].
    #[arg(long, value_name = "PATH")]
    codex_bin: Option<String>,
    /// Hosts that may resolve to private addresses and use http, comma-separated [env: HB_ALLOWED_HOSTS].
    #[arg(long, value_name = "HOSTS")]
    allowed_hosts: Option<String>,
    /// Default run timeout in seconds [env: HB_RUN_TIMEOUT] [default: 600].
    #[arg(long, value_name = "SECONDS")]
    run_timeout: Option<String>,
    /// Runs executing at once [env: HB_MAX_CONCURRENT_RUNS] [default: 8].
    #[arg(long, value_name = "N")]
    max_concurrent_runs: Option<String>,
    /// Directory of adapter profiles, one `*.toml` per CLI [env: HB_ADAPTERS_DIR].
    #[arg(long, value_name = "DIR")]
    adapters_dir: Option<String>,
    /// The content-addressed tool cache [env: HB_TOOL_CACHE_DIR] [default: <data dir>/tool-cache].
    #[arg(long, value_name = "DIR")]
    tool_cache_dir: Option<String>,
}

impl ServeArgs {
    fn config(self) -> Result<Config, headless_bridge::config::ConfigError> {
        let mut raw = RawConfig::default();
        if let Some(path) = &self.config {
            raw.merge_file(path)?;
        }
        raw.merge_env(|name| std::env::var(name).ok());
        raw.merge_flag("listen", self.listen);
        raw.merge_flag("metrics_listen", self.metrics_listen);
        raw.merge_flag("data_dir", self.data_dir);
        raw.merge_flag("api_tokens_file", self.api_tokens_file);
        raw.merge_flag("codex_dir", self.codex_dir);
        raw.merge_flag("auth_file", self.auth_file);
        raw.merge_flag("codex_bin", self.codex_bin);
        raw.merge_flag("allowed_hosts", self.allowed_hosts);
        raw.merge_flag("run_timeout", self.run_timeout);
        raw.merge_flag("max_concurrent_runs", self.max_concurrent_runs);
        raw.merge_flag("adapters_dir", self.adapters_dir);
        raw.merge_flag("tool_cache_dir", self.tool_cache_dir);
        raw.build()
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args),
        Command::Fetch(args) => fetch_command::run(args),
        Command::Client(command) => client_command::run(command),
        Command::Attach(args) => attach_command::run(args),
        Command::Doctor(args) => doctor(*args),
        Command::Secret(SecretCommand::Create {
            from,
            config,
            name,
            namespace,
        }) => {
            match headless_bridge::commands::secret_manifest(
                &from,
                config.as_deref(),
                &name,
                namespace.as_deref(),
            ) {
                Ok((manifest, warning)) => {
                    if let Some(warning) = warning {
                        eprintln!("headless-bridge: note: {warning}");
                    }
                    print!("{manifest}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("headless-bridge: {}", error_chain(&e));
                    ExitCode::from(2)
                }
            }
        }
        Command::Worker { run } => worker(&run),
    }
}

fn doctor(args: ServeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("headless-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let (ok, report) = runtime.block_on(headless_bridge::commands::doctor(&config));
    print!("{report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Exit codes of `worker`: 0 when the bridge has the run's outcome (whatever it is), 2 for
/// invalid configuration, 1 when the run could not be started or reported.
fn worker(run: &std::path::Path) -> ExitCode {
    let mut raw = RawConfig::default();
    raw.merge_env(|name| std::env::var(name).ok());
    let config = match raw.build() {
        Ok(mut config) => {
            config.shim_bin = config
                .shim_bin
                .or_else(headless_bridge::run::shim::beside_current_exe);
            config
        }
        Err(e) => {
            eprintln!("headless-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    harden_process();
    // The worker is PID 1 of its pod: it reaps what the CLI's processes leave behind.
    headless_bridge::reaper::start_if_init();
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match runtime.block_on(headless_bridge::k8s::worker::run(config, run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "the worker failed");
            eprintln!("headless-bridge: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config() {
        // The shim installed beside the bridge unless told otherwise.
        Ok(mut config) => {
            config.shim_bin = config
                .shim_bin
                .or_else(headless_bridge::run::shim::beside_current_exe);
            config
        }
        Err(e) => {
            eprintln!("headless-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    if config.shim_bin.is_none() {
        tracing::warn!(
            "no run shim (HB_SHIM_BIN, or headless-bridge-shim beside the bridge): a run's \
             processes are stopped by process group and environment marker only"
        );
    }

    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    match runtime.block_on(run_server(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %error_chain(e.as_ref()), "headless-bridge stopped");
            eprintln!("headless-bridge: {}", error_chain(e.as_ref()));
            // An adapter profile is configuration: refusing one is exit code 2, like a setting.
            let profile = e
                .downcast_ref::<headless_bridge::server::ServeError>()
                .is_some_and(|e| matches!(e, headless_bridge::server::ServeError::Profile(_)));
            if profile {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run_server(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let (listen, metrics_listen) = (config.listen, config.metrics_listen);
    harden_process();
    if headless_bridge::reaper::start_if_init() {
        tracing::info!("running as PID 1: reaping orphaned processes");
    }
    let bridge = Bridge::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("failed to listen on {listen}: {e}"))?;
    let metrics = match metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| format!("failed to listen for metrics on {address}: {e}"))?;
            tracing::info!(address = %listener.local_addr()?, "metrics serving");
            Some(listener)
        }
        None => None,
    };
    tracing::info!(address = %listener.local_addr()?, "headless-bridge serving");
    bridge
        .serve_with_metrics(listener, metrics, shutdown_signal())
        .await?;
    tracing::info!("headless-bridge stopped");
    Ok(())
}

/// Process-wide protections, before any secret is used or any file written:
/// - files the bridge creates (run store, logs, workspaces) are private to its user;
/// - the process is not dumpable, so a run's commands, which run as the same user, cannot
///   read the bridge's environment (its API tokens) or memory through /proc, and no core
///   dump holds a secret.
fn harden_process() {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o077));
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "failed to make the process non-dumpable; runs may read its environment");
    }
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
