//! One run, from a queued record to a finished one.
//!
//! The steps, in order: the login is read (the cheapest check); the repository is cloned; each
//! tool is downloaded and verified; only then is the login copied into the run's private
//! CODEX_HOME (or, for a profile adapter, its secrets read and its files placed in the private
//! HOME) and the CLI started, so a bad checksum means the CLI never ran. While the CLI
//! runs, its output feeds both the event log and a transcript of its event stream; when it
//! ends, the stream decides the outcome, the diff is taken, and everything reported is
//! redacted. Cancellation is honoured at every step.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::adapter::codex::{self, RunDirs};
use crate::adapter::prepare::{self as adapter_prepare, Prepared as CliCommand};
use crate::adapter::{self, Adapter};
use crate::config::Config;
use crate::credentials::{self, LoadedAuth, WorkingCopy, WriterGuard};
use crate::fetch::Fetcher;
use crate::git::{Checkout, Git};
use crate::metrics::Metrics;
use crate::policy::UrlPolicy;
use crate::redact::{self, Redactor};
use crate::run::events::{EventKind, EventSink};
use crate::run::supervisor::{self, ExitKind, ProcessSpec, RUN_MARKER, StopCause, Stream};
use crate::run::{Outcome, ReasonCode, RunRecord, RunSpec, RunState};
use crate::store::Store;
use crate::workspace::prepare::Preparer;
use crate::workspace::{SizeWatch, Workspace};

use super::failure::{Failure, apply_failure, cli_not_started, is_login_failure, judge};

/// What preparation leaves for the CLI's run.
struct Prepared<'a> {
    checkout: Option<Checkout>,
    /// The login given to the CLI, when the adapter has one.
    login: Option<LoadedAuth>,
    /// Held until the CLI is done with a login it may refresh.
    _writer: Option<WriterGuard<'a>>,
}

/// How often the workspace is measured while the CLI runs: walking a large clone costs, and a
/// CLI writes far slower than a clone does.
const CLI_SIZE_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The readable account kept in a record; beyond it, the head and tail are kept.
const MAX_LOGS_BYTES: usize = 1 << 20;

/// What a run needs from the engine.
pub(crate) struct Pipeline {
    pub config: Arc<Config>,
    pub store: Store,
    pub fetcher: Fetcher,
    pub policy: UrlPolicy,
    /// Stops the run: a cancel request, or the bridge shutting down.
    pub stop: CancellationToken,
    /// Set when the stop was a cancel request rather than a shutdown.
    pub cancel_requested: Arc<AtomicBool>,
    /// The adapter of this run.
    pub adapter: Adapter,
    /// The Codex login's working copy, shared by every run.
    pub login: Arc<WorkingCopy>,
    /// Where the CLI's output bytes are counted.
    pub metrics: Arc<Metrics>,
}

impl Pipeline {
    /// Drives `record` to its end, recording each state in the store and the event log.
    /// Runs the whole pipeline. Returns the finished record and, unless workspaces are kept,
    /// the workspace still to be removed: removing a CLI's home takes long enough (Codex leaves
    /// hundreds of files) that the caller publishes the outcome first.
    pub async fn execute(
        &self,
        mut record: RunRecord,
        sink: &mut EventSink,
    ) -> (RunRecord, Option<Workspace>) {
        tracing::info!("run started");
        self.enter(&mut record, RunState::Preparing, sink).await;
        record.started_at = Some(OffsetDateTime::now_utc());

        // Directory work blocks, so it runs on the blocking pool, never on a runtime worker.
        let workspaces = self.config.data_dir.join("workspaces");
        let (dir, id) = (workspaces.clone(), record.id);
        let created = tokio::task::spawn_blocking(move || Workspace::create(&dir, id))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match created {
            Ok(workspace) => {
                self.run_in(&mut record, &workspace, sink).await;
                let leftover = (!self.config.keep_workspaces).then_some(workspace);
                (record, leftover)
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
                (record, None)
            }
        }
    }

    /// The record of a run cancelled before it started.
    pub fn cancelled_in_queue(&self, mut record: RunRecord) -> RunRecord {
        apply_failure(&mut record, self.stop_failure());
        record
    }

    async fn enter(&self, record: &mut RunRecord, state: RunState, sink: &mut EventSink) {
        record.state = state;
        sink.state(json!({ "state": state }));
        if let Err(e) = self.store.put(record).await {
            tracing::error!(error = %crate::error_chain(&e), "failed to store a run record");
        }
    }

