//! Starting a session: its workspace, private HOME and credentials, prepared as a run's are,
//! its command built from the adapter, and its actor started; and the stored records of
//! sessions.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use super::actor::{Actor, ActorSettings, Program};
use super::spec::{ExpectRule, Region, Rules, SessionSpec};
use super::terminal::{self, TerminalCommand};
use super::{EndReason, Session, SessionId, SessionRecord, SessionState, TERM, View};
use crate::adapter::codex::{self, RunDirs};
use crate::adapter::{self, Adapter, Adapters, prepare as adapter_prepare};
use crate::config::Config;
use crate::credentials::WorkingCopy;
use crate::redact::{self, Redactor};
use crate::run::ReasonCode;
use crate::run::failure::cli_not_started_message;
use crate::run::supervisor::{self, RUN_MARKER};
use crate::workspace::Workspace;

/// What a client asks for.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub adapter: String,
    pub rows: u16,
    pub cols: u16,
    /// A first prompt, for adapters whose interactive command line takes one.
    pub prompt: Option<String>,
    /// A shorter lifetime than the bridge's maximum.
    pub lifetime: Option<Duration>,
    /// A shorter idle timeout than the bridge's.
    pub idle_timeout: Option<Duration>,
    /// The quiet window that means idle, instead of the adapter's or the bridge's.
    pub quiet: Option<Duration>,
}

/// Why a session did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("adapter `{0}` is not known")]
    UnknownAdapter(String),
    #[error("{limit} sessions are running, the most this bridge allows (HB_MAX_SESSIONS)")]
    TooMany { limit: usize },
    #[error("the bridge is shutting down")]
    ShuttingDown,
    #[error("{message}")]
    Credentials { reason: ReasonCode, message: String },
    /// The CLI is certainly not there, so it was not even tried; the message says how to fix
    /// it, as a run's `cli_not_found` does.
    #[error("{0}")]
    CliNotFound(String),
    #[error("failed to prepare the session: {0}")]
    Prepare(String),
    #[error(transparent)]
    Spawn(#[from] terminal::SpawnError),
}

/// `<data_dir>/sessions/<id>`: the record and the recording.
pub fn session_dir(data_dir: &Path, id: SessionId) -> PathBuf {
    data_dir.join("sessions").join(id.to_string())
}

/// The stored record in `dir`, if it is there and readable.
pub fn read_record(dir: &Path) -> Option<SessionRecord> {
    let text = std::fs::read(dir.join("session.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes a record beside the recording (through a temporary file, so a reader never sees
/// half of it).
pub fn write_record(dir: &Path, record: &SessionRecord) {
    let path = dir.join("session.json");
    let temp = dir.join("session.json.tmp");
    let json = serde_json::to_vec_pretty(record).expect("a record serializes");
    if let Err(e) = std::fs::write(&temp, json).and_then(|()| std::fs::rename(&temp, &path)) {
        tracing::error!(error = %e, path = %path.display(), "failed to store a session record");
    }
}

/// Marks the sessions a previous process left running as interrupted, and kills what is
/// left of them.
pub async fn interrupt_leftovers(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("sessions")) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(mut record) = read_record(&entry.path()) else {
            continue;
        };
        if record.state.is_exited() {
            continue;
        }
        let killed = supervisor::kill_marked(RUN_MARKER, &record.id.to_string()).await;
        record.state = SessionState::Exited {
            exit_code: None,
            signal: None,
            reason: EndReason::Interrupted,
            message: EndReason::Interrupted.message().to_owned(),
        };
        record.ended_at = Some(OffsetDateTime::now_utc());
        write_record(&entry.path(), &record);
        tracing::warn!(session_id = %record.id, killed, "a session left running by a previous process was marked interrupted");
    }
}

/// The command, rules and secrets of a session of `adapter`.
struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    run_as: Option<(u32, u32)>,
    spec: SessionSpec,
    secrets: Vec<String>,
    /// Codex sessions get the login's working copy.
    codex_login: bool,
}

