//! Helpers shared by the integration tests: scratch directories, running the real Codex CLI
//! against a fake model, hermetic git and an HTTP client that never uses a proxy.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use testkit::model::FakeModel;
use tokio::process::Command;

/// A Codex turn against a fake takes about a second; this only stops a broken run from
/// hanging the suite.
const CODEX_DEADLINE: Duration = Duration::from_secs(120);

/// Returns the path of the pinned Codex CLI, or skips the test (with a message) when it is not
/// installed.
macro_rules! require_codex {
    () => {
        match $crate::support::codex_binary() {
            Ok(path) => path,
            Err(missing) => {
                eprintln!(
                    "skipping: the real Codex CLI is not installed at {} \
                     (run scripts/install-codex.sh)",
                    missing.display()
                );
                return;
            }
        }
    };
}
pub(crate) use require_codex;

/// A fresh directory under cargo's per-target scratch space; not under `/tmp`, where Codex
/// refuses to create its helper links.
pub fn scratch() -> TempDir {
    tempfile::Builder::new()
        .prefix("testkit-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("cargo's target tmp dir is writable")
}

/// The pinned Codex CLI installed by `scripts/install-codex.sh`, or the path where it is
/// missing.
pub fn codex_binary() -> Result<PathBuf, PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = root.join(".tools/codex/node_modules/.bin/codex");
    if binary.exists() {
        Ok(binary)
    } else {
        Err(binary)
    }
}

/// A private Codex installation: a Codex home written for one fake model, a home directory
/// and a working directory, all inside one scratch directory.
pub struct Codex {
    binary: PathBuf,
    pub codex_home: PathBuf,
    pub home: PathBuf,
    pub workdir: PathBuf,
    args: Vec<String>,
    _scratch: TempDir,
}

/// What one `codex exec --json` run left behind.
#[derive(Debug)]
pub struct CodexRun {
    /// The exit code, `None` if a signal ended Codex.
    pub code: Option<i32>,
    /// The JSONL events from stdout.
    pub events: Vec<Value>,
    pub stderr: String,
    /// The contents of the `-o` file.
    pub last_message: String,
}

impl Codex {
    /// Prepares a Codex home pointing at `model`.
    pub fn new(binary: PathBuf, model: &FakeModel) -> Codex {
        let scratch = scratch();
        let codex = Codex {
            binary,
            codex_home: scratch.path().join("codex"),
            home: scratch.path().join("home"),
            workdir: scratch.path().join("work"),
            args: Vec::new(),
            _scratch: scratch,
        };
        model
            .write_codex_home(&codex.codex_home)
            .expect("scratch is writable");
        std::fs::create_dir_all(&codex.home).expect("scratch is writable");
        std::fs::create_dir_all(&codex.workdir).expect("scratch is writable");
        codex
    }

    /// Adds `-c key=value` to every run.
    pub fn config(mut self, key_value: &str) -> Codex {
        self.args.extend(["-c".to_owned(), key_value.to_owned()]);
        self
    }

    /// Runs `codex exec` on `prompt` the way the bridge does: JSON events, stdin from
    /// /dev/null, no sandbox, nothing inherited but PATH.
    pub async fn exec(&self, prompt: &str) -> CodexRun {
        let last_message = self.home.join("last-message.txt");
        let mut command = Command::new(&self.binary);
        command
            .args(["exec", "--json", "--skip-git-repo-check", "-C"])
            .arg(&self.workdir)
            .args([
                "--dangerously-bypass-approvals-and-sandbox",
                "-c",
                "analytics.enabled=false",
            ])
            .args([
                "--disable",
                "plugins",
                "--disable",
                "unbounded_connection_retries",
                "-o",
            ])
            .arg(&last_message)
            .args(&self.args)
            .args(["--", prompt])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("CODEX_HOME", &self.codex_home);

        let output = run_in_own_group(command, CODEX_DEADLINE).await;
        CodexRun {
            code: output.status.code(),
            events: parse_events(&output.stdout),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            last_message: std::fs::read_to_string(&last_message).unwrap_or_default(),
        }
    }
}

impl CodexRun {
    /// The last event, which ends the turn: `turn.completed` or `turn.failed`.
    pub fn terminal(&self) -> &Value {
        self.events.last().unwrap_or(&Value::Null)
    }

    /// The texts of the agent messages, in order.
    pub fn messages(&self) -> Vec<&str> {
        let items = self
            .events
            .iter()
            .filter(|event| event["type"] == "item.completed");
        let messages = items.filter(|event| event["item"]["type"] == "agent_message");
        messages
            .filter_map(|event| event["item"]["text"].as_str())
            .collect()
    }
}

fn parse_events(stdout: &[u8]) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(stdout);
    let lines = stdout.lines().filter(|line| !line.trim().is_empty());
    lines
        .map(|line| serde_json::from_str(line).expect("codex --json writes one JSON a line"))
        .collect()
}

/// Runs `command` in a process group of its own with stdin from /dev/null, killing the whole
/// group at the deadline: Codex's npm launcher stays the parent of the native binary, so
/// killing only the child's pid would orphan Codex.
pub async fn run_in_own_group(mut command: Command, deadline: Duration) -> Output {
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().expect("the program can be started");
    let group = child.id().and_then(|pid| i32::try_from(pid).ok());

    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(output) => output.expect("waiting for the child works"),
        Err(_elapsed) => {
            if let Some(group) = group {
                // The group may have exited between the timeout and now; either way it is gone.
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            panic!("{command:?} did not finish within {deadline:?}");
        }
    }
}

/// A `git` command that ignores the machine's and the user's git config.
pub fn git(home: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    command
}

/// An HTTP client that talks to loopback directly, whatever proxy the environment names.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a plain HTTP client builds")
}
