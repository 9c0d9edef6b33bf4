//! `headless-bridge worker`: runs one run inside its Kubernetes Job's pod and reports it.
//!
//! The worker is the local executor's pipeline in a pod of its own: it reads the run from the
//! run's Secret (`--run`, mounted by `job.rs`), takes what the run carried in the same Secret
//! (`carry.rs`: the Codex login, or the profile and its secrets; the repository host's
//! credential), prepares the workspace (clone, tools, the private HOME) and runs the CLI under
//! the same shim, limits and judgement as the bridge would. Its event sink relays every call
//! to the bridge as it is made, in batches (`report.rs`); when the run has ended it sends each
//! artifact it kept, then the finished record, and the login if the CLI refreshed it, then
//! exits. The exit code says whether the bridge got the outcome (0), not
//! how the run went.
//!
//! SIGTERM (the Job deleted: a cancel, or Kubernetes' deadline) stops the CLI as a bridge
//! shutdown would; the bridge records the run as it sees fit.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::carry::{self, CarryError};
use super::report::{ARTIFACT_ROUTE, Login, REPORT_ROUTE, Report};
use crate::adapter::Adapter;
use crate::config::Config;
use crate::credentials::WorkingCopy;
use crate::fetch::Fetcher;
use crate::policy::UrlPolicy;
use crate::run::events::{EventSink, Relayed};
use crate::run::pipeline::Pipeline;
use crate::run::{RunRecord, RunState};
use crate::store::Store;