/// Starts session `id`: prepares it, starts its program, and hands it to its actor.
pub async fn start(
    id: SessionId,
    request: StartRequest,
    config: &Arc<Config>,
    adapters: &Adapters,
    login: Arc<WorkingCopy>,
) -> Result<Arc<Session>, StartError> {
    let adapter = adapters
        .get(&request.adapter)
        .ok_or_else(|| StartError::UnknownAdapter(request.adapter.clone()))?;
    let dir = session_dir(&config.data_dir, id);
    std::fs::create_dir_all(&dir)
        .map_err(|e| StartError::Prepare(format!("failed to create {}: {e}", dir.display())))?;
    let workspace = Workspace::create(&config.data_dir.join("workspaces"), id)
        .map_err(|e| StartError::Prepare(format!("failed to create the workspace: {e}")))?;
    let prepared = launch(&adapter, config, &workspace.dirs, request.prompt.as_deref());
    let launch = match prepared {
        Ok(launch) => launch,
        Err(e) => {
            let _ = workspace.remove();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };

    let mut redactor = Redactor::new(config.api_tokens.values().iter().cloned());
    redactor.extend(redact::proxy_secrets());
    redactor.extend(launch.secrets.iter().cloned());
    let login_copy = async {
        if !launch.codex_login {
            return Ok((None, None));
        }
        let checkout = || {
            login.checkout().map_err(|e| StartError::Credentials {
                reason: e.reason(),
                message: e.to_string(),
            })
        };
        // The login as it is once this session may write it: a run that held the writer
        // meanwhile may have refreshed its single-use tokens, so a copy taken before the wait
        // would present a refresh token that was already used (as runs do, see the pipeline).
        let writer = login.writer_owned(&checkout()?).await;
        let auth = checkout()?;
        login
            .install(&auth, &workspace.dirs.codex_home)
            .await
            .map_err(|e| StartError::Prepare(format!("failed to copy the login: {e}")))?;
        Ok((Some(auth), writer))
    };
    let (auth, writer) = match login_copy.await {
        Ok(copied) => copied,
        Err(e) => {
            // Nothing of a session that did not start stays behind.
            let _ = workspace.remove();
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    if let Some(auth) = &auth {
        redactor.extend(auth.secrets().iter().cloned());
    }
    let rules = Rules::compile(&launch.spec).map_err(StartError::Prepare)?;
    let quiet = request
        .quiet
        .or(launch.spec.quiet_ms.map(Duration::from_millis))
        .unwrap_or(config.sessions.quiet);

    let program = Program {
        path: launch.program.clone(),
        run_as_uid: launch.run_as.map(|(uid, _)| uid),
        under_shim: config.shim_bin.is_some(),
    };
    let command = TerminalCommand {
        program: launch.program,
        args: launch.args,
        env: launch.env,
        cwd: workspace.dirs.work.clone(),
        marker: (RUN_MARKER.to_owned(), id.to_string()),
        shim: config.shim_bin.clone(),
        run_as: launch.run_as,
    };
    let size = |n: u16| std::num::NonZeroU16::new(n).expect("sizes are checked by the API");
    let emulator = Arc::new(Mutex::new(vt100::Parser::new_with_callbacks(
        size(request.rows),
        size(request.cols),
        0,
        Default::default(),
    )));
    let (view_tx, view) = watch::channel(View {
        state: SessionState::Starting,
        revision: 0,
        ended_at: None,
    });
    let (commands_tx, commands) = mpsc::channel(32);
    let activity = Arc::new(Mutex::new(Instant::now()));
    let redactor = Arc::new(redactor);
    let session = Arc::new(Session {
        id,
        adapter: request.adapter.clone(),
        created_at: OffsetDateTime::now_utc(),
        emulator: emulator.clone(),
        view,
        states: tokio::sync::broadcast::channel(super::STATE_BACKLOG).0,
        output: tokio::sync::broadcast::channel(super::OUTPUT_BACKLOG).0,
        commands: commands_tx,
        activity: activity.clone(),
        redactor: redactor.clone(),
        recording: dir.join("recording.cast"),
    });
    write_record(&dir, &session.record());

    let limits = &config.sessions;
    let settings = ActorSettings {
        lifetime: request
            .lifetime
            .map_or(limits.max_lifetime, |l| l.min(limits.max_lifetime)),
        idle_timeout: request
            .idle_timeout
            .map_or(limits.idle_timeout, |l| l.min(limits.idle_timeout)),
        max_output_rate: limits.max_output_rate,
        quiet,
        settle: launch.spec.settle_ms.map(Duration::from_millis),
        submit_wait: launch.spec.submit_wait_ms.map(Duration::from_millis),
        first_prompt: request.prompt.is_some(),
        max_recording_bytes: config.max_log_bytes,
    };
    let actor = Actor {
        session: session.clone(),
        emulator,
        view: view_tx,
        commands,
        activity,
        redactor,
        rules,
        settings,
        program,
        dir,
    };

    // The task owns everything that must live as long as the session: the login's writer
    // lock (a ChatGPT login refreshes single-use tokens, so nothing else may use it
    // meanwhile), and the workspace, removed when the session ends.
    let (started_tx, started) = oneshot::channel();
    let keep = config.keep_workspaces;
    tokio::spawn(async move {
        let _writer = writer;
        let spawned = terminal::spawn(&command, request.rows, request.cols);
        let spawned = match spawned {
            Ok(spawned) => {
                let _ = started_tx.send(Ok(()));
                spawned
            }
            Err(e) => {
                let _ = started_tx.send(Err(e));
                let _ = std::fs::remove_dir_all(&actor.dir);
                let _ = workspace.remove();
                return;
            }
        };
        actor.run(spawned).await;
        if let Some(given) = &auth
            && let Err(e) = login.check_in(&workspace.dirs.codex_home.join("auth.json"), given)
        {
            tracing::error!(error = %e, "failed to keep the login a session refreshed");
        }
        if !keep {
            let root = workspace.root().to_owned();
            // A Codex home holds hundreds of files: removing them is no work for the runtime.
            let removed = tokio::task::spawn_blocking(move || workspace.remove()).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!(error = %e, path = %root.display(), "failed to remove a session's workspace");
            }
        }
    });
    match started.await {
        Ok(Ok(())) => Ok(session),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(StartError::Prepare("the session's task ended early".into())),
    }
}

/// The command of a session of `adapter`.
fn launch(
    adapter: &Adapter,
    config: &Config,
    dirs: &RunDirs,
    prompt: Option<&str>,
) -> Result<Launch, StartError> {
    let launch = match adapter {
        Adapter::Codex => {
            let mut env = terminal_environment(dirs);
            env.push(("CODEX_HOME".into(), dirs.codex_home.clone().into()));
            Launch {
                program: config.codex.bin.clone(),
                args: codex_args(config, dirs, prompt),
                env,
                run_as: None,
                spec: codex_spec(),
                secrets: Vec::new(),
                codex_login: true,
            }
        }
        Adapter::Profile(profile) => {
            let spec = profile.session.clone().unwrap_or_default();
            let mut interactive = (**profile).clone();
            interactive.args = spec
                .args
                .iter()
                .filter(|arg| prompt.is_some() || !arg.contains("{prompt}"))
                .cloned()
                .collect();
            let prepared = adapter_prepare::prepare(&interactive, dirs, prompt.unwrap_or_default())
                .map_err(|e| StartError::Credentials {
                    reason: e.reason(),
                    message: e.to_string(),
                })?;
            let mut env = terminal_environment(dirs);
            env.extend(prepared.env);
            Launch {
                program: prepared.program,
                args: prepared.args,
                env,
                run_as: prepared.run_as.map(|user| (user.uid, user.gid)),
                spec,
                secrets: prepared.secrets,
                codex_login: false,
            }
        }
    };
    let profile = codex::shell_profile(&dirs.bin);
    for name in [".bash_profile", ".profile"] {
        std::fs::write(dirs.home.join(name), &profile)
            .map_err(|e| StartError::Prepare(format!("failed to write {name}: {e}")))?;
    }
    std::fs::create_dir_all(&dirs.work)
        .map_err(|e| StartError::Prepare(format!("failed to create the work directory: {e}")))?;

    // Under the run shim the start itself cannot fail (the shim starts, then reports a CLI it
    // could not start as the session's end), so a CLI that is certainly absent is refused
    // here, before the session exists.
    let path = launch.env.iter().rev().find(|(name, _)| name == "PATH");
    if terminal::is_missing(
        &launch.program,
        path.map(|(_, value)| value.as_os_str()),
        &dirs.work,
    ) {
        let absent = std::io::Error::from_raw_os_error(libc::ENOENT);
        let run_as_uid = launch.run_as.map(|(uid, _)| uid);
        return Err(StartError::CliNotFound(cli_not_started_message(
            &launch.program,
            &absent,
            run_as_uid,
        )));
    }
    Ok(launch)
}

/// A run's environment, changed for a terminal: a terminal type the emulator understands, and
/// without the variables that tell tools nobody is there (`CI` makes some refuse to prompt).
fn terminal_environment(dirs: &RunDirs) -> Vec<(OsString, OsString)> {
    let mut env = adapter::run_environment(dirs);
    env.retain(|(name, _)| name != "CI" && name != "NO_COLOR" && name != "TERM");
    env.push(("TERM".into(), TERM.into()));
    env
}

/// The Codex TUI (`codex` without `exec`) with the run's flags: its directory, the sandbox
/// setting, analytics and plugin sync off, bounded retries, and no update check (its nag
/// would stand between the client and the input line).
fn codex_args(config: &Config, dirs: &RunDirs, prompt: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--cd".into(), dirs.work.clone().into()];
    if config.codex.bypass_sandbox {
        args.push("--dangerously-bypass-approvals-and-sandbox".into());
    } else {
        args.extend(["--sandbox".into(), "workspace-write".into()]);
    }
    for setting in [
        "analytics.enabled=false",
        "check_for_update_on_startup=false",
    ] {
        args.extend(["--config".into(), setting.into()]);
    }
    for feature in ["plugins", "unbounded_connection_retries"] {
        args.extend(["--disable".into(), feature.into()]);
    }
    if let Some(prompt) = prompt {
        args.extend(["--".into(), prompt.into()]);
    }
    args
}

/// How long the Codex TUI's output must pause before its screen is judged and its menus
/// answered: it draws a menu a moment before it reads keys.
const CODEX_SETTLE_MS: u64 = 400;
/// After Enter, how long the Codex TUI counts as busy unless its "esc to interrupt" line shows
/// first. The line comes within tens of milliseconds when idle, but more than 400 ms later was
/// seen with the whole test suite running on two cores; an Enter that starts no turn (a slash
/// command) is idle after this.
const CODEX_SUBMIT_WAIT_MS: u64 = 3000;

/// How the Codex TUI behaves on a terminal, as seen on codex-cli 0.171.0.
///
/// Its input line starts with `› `, then (past any continuation lines) a blank line and a
/// status line naming the model (`GPT-5.5 default · <dir>`); the user's messages in the
/// history also start with `› `, and the splash drawn while it loads has an input line but no
/// status line. The input line stays drawn while a turn runs, when the line above it says
/// `esc to interrupt`; its menus mark the chosen item with `› ` and end with an `enter ...`
/// footer: both count as busy. Between Enter and the first sign of the turn it draws an idle
/// screen for a moment, so after Enter it is busy until that sign shows (or a few seconds
/// pass); and it draws its menus a moment before it reads keys, so output must pause before
/// the screen is judged or answered. The first-run screens it may show are
/// answered: the folder trust question (a work directory inside a git repository; Enter keeps
/// "Trust and continue"), the update offer if a cached newer version is known ("2" skips it
/// once; the flag above normally keeps it away), and the offer to switch to a newer model
/// ("2" keeps the configured one, which is what the bridge was set up with).
fn codex_spec() -> SessionSpec {
    let answer = |pattern: &str, send: &str| ExpectRule {
        pattern: pattern.to_owned(),
        region: Region::Screen,
        send: Some(send.to_owned()),
        keys: None,
        ask_person: false,
    };
    SessionSpec {
        args: Vec::new(),
        ready_pattern: Some(r"(?m)^› .*\n(?:(?:  .*)?\n)*  \S.* · .*$".to_owned()),
        busy_pattern: Some(
            r"esc to interrupt|(?m)^  enter(?:/esc)? (?:confirm|continue)".to_owned(),
        ),
        settle_ms: Some(CODEX_SETTLE_MS),
        submit_wait_ms: Some(CODEX_SUBMIT_WAIT_MS),
        quiet_ms: None,
        expect: vec![
            answer(r"(?m)^› 1\. Trust and continue", "\r"),
            answer(r"(?m)^. 3\. Skip until next version", "2"),
            answer(r"(?m)^. 2\. Use existing model", "2"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Screens the Codex TUI 0.171.0 drew, trimmed.
    const COMPOSER: &str =
        "› Ask Codex to do anything\n\n  GPT-5.5 default · /work\n  ← for agents · ? for shortcuts";
    const WORKING: &str = "› Say hello\n\n• Working (0s • esc to interrupt)\n\n› Ask Codex to do anything\n\n  GPT-5.5 default · /work";
    const SPLASH: &str =
        "  >_ OpenAI Codex (v0.171.0)\n\n› Ask Codex to do anything\n\n  ? for shortcuts";
    const HISTORY: &str = "› Say hello\n\n• Hello\n\n  Worked for <1s • 19:00\n› Type here";
    const TYPED: &str = "› first line\n  second line\n\n\n  GPT-5.5 default · /work\n";
    const MIGRATION: &str = "  Meet GPT-6 Sol\n\n› 1. Try new model\n  2. Use existing model\n\n  enter/esc confirm · ^c quit";
    const TRUST: &str = "  Folder access\n  Trust this folder? Codex can read, edit, and run files here\n› 1. Trust and continue\n  2. Back to Agent Command Center\n\n  enter continue · esc back";
    const UPDATE: &str = "  Update available · 0.171.0 → 0.999.0\n› 1. Update now (runs `npm install -g @openai/codex`)\n  2. Skip\n  3. Skip until next version\n\n  enter continue · esc skip";

    #[test]
    fn codex_is_ready_only_at_its_input_line() {
        let spec = codex_spec();
        spec.check().expect("the built-in spec is valid");
        let rules = Rules::compile(&spec).expect("it compiles");
        assert_eq!(rules.is_ready(COMPOSER), Some(true));
        assert_eq!(rules.is_ready(TYPED), Some(true));
        for busy in [WORKING, SPLASH, HISTORY, MIGRATION, TRUST, UPDATE] {
            assert_eq!(rules.is_ready(busy), Some(false), "{busy}");
        }
    }

    #[test]
    fn codex_first_run_screens_are_answered() {
        let mut rules = Rules::compile(&codex_spec()).expect("it compiles");
        for (screen, answer) in [(TRUST, "\r"), (UPDATE, "2"), (MIGRATION, "2")] {
            let found = rules.evaluate(screen, "", true);
            let sent: Vec<&[u8]> = found.answers.iter().map(|(_, b)| b.as_slice()).collect();
            assert_eq!(sent, vec![answer.as_bytes()], "{screen}");
        }
        assert!(rules.evaluate(COMPOSER, "", true).answers.is_empty());
    }
}
