//! How a run that did not succeed says why: the [`Failure`] every step returns, and the
//! judgement of a finished CLI from what it reported, not from its exit code alone.

use crate::adapter::prepare::PrepareError as AdapterPrepareError;
use crate::adapter::{OutputReader, Verdict};
use crate::credentials::CredentialError;
use crate::run::supervisor::{self, ExitKind, StopCause};
use crate::run::{Outcome, ReasonCode, RunRecord};
use crate::workspace::prepare::PrepareError;

/// Why a run stopped before or instead of its CLI finishing.
#[derive(Debug)]
pub(crate) struct Failure {
    pub outcome: Outcome,
    pub reason: ReasonCode,
    pub message: String,
    pub details: Option<serde_json::Value>,
}

impl Failure {
    pub(crate) fn failed(reason: ReasonCode, message: impl Into<String>) -> Self {
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

impl From<AdapterPrepareError> for Failure {
    fn from(err: AdapterPrepareError) -> Self {
        Self::failed(err.reason(), err.to_string())
    }
}

/// Decides a finished CLI's outcome from its event stream, the way the CLI itself reported it.
pub(super) fn judge(
    reader: &OutputReader,
    outcome: &supervisor::ProcessOutcome,
    timeout_s: u64,
    idle_s: u64,
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
        Some(StopCause::Stalled) => {
            return Err(Failure {
                outcome: Outcome::TimedOut,
                ..Failure::failed(
                    ReasonCode::Stalled,
                    format!("the CLI printed nothing for {idle_s}s and was stopped"),
                )
            });
        }
        Some(StopCause::Cancelled) => {
            unreachable!("the caller turns a cancellation into its failure before judging")
        }
        None => {}
    }
    let exit_code = match outcome.exit {
        ExitKind::Code(code) => Some(code),
        ExitKind::Signal(_) => None,
    };
    match (reader.verdict(exit_code), &outcome.exit) {
        (Verdict::Succeeded, ExitKind::Code(0)) => Ok(()),
        // A CLI reports success and then exits 0; anything else means its stream cannot be
        // trusted (a command of the run may have written to the CLI's stdout and killed it).
        (Verdict::Succeeded, exit) => Err(Failure::failed(
            ReasonCode::CliError,
            format!(
                "the CLI reported success but then ended with {}",
                describe_exit(exit)
            ),
        )),
        (Verdict::Failed { reason, message }, _) => Err(Failure::failed(reason, message)),
        (Verdict::NoOutcome, ExitKind::Code(2)) => Err(Failure::failed(
            ReasonCode::CliUsageError,
            cli_stopped_message(reader, outcome),
        )),
        (Verdict::NoOutcome, _) => Err(Failure::failed(
            ReasonCode::CliError,
            cli_stopped_message(reader, outcome),
        )),
    }
}

/// What to say when the CLI ended without a turn outcome: its last error, else the first
/// meaningful stderr line (its backtraces are noise).
fn describe_exit(exit: &ExitKind) -> String {
    match exit {
        ExitKind::Code(code) => format!("exit code {code}"),
        ExitKind::Signal(signal) => format!("signal {signal}"),
    }
}

fn cli_stopped_message(reader: &OutputReader, outcome: &supervisor::ProcessOutcome) -> String {
    let exit = describe_exit(&outcome.exit);
    let detail = reader.last_error().or_else(|| {
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

/// The failure of a CLI that could not be started, by the bridge or by the run shim, saying
/// what the operator can do about it. `run_as_uid` is the user it was started as, when not
/// the bridge's own.
pub(super) fn cli_not_started(
    program: &std::path::Path,
    err: &std::io::Error,
    run_as_uid: Option<u32>,
) -> Failure {
    Failure::failed(
        ReasonCode::CliNotFound,
        cli_not_started_message(program, err, run_as_uid),
    )
}

/// What [`cli_not_started`] says, for whatever else starts a CLI (a session): the OS error and
/// what the operator can do about it.
pub(crate) fn cli_not_started_message(
    program: &std::path::Path,
    err: &std::io::Error,
    run_as_uid: Option<u32>,
) -> String {
    const SET_IT: &str = "set the adapter's executable (HB_CODEX_BIN, HB_CLAUDE_BIN, \
                          HB_GEMINI_BIN, or the profile's `executable`)";
    let shown = program.display();
    // A name without a slash is looked up on PATH, and execvp(3) reports EACCES when it met a
    // directory on PATH the user cannot search and found the name nowhere else: a CLI that is
    // simply not installed looks the same as one the user may not run.
    let on_path = !program.as_os_str().as_encoded_bytes().contains(&b'/');
    match (err.kind(), run_as_uid) {
        (std::io::ErrorKind::NotFound, _) => {
            format!("failed to start {shown}: {err}: install it, or {SET_IT}")
        }
        (std::io::ErrorKind::PermissionDenied, Some(uid)) if on_path => format!(
            "failed to start {shown}: not found on PATH, or not executable by uid {uid} \
             ({err}): install it where uid {uid} can run it, or {SET_IT}"
        ),
        (std::io::ErrorKind::PermissionDenied, Some(uid)) => format!(
            "failed to start {shown}: not executable by uid {uid}, or a directory above it \
             does not let uid {uid} pass ({err}): make it reachable (chmod o+x on the \
             directories, o+rx on the file), or {SET_IT}"
        ),
        (std::io::ErrorKind::PermissionDenied, None) => format!(
            "failed to start {shown}: {err}: make it executable by the bridge's user, or \
             {SET_IT}"
        ),
        _ => format!("failed to start {shown}: {err}"),
    }
}

/// Failures that say the login itself is dead, as opposed to the run.
pub(super) fn is_login_failure(reason: ReasonCode) -> bool {
    matches!(
        reason,
        ReasonCode::CredentialsExpired
            | ReasonCode::CredentialsRefreshReused
            | ReasonCode::CredentialsInvalidated
            | ReasonCode::CredentialsInvalid
    )
}

pub(crate) fn apply_failure(record: &mut RunRecord, failure: Failure) {
    record.outcome = Some(failure.outcome);
    record.reason = Some(failure.reason);
    record.message = Some(failure.message);
    record.details = failure.details;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::adapter::Adapter;

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

    fn transcript(lines: &[&str]) -> OutputReader {
        let mut t = Adapter::Codex.reader();
        for line in lines {
            t.observe(line);
        }
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
        let err = judge(
            &transcript(&[]),
            &process(ExitKind::Code(0), None, ""),
            60,
            60,
        )
        .unwrap_err();
        assert_eq!(err.reason, ReasonCode::CliError);
    }

    /// Regression: a command of the run wrote a fake `turn.completed` to the CLI's stdout and
    /// killed it, and the run was reported as a success.
    #[test]
    fn a_completed_turn_followed_by_a_kill_is_not_success() {
        let killed = process(ExitKind::Signal(9), None, "");
        let err = judge(&transcript(&[COMPLETED]), &killed, 60, 60).unwrap_err();
        assert_eq!(err.reason, ReasonCode::CliError);
    }

    #[test]
    fn a_completed_turn_with_a_nonzero_exit_is_not_success() {
        let exited = process(ExitKind::Code(1), None, "");
        assert!(judge(&transcript(&[COMPLETED]), &exited, 60, 60).is_err());
    }

    #[test]
    fn a_usage_error_is_told_apart_and_explained_from_stderr() {
        let stderr = "error: unexpected argument '--bogus' found\n\nUsage: codex exec";
        let err = judge(
            &transcript(&[]),
            &process(ExitKind::Code(2), None, stderr),
            60,
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
    fn a_missing_cli_says_how_to_install_or_point_at_it() {
        let missing = std::io::Error::from_raw_os_error(libc::ENOENT);
        let failure = cli_not_started(std::path::Path::new("codex"), &missing, None);
        assert_eq!(failure.reason, ReasonCode::CliNotFound);
        assert!(
            failure.message.starts_with(
                "failed to start codex: No such file or directory (os error 2): install it"
            ),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("HB_CODEX_BIN"),
            "{}",
            failure.message
        );
    }

    /// Regression: a CLI missing from PATH, started as another user, was reported only as
    /// `Permission denied (os error 13)`, from a PATH directory that user cannot search.
    #[test]
    fn permission_denied_for_another_user_says_not_found_or_not_executable() {
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        let by_name = cli_not_started(std::path::Path::new("claude"), &denied, Some(65534));
        assert!(
            by_name.message.starts_with(
                "failed to start claude: not found on PATH, or not executable by uid 65534 ("
            ),
            "{}",
            by_name.message
        );
        let by_path = cli_not_started(std::path::Path::new("/opt/x/claude"), &denied, Some(65534));
        assert!(
            by_path
                .message
                .contains("not executable by uid 65534, or a directory above it"),
            "{}",
            by_path.message
        );
    }

    #[test]
    fn a_timeout_wins_over_whatever_the_stream_said() {
        let err = judge(
            &transcript(&[COMPLETED]),
            &process(ExitKind::Signal(15), Some(StopCause::TimedOut), ""),
            5,
            5,
        )
        .unwrap_err();
        assert_eq!(
            (err.outcome, err.reason),
            (Outcome::TimedOut, ReasonCode::TimedOut)
        );
    }
}
