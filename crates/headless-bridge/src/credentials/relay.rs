//! The login relay: a person logs the bridge in to ChatGPT without a workstation.
//!
//! The bridge runs the Codex CLI's own device-code login (`codex login --device-auth`) in a
//! private, throw-away CODEX_HOME and hands the verification URL and one-time code it prints
//! to the operator. The person opens the URL anywhere, enters the code, and the CLI, polling
//! the issuer, receives the tokens and writes its auth.json; the bridge then adopts that file
//! as the login's working copy (see [`WorkingCopy::adopt`]) and deletes the throw-away home.
//!
//! The CLI does the OAuth work, so the relay follows the CLI's protocol as it changes. The
//! relay only reads the CLI's screen text, never its tokens, and shows nothing but the URL and
//! the code, which are meant for a person's eyes. One login at a time: asking again while one
//! is pending returns the pending one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::WorkingCopy;
use crate::config::CodexConfig;
use crate::run::text::strip_controls;

/// How long the CLI may take to print the URL and the code.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a device code lives when the CLI does not say (the issuer's usual 15 minutes).
const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// The longest expiry a CLI's screen is believed for, in minutes.
const MAX_EXPIRY_MINUTES: u64 = 24 * 60;
/// Lines of the CLI's output kept to explain a failure.
const KEPT_LINES: usize = 20;

/// Where a login stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoginState {
    /// Waiting for the person to enter the code.
    Pending,
    /// The login completed and is the working copy now.
    Succeeded,
    /// The CLI gave up, or its result could not be used.
    Failed,
    /// Cancelled by request or by shutdown.
    Cancelled,
    /// Nobody entered the code in time.
    Expired,
}

/// A login as the API shows it. Holds no secret: the URL and the code are meant to be shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoginView {
    #[schema(value_type = String, format = "uuid")]
    pub id: Uuid,
    pub state: LoginState,
    pub verification_url: String,
    pub user_code: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
    /// Why a login failed, from the CLI's own words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Why a login could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("failed to prepare a private home for the login under {dir}: {source}")]
    Home {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to run {bin}: {source}; install the Codex CLI or set HB_CODEX_BIN")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Codex CLI did not start a device-code login: {output}")]
    NoCode { output: String },
}

/// Runs device-code logins for the Codex login and keeps the latest one.
pub struct LoginRelay {
    config: CodexConfig,
    issuer: Option<String>,
    shim: Option<PathBuf>,
    homes: PathBuf,
    latest: Mutex<Option<Arc<Attempt>>>,
}

/// One login, from start to its end.
struct Attempt {
    view: watch::Sender<LoginView>,
    cancel: CancellationToken,
}

impl LoginRelay {
    /// A relay whose logins keep their throw-away homes under `data_dir`. `issuer` replaces
    /// the CLI's ChatGPT issuer (for a test's loopback issuer); `shim` is the run shim, which
    /// keeps the CLI's processes from outliving the login.
    pub fn new(
        data_dir: &Path,
        config: CodexConfig,
        issuer: Option<String>,
        shim: Option<PathBuf>,
    ) -> Self {
        Self {
            config,
            issuer,
            shim,
            homes: data_dir.join("credentials").join("logins"),
            latest: Mutex::new(None),
        }
    }

    /// The latest login, if one was started since the bridge started.
    pub fn latest(&self) -> Option<LoginView> {
        let latest = self.lock_latest();
        latest.as_ref().map(|attempt| attempt.view.borrow().clone())
    }

    /// Cancels the pending login; returns it as it ended, or `None` when none is pending.
    pub async fn cancel(&self) -> Option<LoginView> {
        let attempt = self.lock_latest().clone()?;
        if attempt.view.borrow().state != LoginState::Pending {
            return None;
        }
        attempt.cancel.cancel();
        let mut view = attempt.view.subscribe();
        let ended = view
            .wait_for(|view| view.state != LoginState::Pending)
            .await
            .map(|view| view.clone())
            .ok();
        ended.or_else(|| Some(attempt.view.borrow().clone()))
    }

    /// Starts a device-code login, or returns the pending one (then `false`). The login ends
    /// by itself: adopted into `login` when the person completes it, else failed, expired or
    /// cancelled (by [`Self::cancel`] or by `shutdown`).
    pub async fn start(
        &self,
        login: Arc<WorkingCopy>,
        shutdown: &CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Result<(LoginView, bool), StartError> {
        // One start at a time; a second caller finds the first one's login pending.
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _starting = STARTING.lock().await;
        if let Some(pending) = self.latest().filter(|v| v.state == LoginState::Pending) {
            return Ok((pending, false));
        }

        let id = Uuid::now_v7();
        let home = self.homes.join(id.to_string());
        make_private_dir(&home).map_err(|source| StartError::Home {
            dir: home.clone(),
            source,
        })?;
        let mut child = match crate::reaper::spawn(&mut self.command(&home)) {
            Ok(child) => child,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&home);
                return Err(StartError::Spawn {
                    bin: self.config.bin.display().to_string(),
                    source,
                });
            }
        };
        let pid = child.id();
        // Dropping the child kills the shim alone; should this code be cut short (a panic),
        // the CLI under it must not live on as an orphan.
        let mut group = crate::run::supervisor::GroupKill::of(pid);

