//! The client commands: `submit` starts a run and follows it, `runs` lists runs, `logs` prints
//! (or follows) a run's output, `cancel` stops one. They talk to a bridge's `/v1` API at
//! `--url` or `HB_URL`, with the token from `HB_TOKEN` or `--token-file`, never from an argument
//! (`ps` shows arguments to every user of the machine).
//!
//! Results go to stdout as JSON (or, with `submit --final-message`, the final message alone);
//! progress and errors go to stderr. Exit codes: 0 done (for `submit`, the run succeeded);
//! 1 the run finished without succeeding; 2 the bridge refused the request (401, another 4xx:
//! its error code and message are printed) or the arguments were unusable; 3 the bridge could
//! not be reached or failed.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use headless_bridge::client::{Client, ClientError, RunEvent};
use reqwest::Method;
use serde_json::Value;

use crate::run_request::RunRequestArgs;

/// Where the bridge is and how to authenticate; shared by every client command.
#[derive(Args)]
pub struct Connection {
    /// The bridge's base URL [env: HB_URL] [default: http://127.0.0.1:8000].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// A file holding the API token [default: the HB_TOKEN variable]. There is no flag for
    /// the token itself: `ps` would show it.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// The client commands.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Start a run, follow it on stderr, and print its record (or final message) on stdout.
    Submit(SubmitArgs),
    /// List runs, newest first.
    Runs(RunsArgs),
    /// Print a run's output; with -f, follow it live until the run ends.
    Logs {
        /// Follow the run's events until it ends.
        #[arg(short, long)]
        follow: bool,
        /// The run's id.
        run_id: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a queued or running run and print its record.
    Cancel {
        /// The run's id.
        run_id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Arguments of `submit`.
#[derive(Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    run: RunRequestArgs,
    /// Print only the CLI's final message on stdout instead of the run's record.
    #[arg(long)]
    final_message: bool,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `runs`; each filter is the API's.
#[derive(Args)]
pub struct RunsArgs {
    /// Only runs in this state: queued, preparing, running or finished.
    #[arg(long)]
    state: Option<String>,
    /// Only runs of this adapter.
    #[arg(long)]
    adapter: Option<String>,
    /// Only runs with this contract id.
    #[arg(long, value_name = "ID")]
    contract_id: Option<String>,
    /// At most this many runs (the API caps it at 100).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

/// Runs a client command and maps its outcome to the documented exit codes.
pub fn run(command: ClientCommand) -> ExitCode {
    // A run request the bridge would refuse is not sent.
    let submission = match &command {
        ClientCommand::Submit(args) => match args.run.to_request() {
            Ok(request) => Some(request),
            Err(message) => {
                eprintln!("headless-bridge: {message}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let connection = match &command {
        ClientCommand::Submit(args) => &args.connection,
        ClientCommand::Runs(args) => &args.connection,
        ClientCommand::Logs { connection, .. } | ClientCommand::Cancel { connection, .. } => {
            connection
        }
    };
    let client = match connect(connection) {
        Ok(client) => client,
        Err(message) => {
            eprintln!("headless-bridge: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let result = runtime.block_on(async {
        match command {
            ClientCommand::Submit(args) => {
                let request = submission.expect("made above for submit");
                submit(&client, &request, args.final_message).await
            }
            ClientCommand::Runs(args) => runs(&client, args).await,
            ClientCommand::Logs { follow, run_id, .. } => logs(&client, &run_id, follow).await,
            ClientCommand::Cancel { run_id, .. } => cancel(&client, &run_id).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("headless-bridge: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn connect(connection: &Connection) -> Result<Client, String> {
    let url = connection
        .url
        .clone()
        .or_else(|| std::env::var("HB_URL").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
    let token = match &connection.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("failed to read the token file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("HB_TOKEN").ok(),
    };
    Client::new(&url, token).map_err(|e| e.to_string())
}

async fn submit(client: &Client, request: &Value, final_message: bool) -> Result<u8, ClientError> {
    let created = client.json(Method::POST, "v1/runs", Some(request)).await?;
    let id = created["id"]
        .as_str()
        .ok_or_else(|| ClientError::Protocol("the new run has no id".into()))?
        .to_owned();

    let mut progress = Progress::new();
    progress.note(&format!("run {id} submitted"));
    if created["state"] != "finished" {
        client.follow(&id, |event| progress.event(event)).await?;
    }
    let record = client
        .json(Method::GET, &format!("v1/runs/{id}"), None)
        .await?;
    if final_message {
        println!("{}", record["output"].as_str().unwrap_or_default());
    } else {
        println!("{}", pretty(&record));
    }
    Ok(outcome_code(&record))
}

async fn runs(client: &Client, args: RunsArgs) -> Result<u8, ClientError> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &args.limit.to_string());
    let filters = [
        ("state", args.state),
        ("adapter", args.adapter),
        ("contract_id", args.contract_id),
    ];
    for (name, value) in filters {
        if let Some(value) = value {
            query.append_pair(name, &value);
        }
    }
    let page = client
        .json(Method::GET, &format!("v1/runs?{}", query.finish()), None)
        .await?;
    if args.json {
        println!("{}", pretty(&page));
        return Ok(0);
    }
    println!(
        "{:<36}  {:<9}  {:<10}  {:<24}  CREATED",
        "ID", "ADAPTER", "STATE", "OUTCOME"
    );
    for run in page["runs"].as_array().into_iter().flatten() {
        let outcome = match (run["outcome"].as_str(), run["reason"].as_str()) {
            (Some(outcome), Some(reason)) => format!("{outcome} ({reason})"),
            (Some(outcome), None) => outcome.to_owned(),
            _ => "-".to_owned(),
        };
        println!(
            "{:<36}  {:<9}  {:<10}  {:<24}  {}",
            run["id"].as_str().unwrap_or_default(),
            run["spec"]["adapter"].as_str().unwrap_or_default(),
            run["state"].as_str().unwrap_or_default(),
            outcome,
            run["created_at"].as_str().unwrap_or_default(),
        );
    }
    Ok(0)
}

async fn logs(client: &Client, run_id: &str, follow: bool) -> Result<u8, ClientError> {
    if !follow {
        print!("{}", client.text(&format!("v1/runs/{run_id}/logs")).await?);
        return Ok(0);
    }
    let mut progress = Progress::new();
    client
        .follow(run_id, |event| match event.kind.as_str() {
            "output" => println!("{}", event.data["line"].as_str().unwrap_or_default()),
            "stderr" => println!(
                "[stderr] {}",
                event.data["line"].as_str().unwrap_or_default()
            ),
            "cli_event" => println!("{}", event.data),
            _ => progress.event(event),
        })
        .await?;
    Ok(0)
}

async fn cancel(client: &Client, run_id: &str) -> Result<u8, ClientError> {
    let record = client
        .json(Method::POST, &format!("v1/runs/{run_id}/cancel"), None)
        .await?;
    println!("{}", pretty(&record));
    Ok(0)
}

/// 0 for a run that succeeded, 1 for any other end.
fn outcome_code(record: &Value) -> u8 {
    if record["outcome"] == "succeeded" {
        0
    } else {
        1
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON serializes")
}

/// The progress display on stderr: state changes, notices, the CLI's output and the outcome,
/// one line each; dimmed markers on a terminal, plain lines otherwise (a log, a pipe).
struct Progress {
    terminal: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn note(&self, text: &str) {
        if self.terminal {
            eprintln!("\x1b[2m==>\x1b[0m {text}");
        } else {
            eprintln!("==> {text}");
        }
    }

    fn line(&self, text: &str) {
        for line in text.lines() {
            eprintln!("    {line}");
        }
    }

    fn event(&mut self, event: &RunEvent) {
        let data = &event.data;
        match event.kind.as_str() {
            "state" => self.note(data["state"].as_str().unwrap_or("?")),
            "notice" => self.note(data["message"].as_str().unwrap_or_default()),
            "output" | "stderr" => self.line(data["line"].as_str().unwrap_or_default()),
            "cli_event" => {
                if let Some(text) = cli_event_text(data) {
                    self.line(&text);
                }
            }
            "outcome" => {
                let outcome = data["outcome"].as_str().unwrap_or("?");
                match (data["reason"].as_str(), data["message"].as_str()) {
                    (Some(reason), Some(message)) => {
                        self.note(&format!("{outcome} ({reason}): {message}"));
                    }
                    (Some(reason), None) => self.note(&format!("{outcome} ({reason})")),
                    _ => self.note(outcome),
                }
            }
            _ => {}
        }
    }
}

/// What a person wants to see of a CLI's structured event: a message it wrote, or a command
/// it ran. Codex's `item.completed` events carry both kinds; other events are skipped.
fn cli_event_text(event: &Value) -> Option<String> {
    let item = &event["item"];
    if event["type"] != "item.completed" {
        return None;
    }
    match item["type"].as_str()? {
        "agent_message" => item["text"].as_str().map(str::to_owned),
        "command_execution" => {
            let command = item["command"].as_str().unwrap_or_default();
            Some(match item["exit_code"].as_i64() {
                Some(code) => format!("$ {command} (exit {code})"),
                None => format!("$ {command}"),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn codex_messages_and_commands_are_shown_and_other_events_are_not() {
        let message =
            json!({"type": "item.completed", "item": {"type": "agent_message", "text": "done"}});
        assert_eq!(cli_event_text(&message).as_deref(), Some("done"));
        let command = json!({"type": "item.completed",
            "item": {"type": "command_execution", "command": "ls", "exit_code": 0}});
        assert_eq!(cli_event_text(&command).as_deref(), Some("$ ls (exit 0)"));
        assert_eq!(cli_event_text(&json!({"type": "turn.started"})), None);
    }
}