    async fn run_in(&self, record: &mut RunRecord, workspace: &Workspace, sink: &mut EventSink) {
        let mut redactor = Redactor::new(self.config.api_tokens.values().iter().cloned());
        redactor.extend(redact::proxy_secrets());
        let mut account = Vec::new();
        // The run's time limit covers preparation too: a slow clone or download counts.
        let deadline = Instant::now() + Duration::from_secs(record.spec.timeout_s);
        let result = self
            .prepare_and_run(
                record,
                workspace,
                deadline,
                &mut redactor,
                &mut account,
                sink,
            )
            .await;
        if let Err(failure) = result {
            account.push(format!("run failed: {}", failure.message));
            apply_failure(record, failure);
        }
        record.logs = cap_text(redactor.redact(&account.join("\n")), MAX_LOGS_BYTES);
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
        deadline: Instant,
        redactor: &mut Redactor,
        account: &mut Vec<String>,
        sink: &mut EventSink,
    ) -> Result<(), Failure> {
        // Preparation is abandoned (its git and downloads with it) on a stop or the deadline;
        // the CLI itself is stopped by its supervisor, which cleans up its processes.
        let prepared = tokio::select! {
            prepared = self.prepare(&record.spec, workspace, redactor, account, sink) => prepared,
            () = self.stop.cancelled() => Err(self.stop_failure()),
            () = tokio::time::sleep_until(deadline.into()) => Err(Failure {
                outcome: Outcome::TimedOut,
                ..Failure::failed(ReasonCode::TimedOut, format!(
                    "the run did not finish preparing within its {}s limit", record.spec.timeout_s
                ))
            }),
        };
        let prepared = prepared?;
        let dirs = &workspace.dirs;
        let command = match &self.adapter {
            Adapter::Codex => {
                let (program, args, env) =
                    codex::command(self.login.config(), dirs, &record.spec.prompt);
                CliCommand {
                    program,
                    args,
                    env,
                    secrets: Vec::new(),
                    run_as: None,
                }
            }
            Adapter::Profile(profile) => {
                let mut prepared = adapter_prepare::prepare(profile, dirs, &record.spec.prompt)?;
                redactor.extend(prepared.secrets.drain(..));
                let mut env = adapter::run_environment(dirs);
                env.append(&mut prepared.env);
                CliCommand { env, ..prepared }
            }
        };

        self.enter(record, RunState::Running, sink).await;
        let result = self
            .run_cli(record, command, dirs, deadline, account, redactor, sink)
            .await;
        self.preparer()
            .keep_artifacts(record, &dirs.work, redactor, account);
        if let Some(given) = &prepared.login {
            // The CLI may have refreshed its tokens during the run: keep them, and mask them.
            redactor.extend(credentials::secrets_in(&dirs.codex_home.join("auth.json")));
            self.check_in_login(given, &dirs.codex_home.join("auth.json"), &result)
                .await;
        }
        drop(prepared._writer);

        if let Some(checkout) = &prepared.checkout {
            match Git::new(&dirs.home).diff(checkout).await {
                Ok(diff) => record.diff = diff,
                Err(e) => account.push(format!("could not take the diff: {e}")),
            }
        }
        result
    }

    /// Everything before the CLI starts: the login, the clone, the tools, the private homes.
    async fn prepare(
        &self,
        spec: &RunSpec,
        workspace: &Workspace,
        redactor: &mut Redactor,
        account: &mut Vec<String>,
        sink: &mut EventSink,
    ) -> Result<Prepared<'_>, Failure> {
        let dirs = &workspace.dirs;
        // Fail fast on a broken login, before any clone or download.
        if let Adapter::Codex = self.adapter {
            let auth = self.login.checkout()?;
            redactor.extend(auth.secrets().iter().cloned());
        }

        let mut report = |line: String| {
            sink.notice(line.clone());
            account.push(line);
        };
        let preparer = self.preparer();
        let repo = spec.repo.as_ref();
        let checkout = preparer
            .clone_repo(repo, workspace, redactor, &mut report)
            .await?;
        preparer
            .fetch_tools(&spec.tools, workspace, &mut report)
            .await?;

