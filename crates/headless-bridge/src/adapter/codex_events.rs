//! Reading `codex exec --json`: the JSON Lines event stream on stdout.
//!
//! The stream, not the exit code, says how a run went: `turn.completed` is the only success,
//! `turn.failed` carries the error, and a stream that ends without either means the CLI stopped
//! before its turn ran (bad configuration, a crash). A [`Transcript`] folds the events into
//! the final message, token usage, and a readable account of the commands Codex ran and the
//! files it changed. Event shapes are those observed from codex-cli 0.171.0; unknown events
//! and fields are kept in the account as they come, never an error.

use std::collections::VecDeque;

use serde_json::Value;

use crate::run::{ReasonCode, Usage, text};

/// Lines of a command's output kept in the account; the rest is summarised as a count.
const COMMAND_OUTPUT_LINES: usize = 20;
/// What the account keeps of its beginning and of its end: a record holds 1 MiB of it at
/// most, its first quarter and last three quarters, so this is all that can reach one.
const ACCOUNT_HEAD_BYTES: usize = 256 << 10;
const ACCOUNT_TAIL_BYTES: usize = 768 << 10;
/// An account line longer than this is cut: an agent message or a line Codex did not print
/// as JSON may be of any length, and the output carries the final message whole.
const ACCOUNT_LINE_BYTES: usize = 16 << 10;

/// How the turn ended, as the stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Terminal {
    Completed,
    Failed { message: String },
}

/// Everything learned from the event stream of one run.
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    pub thread_id: Option<String>,
    /// The last agent message: the run's output.
    pub message: Option<String>,
    pub usage: Option<Usage>,
    pub terminal: Option<Terminal>,
    /// The last error notice before the end, which explains a failure better than nothing.
    pub last_error: Option<String>,
    /// The readable account, one entry per line.
    pub account: Account,
}

/// A readable account of a run that keeps its beginning and its end, and counts what it
/// drops between them, so that its memory stays bounded whatever the CLI prints.
#[derive(Debug, Default, Clone)]
pub struct Account {
    head: Vec<String>,
    head_bytes: usize,
    tail: VecDeque<String>,
    tail_bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl Account {
    pub fn push(&mut self, line: String) {
        let line = if line.len() > ACCOUNT_LINE_BYTES {
            text::shortened(&line, ACCOUNT_LINE_BYTES)
        } else {
            line
        };
        let size = line.len() + 1;
        if self.tail.is_empty() && self.head_bytes + size <= ACCOUNT_HEAD_BYTES {
            self.head_bytes += size;
            self.head.push(line);
            return;
        }
        self.tail_bytes += size;
        self.tail.push_back(line);
        while self.tail_bytes > ACCOUNT_TAIL_BYTES {
            let Some(dropped) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= dropped.len() + 1;
            self.dropped_lines += 1;
            self.dropped_bytes += dropped.len() as u64 + 1;
        }
    }

    pub fn extend(&mut self, lines: impl IntoIterator<Item = String>) {
        lines.into_iter().for_each(|line| self.push(line));
    }

    /// The lines kept, with a line that says what was dropped where it was.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.head.clone();
        if self.dropped_lines > 0 {
            lines.push(format!(
                "[{} lines ({} bytes) of the account dropped here]",
                self.dropped_lines, self.dropped_bytes
            ));
        }
        lines.extend(self.tail.iter().cloned());
        lines
    }
}

impl Transcript {
    /// Takes one stdout line; returns it parsed when it is a JSON event.
    pub fn observe(&mut self, line: &str) -> Option<Value> {
        if line.trim().is_empty() {
            return None;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(event) if event.is_object() => {
                self.observe_event(&event);
                Some(event)
            }
            _ => {
                self.account.push(format!("stdout: {line}"));
                None
            }
        }
    }

    /// The final agent message.
    pub fn output(&self) -> &str {
        self.message.as_deref().unwrap_or_default()
    }

