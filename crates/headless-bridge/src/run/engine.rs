//! The run engine: takes a validated [`RunSpec`] and drives it to an outcome.
//!
//! Theory of operation. `submit` stores a queued record and starts a task for the run; the
//! record in the store is the truth, and every state change is written there before anyone is
//! told. The task prepares the workspace in order: the login is read first (cheapest check),
//! then the repository is cloned, then each tool is downloaded and verified, and only then is
//! the login copied in and the CLI started, so a bad checksum means the CLI never ran. While
//! the CLI runs, its event stream is folded into a transcript; when it ends, the stream decides
//! the outcome, the diff is taken, the account is redacted, and the finished record is stored.
//! Waiters are woken through a watch channel per run. Shutting down cancels every run, which
//! then finishes as interrupted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::adapter::codex::{self, RunDirs};
use crate::adapter::codex_events::{self, Terminal, Transcript};
use crate::config::Config;
use crate::credentials::{self, CredentialError};
use crate::fetch::Fetcher;
use crate::git::{Checkout, Git};
use crate::policy::UrlPolicy;
use crate::redact::Redactor;
use crate::run::supervisor::{self, ExitKind, ProcessSpec, StopCause};
use crate::run::{Outcome, ReasonCode, RunId, RunRecord, RunSpec, RunState};
use crate::store::{Store, StoreError};
use crate::workspace::Workspace;
use crate::workspace::prepare::{PrepareError, Preparer};

/// The environment variable that marks every process of a run, for the supervisor's sweep.
const RUN_MARKER: &str = "HEADLESS_BRIDGE_RUN";

/// Starts runs and tells callers when they finish. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Store,
    fetcher: Fetcher,
    policy: UrlPolicy,
    done: Mutex<HashMap<RunId, watch::Receiver<bool>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Why a run stopped before or instead of its CLI finishing.
#[derive(Debug)]
struct Failure {
    outcome: Outcome,
    reason: ReasonCode,
    message: String,
    details: Option<serde_json::Value>,
}

impl Failure {
    fn failed(reason: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed,
            reason,
            message: message.into(),
            details: None,
        }
    }
}

impl From<CredentialError> for Failure {
    fn from(err: CredentialError) -> Self {
        Self::failed(err.reason(), err.to_string())
    }
}

impl From<PrepareError> for Failure {
    fn from(err: PrepareError) -> Self {
        Self {
            details: err.details,
            ..Self::failed(err.reason, err.message)
        }
    }
}