        let (login, writer) = match self.adapter {
            Adapter::Codex => {
                // Wait for any other run that may refresh this login, then take the working
                // copy as that run left it.
                let peek = self.login.checkout()?;
                let writer = self.login.writer(&peek).await;
                let auth = self.login.checkout()?;
                redactor.extend(auth.secrets().iter().cloned());
                self.login
                    .install(&auth, &dirs.codex_home)
                    .await
                    .map_err(|e| {
                        Failure::failed(
                            ReasonCode::WorkspaceError,
                            format!("failed to copy the login: {e}"),
                        )
                    })?;
                (Some(auth), Some(writer))
            }
            Adapter::Profile(_) => (None, None),
        };
        write_profiles(dirs)?;
        Ok(Prepared {
            checkout,
            login,
            _writer: writer,
        })
    }

    /// Keeps what the CLI did to its login (and writes a refresh back to the Secret, when
    /// configured, before the next run of the login may start), and notes how the login fared.
    pub(crate) async fn check_in_login(
        &self,
        given: &LoadedAuth,
        run_auth: &Path,
        result: &Result<(), Failure>,
    ) {
        match self.login.check_in(run_auth, given) {
            Ok(true) => self.login.write_back().await,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "failed to keep the refreshed login; the next run may find it burnt")
            }
        }
        match result {
            Ok(()) => self.login.record_run(None),
            Err(failure) if is_login_failure(failure.reason) => {
                self.login.record_run(Some(failure.reason))
            }
            Err(_) => {}
        }
    }

    fn preparer(&self) -> Preparer<'_> {
        Preparer {
            config: &self.config,
            policy: &self.policy,
            fetcher: &self.fetcher,
        }
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the run's record, command, directories, deadline and its three report sinks are all distinct"
    )]
    async fn run_cli(
        &self,
        record: &mut RunRecord,
        command: CliCommand,
        dirs: &RunDirs,
        deadline: Instant,
        account: &mut Vec<String>,
        redactor: &Redactor,
        sink: &mut EventSink,
    ) -> Result<(), Failure> {
        let CliCommand {
            program,
            args,
            env,
            run_as,
            ..
        } = command;
        let idle = record
            .spec
            .idle_timeout_s
            .map_or(self.config.run_idle_timeout, Duration::from_secs);
        let run_as_uid = run_as.as_ref().map(|user| user.uid);
        let spec = ProcessSpec {
            program: program.clone(),
            args,
            env,
            cwd: dirs.work.clone(),
            marker: (RUN_MARKER.to_owned(), record.id.to_string()),
            timeout: deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
            idle_timeout: Some(idle),
            shim: self.config.shim_bin.clone(),
            run_as: run_as.map(|user| (user.uid, user.gid)),
        };

        let mut reader = self.adapter.reader();
        // A prompt detector stops only this process; the run's own stop token stays for
        // cancel requests and shutdown, so the three causes can be told apart.
        let process_stop = self.stop.child_token();
        let mut blocked_on: Option<String> = None;
        let adapter_name = &record.spec.adapter;
        let stdout_bytes = self.metrics.output_bytes(adapter_name, Stream::Stdout);
        let stderr_bytes = self.metrics.output_bytes(adapter_name, Stream::Stderr);
        let on_lines = |stream: Stream, lines: &[String]| {
            for line in lines {
                // Counted as read, before redaction: the bytes the CLI printed, line feed included.
                let counter = match stream {
                    Stream::Stdout => &stdout_bytes,
                    Stream::Stderr => &stderr_bytes,
                };
                counter.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                let line = redactor.redact(line);
                if let (Adapter::Profile(profile), None) = (&self.adapter, &blocked_on)
                    && let Some(pattern) = profile.prompt_in(&line)
                {
                    blocked_on = Some(pattern.to_owned());
                    process_stop.cancel();
                }
                match stream {
                    Stream::Stdout => match reader.observe(&line) {
                        Some(event) => sink.line(EventKind::CliEvent, &line, Some(event)),
                        None => sink.line(EventKind::Output, &line, None),
                    },
                    Stream::Stderr => {
                        reader.observe_stderr(&line);
                        sink.line(EventKind::Stderr, &line, None);
                    }
                }
            }
            // What was read so far is in the log file, for `GET .../logs` while the CLI runs.
            sink.flush_log();
        };
        // The workspace limit holds while the CLI runs too: a watcher stops it past the limit.
        let root = dirs
            .work
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| dirs.work.clone());
        let watch = SizeWatch::every(
            root,
            self.config.workspace.max_bytes,
            CLI_SIZE_WATCH_INTERVAL,
        );
        let over_limit = Arc::new(std::sync::OnceLock::new());
        let watcher = {
            let (over_limit, stop) = (over_limit.clone(), process_stop.clone());
            tokio::spawn(async move {
                let _ = over_limit.set(watch.exceeded().await);
                stop.cancel();
            })
        };
        let outcome = supervisor::run_batches(spec, process_stop.clone(), on_lines).await;
        watcher.abort();
        let outcome = outcome.map_err(|e| cli_not_started(&program, &e, run_as_uid))?;

        account.extend(reader.account());
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
        record.usage = reader.usage();
        record.output = reader.output();
        if let Some(used) = over_limit.get() {
            let limit = self.config.workspace.max_bytes;
            return Err(Failure::failed(
                ReasonCode::WorkspaceDiskFull,
                format!(
                    "the CLI filled its workspace to {used} bytes, past the limit of {limit} \
                     (HB_WORKSPACE_MAX_BYTES), and was stopped"
                ),
            ));
        }
        if let Some(pattern) = blocked_on {
            let message = format!(
                "the CLI stopped to ask a person something (its output matched `{pattern}`)"
            );
            return Err(Failure::failed(
                ReasonCode::InteractivePromptBlocked,
                message,
            ));
        }
        if outcome.stopped == Some(StopCause::Cancelled) {
            return Err(self.stop_failure());
        }
        judge(&reader, &outcome, record.spec.timeout_s, idle.as_secs())?;
        record.outcome = Some(Outcome::Succeeded);
        Ok(())
    }

    /// Why the run stopped when its stop token fired.
    pub(crate) fn stop_failure(&self) -> Failure {
        if self.cancel_requested.load(Ordering::SeqCst) {
            Failure {
                outcome: Outcome::Cancelled,
                ..Failure::failed(ReasonCode::Cancelled, "the run was cancelled by request")
            }
        } else {
            Failure {
                outcome: Outcome::Interrupted,
                ..Failure::failed(
                    ReasonCode::Interrupted,
                    "the bridge shut down while the run was in progress",
                )
            }
        }
    }
}