    fn observe_event(&mut self, event: &Value) {
        let text = |key: &str| {
            event
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "thread.started" => {
                let id = text("thread_id");
                self.account.push(format!("codex thread {id} started"));
                self.thread_id = Some(id);
            }
            "turn.started" => self.account.push("turn started".into()),
            "item.completed" => {
                if let Some(item) = event.get("item") {
                    self.observe_item(item);
                }
            }
            "turn.completed" => {
                let usage = event.get("usage").map(usage_from).unwrap_or_default();
                self.account.push(format!(
                    "turn completed (tokens: {} in, {} out)",
                    usage.input_tokens, usage.output_tokens
                ));
                self.usage = Some(usage);
                self.terminal = Some(Terminal::Completed);
            }
            "turn.failed" => {
                let message = event
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("turn failed");
                self.account.push(format!("turn failed: {message}"));
                self.terminal = Some(Terminal::Failed {
                    message: message.to_owned(),
                });
            }
            "error" => {
                let message = text("message");
                self.account.push(format!("error: {message}"));
                self.last_error = Some(message);
            }
            "item.started" => {
                // Only a command's start is worth a line: if the run is stopped while it
                // runs, this is the only trace of what it was doing.
                let item = event.get("item").unwrap_or(&Value::Null);
                if item.get("type").and_then(Value::as_str) == Some("command_execution") {
                    let command = item
                        .get("command")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    self.account.push(format!("started $ {command}"));
                }
            }
            // Updates repeat what item.completed will say.
            "item.updated" => {}
            other => self.account.push(format!("event {other}: {event}")),
        }
    }

    fn observe_item(&mut self, item: &Value) {
        let text = |key: &str| {
            item.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match item.get("type").and_then(Value::as_str).unwrap_or_default() {
            "agent_message" => {
                let message = text("text");
                self.account.push(format!("agent: {message}"));
                self.message = Some(message);
            }
            "command_execution" => {
                let exit = item.get("exit_code").and_then(Value::as_i64);
                let exit = exit.map_or_else(|| text("status"), |code| format!("exit {code}"));
                self.account.push(format!("$ {} ({exit})", text("command")));
                self.account.extend(indent_tail(&text("aggregated_output")));
            }
            "file_change" => {
                let changes = item
                    .get("changes")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for change in changes {
                    let field = |k: &str| {
                        change
                            .get(k)
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned()
                    };
                    self.account
                        .push(format!("file {}: {}", field("kind"), field("path")));
                }
            }
            "reasoning" => self.account.push(format!("reasoning: {}", text("text"))),
            "error" => self.account.push(format!("notice: {}", text("message"))),
            other => self.account.push(format!("item {other}: {item}")),
        }
    }
}

/// The last lines of a command's output, indented, with a count of those left out.
fn indent_tail(output: &str) -> Vec<String> {
    let lines: Vec<&str> = output.lines().collect();
    let skip = lines.len().saturating_sub(COMMAND_OUTPUT_LINES);
    let mut out = Vec::new();
    if skip > 0 {
        out.push(format!("    [{skip} earlier lines]"));
    }
    out.extend(lines[skip..].iter().map(|l| format!("    {l}")));
    out
}

fn usage_from(value: &Value) -> Usage {
    let count = |key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input_tokens: count("input_tokens"),
        cached_input_tokens: count("cached_input_tokens"),
        output_tokens: count("output_tokens"),
        reasoning_output_tokens: count("reasoning_output_tokens"),
    }
}

