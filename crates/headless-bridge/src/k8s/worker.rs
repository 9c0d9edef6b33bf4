//! `headless-bridge worker`: runs one run inside its Kubernetes Job's pod and reports it.
//!
//! The worker is the local executor's pipeline in a pod of its own: it reads the run from the
//! run's Secret (`--run`, mounted by `job.rs`), prepares the workspace (clone, tools, the
//! login from the same Secret) and runs the CLI under the same shim, limits and judgement as
//! the bridge would. Its event sink relays every call to the bridge as it is made, in batches
//! (`report.rs`); when the run has ended it sends the finished record, and the login if the
//! CLI refreshed it, then exits. The exit code says whether the bridge got the outcome (0), not
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

use super::report::{Login, REPORT_ROUTE, Report};
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
        token,
    });
    let pipeline = pipeline(config, &record)?;
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

/// The local pipeline, set up in the pod as the engine would set it up in the bridge.
fn pipeline(config: Config, record: &RunRecord) -> Result<Pipeline, WorkerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| WorkerError::ReadRun {
        path: config.data_dir.clone(),
        source,
    })?;
    let store = Store::open(&config.data_dir.join("runs.sqlite3"))?;
    let adapters = crate::server::load_adapters(&config)?;
    let adapter = adapters
        .get(&record.spec.adapter)
        .ok_or_else(|| WorkerError::UnknownAdapter(record.spec.adapter.clone()))?;
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