        // Both streams go to one reader: the CLI prints its instructions on stdout and its
        // errors on stderr.
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines_tx = lines_tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    let _ = lines_tx.send(strip_controls(&line));
                }
            });
        }
        drop(lines_tx);

        let mut screen = Screen::default();
        let read = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.recv().await {
                screen.read(&line);
                if screen.ready() {
                    return true;
                }
            }
            false
        })
        .await;
        if read != Ok(true) {
            stop(&mut child, pid).await;
            group.disarm();
            let _ = std::fs::remove_dir_all(&home);
            return Err(StartError::NoCode {
                output: screen.tail(),
            });
        }

        let started_at = OffsetDateTime::now_utc();
        let view = LoginView {
            id,
            state: LoginState::Pending,
            verification_url: screen.url.clone().unwrap_or_default(),
            user_code: screen.code.clone().unwrap_or_default(),
            started_at,
            expires_at: started_at + screen.expiry.unwrap_or(DEFAULT_EXPIRY),
            finished_at: None,
            message: None,
        };
        let attempt = Arc::new(Attempt {
            view: watch::Sender::new(view.clone()),
            cancel: shutdown.child_token(),
        });
        *self.lock_latest() = Some(attempt.clone());
        tracing::info!(login_id = %id, "device-code login started; waiting for a person to enter the code");

        let expiry = tokio::time::sleep(screen.expiry.unwrap_or(DEFAULT_EXPIRY));
        tasks.spawn(async move {
            tokio::pin!(expiry);
            // Keep reading, so the CLI never blocks on a full pipe and a failure can be told.
            let mut reading = true;
            let ended = loop {
                tokio::select! {
                    line = lines.recv(), if reading => match line {
                        Some(line) => screen.read(&line),
                        None => reading = false,
                    },
                    status = child.wait() => break Some(status),
                    () = attempt.cancel.cancelled() => break None,
                    () = &mut expiry => break None,
                }
            };
            let (state, message) = match ended {
                Some(status) => {
                    group.disarm();
                    crate::reaper::forget(pid);
                    // The CLI has exited; what it printed last is in the pipe or nowhere.
                    while let Ok(Some(line)) =
                        tokio::time::timeout(Duration::from_millis(500), lines.recv()).await
                    {
                        screen.read(&line);
                    }
                    match status {
                        Ok(status) if status.success() => match adopt(&login, &home) {
                            Ok(()) => {
                                // Persisted like a refresh: into the login Secret too.
                                login.write_back().await;
                                (LoginState::Succeeded, None)
                            }
                            Err(message) => (LoginState::Failed, Some(message)),
                        },
                        Ok(status) => (
                            LoginState::Failed,
                            Some(format!(
                                "the Codex CLI's login ended with {status}: {}",
                                screen.tail()
                            )),
                        ),
                        Err(e) => (
                            LoginState::Failed,
                            Some(format!("failed to wait for the Codex CLI: {e}")),
                        ),
                    }
                }
                None => {
                    stop(&mut child, pid).await;
                    group.disarm();
                    if attempt.cancel.is_cancelled() {
                        (LoginState::Cancelled, None)
                    } else {
                        let message = "nobody entered the code before it expired; start a new login";
                        (LoginState::Expired, Some(message.to_owned()))
                    }
                }
            };
            if let Err(e) = std::fs::remove_dir_all(&home) {
                tracing::warn!(error = %e, path = %home.display(), "failed to remove a login's home");
            }
            tracing::info!(login_id = %id, ?state, "device-code login ended");
            attempt.view.send_modify(|view| {
                view.state = state;
                view.message = message;
                view.finished_at = Some(OffsetDateTime::now_utc());
            });
        });
        Ok((view, true))
    }

    /// `codex login --device-auth` in `home`, under the shim when there is one, with nothing
    /// of the bridge's environment but PATH.
    fn command(&self, home: &Path) -> Command {
        let mut command = match &self.shim {
            Some(shim) => {
                let mut command = Command::new(shim);
                command.arg("--").arg(&self.config.bin);
                command
            }
            None => Command::new(&self.config.bin),
        };
        command.args(["login", "--device-auth"]);
        if let Some(issuer) = &self.issuer {
            // The CLI's hidden option for another issuer; the relay's tests use a loopback one.
            command.arg("--experimental_issuer").arg(issuer);
        }
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("CODEX_HOME", home)
            .current_dir(home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    fn lock_latest(&self) -> std::sync::MutexGuard<'_, Option<Arc<Attempt>>> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Takes the auth.json the CLI wrote into the working copy; says why not when it cannot.
fn adopt(login: &WorkingCopy, home: &Path) -> Result<(), String> {
    let path = home.join("auth.json");
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("the Codex CLI reported success but left no auth.json: {e}"))?;
    super::parse(path, bytes.clone())
        .map_err(|e| format!("the Codex CLI left an auth.json the bridge cannot use: {e}"))?;
    login
        .adopt(&bytes)
        .map_err(|e| format!("failed to keep the new login: {e}"))
}

/// Stops the login's processes: SIGTERM to the group (the shim passes it on and cleans up),
/// SIGKILL if it lingers.
async fn stop(child: &mut tokio::process::Child, pid: Option<u32>) {
    let group = pid.map(|pid| nix::unistd::Pid::from_raw(pid as i32));
    crate::run::supervisor::stop_group(group, child).await;
    let _ = child.wait().await;
    crate::reaper::forget(pid);
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// What the CLI's login screen said so far.
#[derive(Default)]
struct Screen {
    url: Option<String>,
    code: Option<String>,
    expiry: Option<Duration>,
    /// The latest lines, for a failure's message.
    lines: std::collections::VecDeque<String>,
}

impl Screen {
    /// Takes in one line of the CLI's output (ANSI codes already stripped).
    fn read(&mut self, line: &str) {
        let text = line.trim();
        if text.is_empty() {
            return;
        }
        if self.lines.len() == KEPT_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(text.to_owned());
        if self.url.is_none() && (text.starts_with("https://") || text.starts_with("http://")) {
            self.url = text.split_whitespace().next().map(str::to_owned);
        } else if self.url.is_some() && self.code.is_none() && is_user_code(text) {
            self.code = Some(text.to_owned());
        }
        if self.expiry.is_none()
            && let Some(minutes) = expiry_minutes(text)
        {
            self.expiry = Some(Duration::from_secs(minutes * 60));
        }
    }

    fn ready(&self) -> bool {
        self.url.is_some() && self.code.is_some()
    }

    /// What explains a failure, on one line: the CLI's error lines if it printed any, else
    /// its latest lines.
    fn tail(&self) -> String {
        let errors: Vec<&str> = self
            .lines
            .iter()
            .map(String::as_str)
            .filter(|line| line.starts_with("Error") || line.starts_with("error"))
            .collect();
        if !errors.is_empty() {
            return errors.join(" / ");
        }
        if self.lines.is_empty() {
            return "it printed nothing".to_owned();
        }
        self.lines.iter().cloned().collect::<Vec<_>>().join(" / ")
    }
}

/// A one-time code as issuers print them: groups of capitals and digits joined by dashes,
/// like `ABCD-EFGH`.
fn is_user_code(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() >= 2
        && groups.iter().all(|group| {
            (3..=8).contains(&group.len())
                && group
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
}

/// The minutes in "(expires in 15 minutes)".
fn expiry_minutes(text: &str) -> Option<u64> {
    let rest = &text[text.find("expires in ")? + "expires in ".len()..];
    let (number, unit) = rest.split_once(' ')?;
    // A day at most: beyond it the number is nonsense (and would overflow a date).
    let minutes: u64 = number
        .parse()
        .ok()
        .filter(|m| (1..=MAX_EXPIRY_MINUTES).contains(m))?;
    unit.starts_with("minute").then_some(minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The screen Codex 0.171.0 prints, colours stripped.
    const SCREEN: &[&str] = &[
        "",
        "Welcome to Codex [v0.171.0]",
        "OpenAI's command-line coding agent",
        "",
        "Follow these steps to sign in with ChatGPT using device code authorization:",
        "",
        "1. Open this link in your browser and sign in to your account",
        "   https://auth.openai.com/codex/device",
        "",
        "2. Enter this one-time code (expires in 15 minutes)",
        "   ABCD-EFGH",
    ];

    #[test]
    fn the_cli_screen_gives_the_url_the_code_and_the_expiry() {
        let mut screen = Screen::default();
        for line in SCREEN {
            assert!(!screen.ready());
            screen.read(line);
        }
        assert!(screen.ready());
        assert_eq!(
            screen.url.as_deref(),
            Some("https://auth.openai.com/codex/device")
        );
        assert_eq!(screen.code.as_deref(), Some("ABCD-EFGH"));
        assert_eq!(screen.expiry, Some(Duration::from_secs(900)));
    }

    #[test]
    fn only_code_shaped_lines_are_codes() {
        assert!(is_user_code("ABCD-EFGH"));
        assert!(is_user_code("X7K2-9QPL"));
        assert!(!is_user_code("OpenAI's command-line coding agent"));
        assert!(!is_user_code("abcd-efgh"));
        assert!(!is_user_code("ABCD"));
    }

    #[test]
    fn an_absurd_expiry_is_ignored() {
        assert_eq!(expiry_minutes("(expires in 15 minutes)"), Some(15));
        assert_eq!(
            expiry_minutes("(expires in 99999999999999999 minutes)"),
            None
        );
        assert_eq!(expiry_minutes("(expires in 0 minutes)"), None);
        let mut screen = Screen::default();
        screen.read("2. Enter this one-time code (expires in 99999999999999999 minutes)");
        assert_eq!(screen.expiry, None);
    }
}