/// The reason code for a failed turn, from the CLI's own error text. The phrases are the ones
/// codex-cli prints for the token endpoint's `refresh_token_*` error codes and for an HTTP 401
/// from the model provider.
pub fn failure_reason(message: &str) -> ReasonCode {
    let lower = message.to_ascii_lowercase();
    if lower.contains("refresh token was already used") {
        ReasonCode::CredentialsRefreshReused
    } else if lower.contains("refresh token has expired") {
        ReasonCode::CredentialsExpired
    } else if lower.contains("refresh token was revoked") || lower.contains("invalidated") {
        ReasonCode::CredentialsInvalidated
    } else if lower.contains("401 unauthorized") {
        ReasonCode::CredentialsInvalid
    } else {
        ReasonCode::UpstreamError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream recorded from codex-cli 0.171.0 running one shell command.
    const TOOL_TURN: &str = r#"{"type":"thread.started","thread_id":"01a2419b-f446-7001-863b-86643db7c392"}
{"type":"turn.started"}
{"type":"item.started","item":{"id":"item_0","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"","exit_code":null,"status":"in_progress"}}
{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":"/bin/bash -lc 'echo hi'","aggregated_output":"hi\n","exit_code":0,"status":"completed"}}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"Done. The command printed: hi"}}
{"type":"turn.completed","usage":{"input_tokens":200,"cached_input_tokens":0,"cache_write_input_tokens":0,"output_tokens":20,"reasoning_output_tokens":0}}"#;

    fn transcript(stream: &str) -> Transcript {
        let mut t = Transcript::default();
        stream.lines().for_each(|l| {
            t.observe(l);
        });
        t
    }

    #[test]
    fn a_completed_turn_gives_output_usage_and_an_account() {
        let t = transcript(TOOL_TURN);
        assert_eq!(t.terminal, Some(Terminal::Completed));
        assert_eq!(t.output(), "Done. The command printed: hi");
        assert_eq!(t.usage.as_ref().unwrap().input_tokens, 200);
        let account = t.account.lines();
        assert!(
            account.contains(&"$ /bin/bash -lc 'echo hi' (exit 0)".to_owned()),
            "{account:?}"
        );
        assert!(account.contains(&"    hi".to_owned()));
    }

    #[test]
    fn a_failed_turn_keeps_its_message() {
        let t = transcript(concat!(
            r#"{"type":"error","message":"Reconnecting... 1/5"}"#,
            "\n",
            r#"{"type":"turn.failed","error":{"message":"Quota exceeded."}}"#
        ));
        assert_eq!(
            t.terminal,
            Some(Terminal::Failed {
                message: "Quota exceeded.".into()
            })
        );
        assert_eq!(t.last_error.as_deref(), Some("Reconnecting... 1/5"));
    }

    /// Regression: every line Codex printed that was not an event stayed in the account for
    /// the whole run, so a CLI printing without end held all of it in memory.
    #[test]
    fn the_account_keeps_its_head_and_tail_whatever_is_printed() {
        let mut t = Transcript::default();
        let line = "x".repeat(1000);
        for i in 0..20_000 {
            t.observe(&format!("{i} {line}"));
        }
        t.observe(&format!("{}the end", "y".repeat(1 << 20)));
        let account = t.account.lines();
        let kept: usize = account.iter().map(|l| l.len() + 1).sum();
        assert!(
            kept <= ACCOUNT_HEAD_BYTES + ACCOUNT_TAIL_BYTES + 100,
            "{kept} bytes kept"
        );
        assert!(
            account[0].starts_with("stdout: 0 x"),
            "{}",
            &account[0][..20]
        );
        let note = account
            .iter()
            .find(|l| l.ends_with("of the account dropped here]"))
            .expect("a note of what was dropped");
        assert!(note.starts_with('['), "{note}");
        let last = account.last().unwrap();
        assert!(
            last.starts_with("stdout: yyy") && last.len() < ACCOUNT_LINE_BYTES + 100,
            "{} bytes",
            last.len()
        );
        assert!(account.iter().any(|l| l.starts_with("stdout: 19999 x")));
    }

    #[test]
    fn no_terminal_event_is_not_success() {
        let t = transcript("Error loading config.toml\n");
        assert_eq!(t.terminal, None);
        assert_eq!(t.account.lines(), ["stdout: Error loading config.toml"]);
    }

    #[test]
    fn long_command_output_is_cut_to_its_tail() {
        let output: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let lines = indent_tail(&output);
        assert_eq!(lines[0], "    [30 earlier lines]");
        assert_eq!(lines.last().unwrap(), "    line 49");
    }

    #[test]
    fn credential_failures_get_their_own_reasons() {
        let reused = "Your access token could not be refreshed because your refresh token was already used. Please log out and sign in again.";
        assert_eq!(failure_reason(reused), ReasonCode::CredentialsRefreshReused);
        assert_eq!(
            failure_reason("Your refresh token has expired"),
            ReasonCode::CredentialsExpired
        );
        assert_eq!(
            failure_reason("unexpected status 401 Unauthorized: bad key, url: http://x/responses"),
            ReasonCode::CredentialsInvalid
        );
        assert_eq!(failure_reason("Quota exceeded."), ReasonCode::UpstreamError);
    }
}