impl Engine {
    /// An engine over `store`; runs write their workspaces under the configured data directory.
    pub fn new(config: Arc<Config>, store: Store) -> Self {
        let policy = UrlPolicy::new(&config.allowed_hosts);
        let inner = Inner {
            fetcher: Fetcher::new(policy.clone(), config.fetch.clone()),
            policy,
            config,
            store,
            done: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The URL policy runs are checked against.
    pub fn policy(&self) -> &UrlPolicy {
        &self.inner.policy
    }

    /// The store runs are recorded in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Stores a queued run for `spec` and starts it.
    pub async fn submit(&self, spec: RunSpec) -> Result<RunRecord, StoreError> {
        let record = RunRecord::queued(spec);
        self.inner.store.put(&record).await?;

        let (done_tx, done_rx) = watch::channel(false);
        self.lock_done().insert(record.id, done_rx);
        let span = tracing::info_span!("run", run_id = %record.id, adapter = "codex",
            contract_id = record.spec.contract_id.as_deref().unwrap_or(""));
        let engine = self.clone();
        let (id, queued) = (record.id, record.clone());
        self.inner.tasks.spawn(
            async move {
                engine.execute(queued).await;
                engine.lock_done().remove(&id);
                let _ = done_tx.send(true);
            }
            .instrument(span),
        );
        Ok(record)
    }

    /// The run's record once it has finished, or as it stands after `max_wait`.
    pub async fn wait(
        &self,
        id: RunId,
        max_wait: Duration,
    ) -> Result<Option<RunRecord>, StoreError> {
        let receiver = self.lock_done().get(&id).cloned();
        if let Some(mut receiver) = receiver {
            let _ = tokio::time::timeout(max_wait, receiver.wait_for(|done| *done)).await;
        }
        self.inner.store.get(id).await
    }

    /// Cancels every run in progress and waits for them to be recorded.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn lock_done(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, watch::Receiver<bool>>> {
        self.inner
            .done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn execute(&self, mut record: RunRecord) {
        tracing::info!("run started");
        record.state = RunState::Preparing;
        record.started_at = Some(OffsetDateTime::now_utc());
        self.save(&record).await;

        let workspaces = self.inner.config.data_dir.join("workspaces");
        match Workspace::create(&workspaces, record.id) {
            Ok(workspace) => {
                self.run_in(&mut record, &workspace).await;
                if !self.inner.config.keep_workspaces {
                    let root = workspace.root().to_owned();
                    if let Err(e) = workspace.remove() {
                        tracing::warn!(error = %e, path = %root.display(), "failed to remove a workspace");
                    }
                }
            }
            Err(e) => {
                let message = format!(
                    "failed to create the run's workspace under {}: {e}",
                    workspaces.display()
                );
                tracing::error!(%message);
                apply_failure(
                    &mut record,
                    Failure::failed(ReasonCode::WorkspaceError, message),
                );
            }
        }

        record.state = RunState::Finished;
        record.finished_at = Some(OffsetDateTime::now_utc());
        self.save(&record).await;
        tracing::info!(outcome = ?record.outcome, reason = ?record.reason, "run finished");
    }

    async fn run_in(&self, record: &mut RunRecord, workspace: &Workspace) {
        let mut redactor = Redactor::new(self.inner.config.api_tokens.values().iter().cloned());
        let mut account = Vec::new();
        let result = self
            .prepare_and_run(record, workspace, &mut redactor, &mut account)
            .await;
        if let Err(failure) = result {
            account.push(format!("run failed: {}", failure.message));
            apply_failure(record, failure);
        }
        record.logs = redactor.redact(&account.join("\n"));
        record.output = redactor.redact(&record.output);
        record.diff = redactor.redact(&record.diff);
        if let Some(message) = record.message.take() {
            record.message = Some(redactor.redact(&message));
        }
    }

    async fn prepare_and_run(
        &self,
        record: &mut RunRecord,
        workspace: &Workspace,
        redactor: &mut Redactor,
        account: &mut Vec<String>,
    ) -> Result<(), Failure> {
        let config = &self.inner.config;
        let dirs = &workspace.dirs;
        let auth = credentials::load(&config.codex)?;
        redactor.extend(auth.secrets().iter().cloned());

        let checkout = self
            .clone_repo(&record.spec, workspace, redactor, account)
            .await?;
        self.fetch_tools(&record.spec, workspace, account).await?;
        credentials::install(&auth, &config.codex, &dirs.codex_home).map_err(|e| {
            Failure::failed(
                ReasonCode::WorkspaceError,
                format!("failed to copy the login: {e}"),
            )
        })?;
        write_profiles(dirs)?;

        record.state = RunState::Running;
        self.save(record).await;
        let result = self.run_cli(record, dirs, account).await;
        self.preparer()
            .keep_artifacts(record, &dirs.work, redactor, account);

        if let Some(checkout) = &checkout {
            match Git::new(&dirs.home).diff(checkout).await {
                Ok(diff) => record.diff = diff,
                Err(e) => account.push(format!("could not take the diff: {e}")),
            }
        }
        result
    }

    fn preparer(&self) -> Preparer<'_> {
        Preparer {
            config: &self.inner.config,
            policy: &self.inner.policy,
            fetcher: &self.inner.fetcher,
        }
    }

    async fn clone_repo(
        &self,
        spec: &RunSpec,
        workspace: &Workspace,
        redactor: &mut Redactor,
        account: &mut Vec<String>,
    ) -> Result<Option<Checkout>, Failure> {
        let repo = spec.repo.as_ref();
        let preparer = self.preparer();
        Ok(preparer
            .clone_repo(repo, workspace, redactor, account)
            .await?)
    }

    async fn fetch_tools(
        &self,
        spec: &RunSpec,
        workspace: &Workspace,
        account: &mut Vec<String>,
    ) -> Result<(), Failure> {
        let preparer = self.preparer();
        Ok(preparer
            .fetch_tools(&spec.tools, workspace, account)
            .await?)
    }

    async fn run_cli(
        &self,
        record: &mut RunRecord,
        dirs: &RunDirs,
        account: &mut Vec<String>,
    ) -> Result<(), Failure> {
        let (program, args, env) =
            codex::command(&self.inner.config.codex, dirs, &record.spec.prompt);
        let spec = ProcessSpec {
            program: program.clone(),
            args,
            env,
            cwd: dirs.work.clone(),
            marker: (RUN_MARKER.to_owned(), record.id.to_string()),
            timeout: Duration::from_secs(record.spec.timeout_s),
        };

        let mut transcript = Transcript::default();
        let outcome = supervisor::run(spec, self.inner.shutdown.child_token(), |line| {
            transcript.observe(line)
        })
        .await
        .map_err(|e| cli_not_started(&program, &e))?;
        account.extend(transcript.account.iter().cloned());
        let stderr = codex::meaningful_stderr(&outcome.stderr);
        if !stderr.is_empty() {
            account.push("--- stderr ---".into());
            account.push(stderr);
        }
        if outcome.stderr_dropped > 0 {
            account.push(format!(
                "[{} more bytes of stderr dropped]",
                outcome.stderr_dropped
            ));
        }
        if outcome.stragglers_killed > 0 {
            account.push(format!(
                "killed {} processes left behind by the CLI",
                outcome.stragglers_killed
            ));
        }

        record.exit_code = match outcome.exit {
            ExitKind::Code(code) => Some(code),
            ExitKind::Signal(_) => None,
        };
        record.usage = transcript.usage.clone();
        record.output = transcript.output().to_owned();
        judge(&transcript, &outcome, record.spec.timeout_s)?;
        record.outcome = Some(Outcome::Succeeded);
        Ok(())
    }

    async fn save(&self, record: &RunRecord) {
        // A store that cannot be written is our fault and loud; the run itself goes on, and the
        // final write is tried again when it finishes.
        if let Err(e) = self.inner.store.put(record).await {
            tracing::error!(error = %error_chain(&e), "failed to store a run record");
        }
    }
}

/// Decides a finished CLI's outcome from its event stream, the way the CLI itself reported it.
fn judge(
    transcript: &Transcript,
    outcome: &supervisor::ProcessOutcome,
    timeout_s: u64,
) -> Result<(), Failure> {
    match outcome.stopped {
        Some(StopCause::TimedOut) => {
            return Err(Failure {
                outcome: Outcome::TimedOut,
                ..Failure::failed(
                    ReasonCode::TimedOut,
                    format!("the run did not finish within {timeout_s}s and was stopped"),
                )
            });
        }
        Some(StopCause::Cancelled) => {
            return Err(Failure {
                outcome: Outcome::Interrupted,
                ..Failure::failed(
                    ReasonCode::Interrupted,
                    "the bridge shut down while the run was in progress",
                )
            });
        }
        None => {}
    }
    match (&transcript.terminal, &outcome.exit) {
        (Some(Terminal::Completed), _) => Ok(()),
        (Some(Terminal::Failed { message }), _) => Err(Failure::failed(
            codex_events::failure_reason(message),
            message.clone(),
        )),
        (None, ExitKind::Code(2)) => Err(Failure::failed(
            ReasonCode::CliUsageError,
            cli_stopped_message(transcript, outcome),
        )),
        (None, _) => Err(Failure::failed(
            ReasonCode::CliError,
            cli_stopped_message(transcript, outcome),
        )),
    }
}

/// What to say when the CLI ended without a turn outcome: its last error, else the first
/// meaningful stderr line (its backtraces are noise).
fn cli_stopped_message(transcript: &Transcript, outcome: &supervisor::ProcessOutcome) -> String {
    let exit = match outcome.exit {
        ExitKind::Code(code) => format!("exit code {code}"),
        ExitKind::Signal(signal) => format!("signal {signal}"),
    };
    let detail = transcript.last_error.clone().or_else(|| {
        outcome
            .stderr
            .lines()
            .map(str::trim)
            .find(|l| {
                !l.is_empty() && !l.starts_with("WARNING") && !l.starts_with("Stack backtrace")
            })
            .map(str::to_owned)
    });
    match detail {
        Some(detail) => format!("the CLI stopped ({exit}) without finishing its turn: {detail}"),
        None => format!("the CLI stopped ({exit}) without finishing its turn"),
    }
}

fn cli_not_started(program: &std::path::Path, err: &std::io::Error) -> Failure {
    let hint = if err.kind() == std::io::ErrorKind::NotFound {
        ": set HB_CODEX_BIN to the codex executable"
    } else {
        ""
    };
    Failure::failed(
        ReasonCode::CliNotFound,
        format!("failed to start {}: {err}{hint}", program.display()),
    )
}

fn write_profiles(dirs: &RunDirs) -> Result<(), Failure> {
    let profile = codex::shell_profile(&dirs.bin);
    for name in [".bash_profile", ".profile"] {
        let path: PathBuf = dirs.home.join(name);
        std::fs::write(&path, &profile).map_err(|e| {
            Failure::failed(
                ReasonCode::WorkspaceError,
                format!("failed to write {}: {e}", path.display()),
            )
        })?;
    }
    Ok(())
}

fn apply_failure(record: &mut RunRecord, failure: Failure) {
    record.outcome = Some(failure.outcome);
    record.reason = Some(failure.reason);
    record.message = Some(failure.message);
    record.details = failure.details;
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(
        exit: ExitKind,
        stopped: Option<StopCause>,
        stderr: &str,
    ) -> supervisor::ProcessOutcome {
        supervisor::ProcessOutcome {
            exit,
            stopped,
            stderr: stderr.into(),
            stderr_dropped: 0,
            duration: Duration::ZERO,
            stragglers_killed: 0,
        }
    }

    fn transcript(lines: &[&str]) -> Transcript {
        let mut t = Transcript::default();
        lines.iter().for_each(|l| t.observe(l));
        t
    }

    const FAILED: &str = r#"{"type":"turn.failed","error":{"message":"stream disconnected"}}"#;
    const COMPLETED: &str = r#"{"type":"turn.completed","usage":{}}"#;

    #[test]
    fn exit_code_zero_does_not_hide_a_failed_turn() {
        let err = judge(
            &transcript(&[FAILED]),
            &process(ExitKind::Code(0), None, ""),
            60,
        )
        .unwrap_err();
        assert_eq!(
            (err.outcome, err.reason),
            (Outcome::Failed, ReasonCode::UpstreamError)
        );
        assert_eq!(err.message, "stream disconnected");
    }

    #[test]
    fn exit_code_zero_without_a_terminal_event_is_not_success() {
        let err = judge(&transcript(&[]), &process(ExitKind::Code(0), None, ""), 60).unwrap_err();
        assert_eq!(err.reason, ReasonCode::CliError);
    }

    #[test]
    fn a_completed_turn_wins_over_a_nonzero_exit() {
        assert!(
            judge(
                &transcript(&[COMPLETED]),
                &process(ExitKind::Code(1), None, ""),
                60
            )
            .is_ok()
        );
    }

    #[test]
    fn a_usage_error_is_told_apart_and_explained_from_stderr() {
        let stderr = "error: unexpected argument '--bogus' found\n\nUsage: codex exec";
        let err = judge(
            &transcript(&[]),
            &process(ExitKind::Code(2), None, stderr),
            60,
        )
        .unwrap_err();
        assert_eq!(err.reason, ReasonCode::CliUsageError);
        assert!(
            err.message.contains("unexpected argument"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_timeout_wins_over_whatever_the_stream_said() {
        let err = judge(
            &transcript(&[COMPLETED]),
            &process(ExitKind::Signal(15), Some(StopCause::TimedOut), ""),
            5,
        )
        .unwrap_err();
        assert_eq!(
            (err.outcome, err.reason),
            (Outcome::TimedOut, ReasonCode::TimedOut)
        );
    }
}