fn write_profiles(dirs: &RunDirs) -> Result<(), Failure> {
    let profile = codex::shell_profile(&dirs.bin);
    for name in [".bash_profile", ".profile"] {
        let path: PathBuf = dirs.home.join(name);
        overwrite(&path, profile.as_bytes()).map_err(|e| {
            Failure::failed(
                ReasonCode::WorkspaceError,
                format!("failed to write {}: {e}", path.display()),
            )
        })?;
    }
    Ok(())
}

/// Writes `contents` over the file at `path` (never through a link), creating it if needed.
///
/// A recycled workspace keeps the previous run's profiles, of the same length as the next
/// ones, so the file is written in place and cut only when it was longer. Truncating first
/// would free its blocks and allocate them again on every run, and on a file system mounted
/// with `discard` each freeing waits for the disk.
fn overwrite(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)?;
    file.write_all(contents)?;
    let len = contents.len() as u64;
    if file.metadata()?.len() > len {
        file.set_len(len)?;
    }
    Ok(())
}

/// `text` cut to `max` bytes: its first quarter and last three quarters, with a marker.
fn cap_text(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let head = text.floor_char_boundary(max / 4);
    let tail = text.ceil_char_boundary(text.len() - (max - max / 4));
    let dropped = tail - head;
    format!(
        "{}\n[{dropped} bytes of the account dropped here]\n{}",
        &text[..head],
        &text[tail..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_overwritten_whole_whatever_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".profile");
        overwrite(&path, b"a longer profile left by an earlier run\n").unwrap();
        overwrite(&path, b"short\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"short\n");
        overwrite(&path, b"longer again\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"longer again\n");
    }

    #[test]
    fn a_profile_replaced_by_a_link_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let path = dir.path().join(".profile");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(overwrite(&path, b"PATH=x\n").is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }

    #[test]
    fn long_accounts_keep_their_head_and_tail() {
        let text = format!("{}{}", "a".repeat(3000), "z".repeat(3000));
        let capped = cap_text(text, 1000);
        assert!(
            capped.starts_with(&"a".repeat(250)) && capped.ends_with(&"z".repeat(750)),
            "{capped}"
        );
        assert!(capped.contains("[5000 bytes of the account dropped here]"));
    }
}
