//! `hb-testkit`: starts the testkit's loopback stand-ins from the command line, for the demo
//! script and for poking at the real Codex CLI by hand.
//!
//! Each subcommand starts its servers, writes a Codex home pointing at the fake model, prints
//! one line of JSON describing where everything is, and serves until stdin reaches EOF or a
//! SIGTERM or SIGINT arrives. Exit codes: 0 after a clean stop, 1 when setup fails.
//!
//! Stdin must stay open while the servers are wanted: a script that starts it with `&` gets
//! stdin from /dev/null and sees it stop at once; give it a pipe instead (a coprocess, or
//! `hb-testkit demo ... < <(sleep infinity) &` and a SIGTERM to stop it).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use testkit::demo::Demo;
use testkit::model::{Behavior, FakeModel};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

#[derive(Debug, Parser)]
#[command(
    name = "hb-testkit",
    about = "Loopback stand-ins for the clouds headless-bridge uses"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the demo world: a fake model, a git host with a demo repo and the `ak` tool.
    ///
    /// Prints one line of JSON (`model_base_url`, `repo_url`, `tool_url`, `tool_sha256`,
    /// `codex_dir`), then serves until stdin reaches EOF or a SIGTERM or SIGINT arrives. In
    /// the background, keep stdin open: `hb-testkit demo ... < <(sleep infinity) &`.
    Demo {
        /// Where to write `codex/config.toml` and `codex/auth.json`.
        #[arg(long)]
        state_dir: PathBuf,
        /// The API key the fake model accepts; it lands in `codex/auth.json`.
        #[arg(long, env = "HB_TESTKIT_API_KEY", hide_env_values = true)]
        api_key: String,
    },
    /// Start only a fake model with a chosen behavior, and a Codex home for it.
    ///
    /// Prints one line of JSON (`base_url`, `codex_dir`), then serves until stdin reaches EOF
    /// or a SIGTERM or SIGINT arrives. In the background, keep stdin open:
    /// `hb-testkit model ... < <(sleep infinity) &`.
    Model {
        /// Where to write `config.toml` and `auth.json`.
        #[arg(long)]
        codex_dir: PathBuf,
        /// The API key the fake model accepts; it lands in `auth.json`.
        #[arg(long, env = "HB_TESTKIT_API_KEY", hide_env_values = true)]
        api_key: String,
        #[command(flatten)]
        behavior: BehaviorArgs,
        /// With --run: how long Codex waits for the command, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        yield_ms: u64,
        /// On stop, write every request the model received to this file, one JSON a line.
        #[arg(long)]
        requests: Option<PathBuf>,
    },
}

/// Exactly one way for the fake model to answer.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct BehaviorArgs {
    /// Answer every prompt with this message.
    #[arg(long)]
    reply: Option<String>,
    /// Ask Codex to run this shell line, then quote its output.
    #[arg(long)]
    run: Option<String>,
    /// Fail every response with `CODE:MESSAGE`.
    #[arg(long, value_name = "CODE:MESSAGE")]
    fail: Option<String>,
    /// Answer every request with this HTTP status.
    #[arg(long)]
    status: Option<u16>,
    /// Send headers, then hold the body forever.
    #[arg(long)]
    hang: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hb-testkit: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo { state_dir, api_key } => {
            let demo = Demo::start(&api_key).await;
            let codex_dir = write_codex_home(&demo.model, &state_dir.join("codex"))?;
            print_line(&demo.summary(&codex_dir))?;
            until_stopped().await
        }
        Command::Model {
            codex_dir,
            api_key,
            behavior,
            yield_ms,
            requests,
        } => {
            let model = FakeModel::start(behavior.into_behavior(yield_ms)?, &api_key).await;
            let codex_dir = write_codex_home(&model, &codex_dir)?;
            print_line(&json!({"base_url": model.base_url(), "codex_dir": codex_dir}))?;
            until_stopped().await?;
            requests.map_or(Ok(()), |path| write_requests(&model, &path))
        }
    }
}

impl BehaviorArgs {
    fn into_behavior(self, yield_time_ms: u64) -> anyhow::Result<Behavior> {
        let behavior = if let Some(text) = self.reply {
            Behavior::Reply(text)
        } else if let Some(command) = self.run {
            Behavior::RunThenReply {
                command,
                yield_time_ms,
            }
        } else if let Some(fail) = self.fail {
            let (code, message) = fail.split_once(':').context("--fail takes CODE:MESSAGE")?;
            Behavior::Fail {
                code: code.to_owned(),
                message: message.to_owned(),
            }
        } else if let Some(status) = self.status {
            Behavior::Status(status)
        } else {
            Behavior::Hang
        };
        Ok(behavior)
    }
}

/// Writes the Codex home for `model` into `dir` and returns its absolute path.
fn write_codex_home(model: &FakeModel, dir: &Path) -> anyhow::Result<String> {
    model
        .write_codex_home(dir)
        .with_context(|| format!("failed to write the codex home {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("failed to resolve {}", dir.display()))?;
    Ok(dir.display().to_string())
}

fn write_requests(model: &FakeModel, path: &Path) -> anyhow::Result<()> {
    let lines: Vec<String> = model
        .requests()
        .iter()
        .map(|r| json!(r).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n")
        .with_context(|| format!("failed to write {}", path.display()))
}

fn print_line(value: &Value) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{value}")
        .and_then(|()| stdout.flush())
        .context("failed to write stdout")
}

/// Resolves when stdin reaches EOF or SIGTERM or SIGINT arrives.
async fn until_stopped() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    let stdin_closed = stdin_eof();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        _ = stdin_closed => {}
    }
    Ok(())
}

/// Resolves when stdin reaches EOF (or fails). The read runs on a plain thread because a
/// blocking stdin read cannot be cancelled, and a tokio blocking task would hold up shutdown.
fn stdin_eof() -> oneshot::Receiver<()> {
    let (closed, eof) = oneshot::channel();
    std::thread::spawn(move || {
        // A read error ends the wait like EOF does: nobody can write to us any more.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        // The receiver is gone only if a signal already ended the wait.
        let _ = closed.send(());
    });
    eof
}