/// Sink calls sent in one report at most.
const BATCH: usize = 1024;
/// Attempts at one report while the bridge is unreachable or answers 5xx: about a minute.
const ATTEMPTS: u32 = 7;
/// One report's time limit.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a worker could not run or report its run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0} is not set; the worker runs only in a pod the Job executor made")]
    MissingVariable(&'static str),
    #[error("failed to read the run from {path}")]
    ReadRun {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the run in {path} does not parse")]
    ParseRun {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the run names the adapter `{0}`, which this image does not have")]
    UnknownAdapter(String),
    #[error("failed to open the worker's store")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Profile(#[from] crate::adapter::profile::ProfileError),
    #[error(transparent)]
    Carried(#[from] CarryError),
    #[error("the bridge refused the report ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("failed to reach the bridge at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// Where and how the worker reports.
struct Reporter {
    client: reqwest::Client,
    url: String,
    /// The bridge's base URL, for the artifact route.
    bridge_url: String,
    token: String,
}

/// Runs the run in `run_file` with `config` and reports it to the bridge.
pub async fn run(config: Config, run_file: &Path) -> Result<(), WorkerError> {
    let var = |name: &'static str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(WorkerError::MissingVariable(name))
    };
    let bridge_url = var("HB_WORKER_BRIDGE_URL")?;
    let token = var("HB_WORKER_TOKEN")?;
    let text = std::fs::read(run_file).map_err(|source| WorkerError::ReadRun {
        path: run_file.to_owned(),
        source,
    })?;
    let record: RunRecord =
        serde_json::from_slice(&text).map_err(|source| WorkerError::ParseRun {
            path: run_file.to_owned(),
            source,
        })?;
    let span = tracing::info_span!("run", run_id = %record.id, adapter = %record.spec.adapter);
    let _entered = span.enter();

    let reporter = Arc::new(Reporter {
        client: reqwest::Client::builder()
            .timeout(REPORT_TIMEOUT)
            .build()
            .expect("a plain HTTP client builds"),
        url: format!(
            "{}{}",
            bridge_url.trim_end_matches('/'),
            REPORT_ROUTE.replace("{id}", &record.id.to_string())
        ),
        bridge_url: bridge_url.trim_end_matches('/').to_owned(),
        token,
    });
    let run_dir = run_file.parent().unwrap_or(Path::new("."));
    let pipeline = pipeline(config, &record, run_dir)?;
    let stop = pipeline.stop.clone();
    tokio::spawn(async move {
        terminated().await;
        tracing::warn!("SIGTERM: stopping the run");
        stop.cancel();
    });

    // Relay every sink call to the bridge while the run goes.
    let (tx, rx) = mpsc::unbounded_channel();
    let forwarder = tokio::spawn(forward(reporter.clone(), rx));
    let mut sink = EventSink::relay(tx);
    let given = std::fs::read(pipeline.config.codex.auth_path().unwrap_or_default()).ok();
    let (mut finished, workspace) = pipeline.execute(record, &mut sink).await;
    drop(sink);
    if let Some(workspace) = workspace {
        let _ = tokio::task::spawn_blocking(move || workspace.remove()).await;
    }
    let forwarded = forwarder.await.unwrap_or(Ok(()));

    finished.state = RunState::Finished;
    finished.finished_at = Some(OffsetDateTime::now_utc());
    send_artifacts(&reporter, &pipeline.config, &mut finished).await;
    // The working copy holds whatever the CLI refreshed during the run.
    let working = pipeline.config.data_dir.join("credentials/codex/auth.json");
    let login = std::fs::read(working)
        .ok()
        .filter(|left| Some(left) != given.as_ref())
        .and_then(|left| String::from_utf8(left).ok())
        .map(Login);
    tracing::info!(outcome = ?finished.outcome, reason = ?finished.reason, "run finished; reporting");
    let report = Report {
        calls: Vec::new(),
        finished: Some(Box::new(finished)),
        login,
    };
    reporter.send(&report).await?;
    forwarded
}

/// The local pipeline, set up in the pod as the engine would set it up in the bridge, with
/// what the run carried in `run_dir`.
fn pipeline(
    mut config: Config,
    record: &RunRecord,
    run_dir: &Path,
) -> Result<Pipeline, WorkerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| WorkerError::ReadRun {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&config.data_dir.join("runs.sqlite3"))?;
    let name = &record.spec.adapter;
    let adapter = match carry::carried_profile(run_dir, name)? {
        Some(profile) => Adapter::Profile(Arc::new(profile)),
        None => crate::server::load_adapters(&config)?
            .get(name)
            .ok_or_else(|| WorkerError::UnknownAdapter(name.clone()))?,
    };
    // The repository host's credential, laid out as the bridge's credentials directory holds
    // it; a URL that does not parse is refused by the clone as it would be in the bridge.
    let url = record
        .spec
        .repo
        .as_ref()
        .and_then(|r| url::Url::parse(&r.url).ok());
    if let Some(url) = url {
        let dest = config.data_dir.join("git-credentials");
        config.git_credentials_dir = carry::lay_out_git(run_dir, &url, &dest)?;
    }
    let policy = UrlPolicy::new(&config.allowed_hosts);
    let login = Arc::new(WorkingCopy::new(&config.data_dir, config.codex.clone()));
    Ok(Pipeline {
        fetcher: Fetcher::new(policy.clone(), config.fetch.clone()),
        policy,
        store,
        stop: CancellationToken::new(),
        cancel_requested: Arc::new(AtomicBool::new(false)),
        adapter,
        login,
        // The pod's own counters: nobody scrapes a worker; the bridge counts the run.
        metrics: Arc::default(),
        config: Arc::new(config),
    })
}

/// Sends each artifact the run kept to the bridge. One the bridge does not take is left out
/// of the record, with the reason in its logs, as a local run notes an artifact it could not
/// keep; the run's outcome stands.
async fn send_artifacts(reporter: &Reporter, config: &Config, finished: &mut RunRecord) {
    let store = crate::artifacts::store_dir(&config.data_dir, &finished.id.to_string());
    let mut sent = Vec::with_capacity(finished.artifacts.len());
    for artifact in std::mem::take(&mut finished.artifacts) {
        let result = match crate::artifacts::read(&store, &artifact.path) {
            Ok(bytes) => {
                reporter
                    .send_artifact(finished.id, &artifact.path, bytes)
                    .await
            }
            Err(e) => Err(format!("the worker could not read it back ({e})")),
        };
        match result {
            Ok(()) => sent.push(artifact),
            Err(why) => {
                tracing::warn!(path = %artifact.path, %why, "an artifact was not taken");
                finished
                    .logs
                    .push_str(&format!("\nartifact `{}` not kept: {why}", artifact.path));
            }
        }
    }
    finished.artifacts = sent;
}

/// Sends the sink's calls in batches until the sink is dropped.
async fn forward(
    reporter: Arc<Reporter>,
    mut rx: mpsc::UnboundedReceiver<Relayed>,
) -> Result<(), WorkerError> {
    let mut calls = Vec::with_capacity(BATCH);
    let mut result = Ok(());
    while rx.recv_many(&mut calls, BATCH).await > 0 {
        let report = Report {
            calls: std::mem::take(&mut calls),
            ..Report::default()
        };
        if result.is_ok()
            && let Err(e) = reporter.send(&report).await
        {
            // Keep draining so the run is never held up; the outcome report will try again.
            tracing::error!(error = %crate::error_chain(&e), "failed to report events");
            result = Err(e);
        }
    }
    result
}

impl Reporter {
    /// PUTs one artifact; says why when the bridge did not take it. A refusal (such as 413
    /// `artifact_too_large`) is final; an unreachable bridge is tried again as reports are.
    async fn send_artifact(
        &self,
        id: crate::run::RunId,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        let route = ARTIFACT_ROUTE
            .replace("{id}", &id.to_string())
            .replace("/{*path}", "");
        let mut url = url::Url::parse(&format!("{}{route}", self.bridge_url))
            .map_err(|e| format!("the bridge URL does not parse ({e})"))?;
        url.path_segments_mut()
            .map_err(|()| "the bridge URL cannot take a path".to_owned())?
            .extend(path.split('/'));
        let bytes = axum::body::Bytes::from(bytes);
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let answer = self
                .client
                .put(url.clone())
                .bearer_auth(&self.token)
                .body(bytes.clone())
                .send()
                .await;
            let why = match answer {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if !response.status().is_server_error() => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!("the bridge refused it ({status}): {body}"));
                }
                Ok(response) => format!("the bridge answered {}", response.status()),
                Err(e) => format!("the bridge could not be reached ({e})"),
            };
            if attempt >= ATTEMPTS {
                return Err(why);
            }
            tracing::warn!(attempt, "the bridge did not take an artifact; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(16));
            attempt += 1;
        }
    }

    /// POSTs `report`, retrying with backoff while the bridge is unreachable or answers 5xx.
    async fn send(&self, report: &Report) -> Result<(), WorkerError> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            let answer = self
                .client
                .post(&self.url)
                .bearer_auth(&self.token)
                .json(report)
                .send()
                .await;
            let retry = match answer {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if response.status().is_server_error() => Err(WorkerError::Refused {
                    status: response.status().as_u16(),
                    body: response.text().await.unwrap_or_default(),
                }),
                Ok(response) => {
                    return Err(WorkerError::Refused {
                        status: response.status().as_u16(),
                        body: response.text().await.unwrap_or_default(),
                    });
                }
                Err(source) => Err(WorkerError::Unreachable {
                    url: self.url.clone(),
                    source,
                }),
            };
            if attempt >= ATTEMPTS {
                return retry;
            }
            tracing::warn!(attempt, "the bridge did not take a report; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(16));
            attempt += 1;
        }
    }
}

/// Resolves on SIGTERM, what the kubelet sends when the Job is deleted.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
