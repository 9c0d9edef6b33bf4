//! What the fake model does with one `POST /responses`: the [`Behavior`] a test picks, and the
//! pure decision from a request body to an [`Answer`]. Recording, authentication and putting
//! the answer on the wire belong to the server in the parent module.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::sse;

/// How the fake model answers every `POST /responses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// Answer any prompt with this assistant message.
    Reply(String),
    /// Ask Codex to run `command` with its `exec_command` tool; once the request carrying the
    /// tool's output arrives, answer with a message containing that output verbatim, as
    /// `The command printed:\n<output>`.
    RunThenReply {
        /// The shell line Codex is asked to run (Codex wraps it in `/bin/bash -lc`).
        command: String,
        /// How long Codex waits for the command before reporting it as still running.
        yield_time_ms: u64,
    },
    /// Stream `response.failed` with this API error code and message.
    Fail {
        /// An OpenAI error code such as `server_error` or `insufficient_quota`.
        code: String,
        /// The human message Codex reports.
        message: String,
    },
    /// Answer with this plain HTTP status and a JSON error body.
    Status(u16),
    /// Send `200` and the event-stream headers, then never a byte of the body.
    Hang,
    /// Accept the request and never send the response headers.
    HangBeforeHeaders,
}

/// What to put on the wire for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    /// `200 text/event-stream` with this whole body.
    Stream(String),
    /// A plain HTTP error with a JSON body.
    Error { status: StatusCode, body: Value },
    /// `200 text/event-stream` headers, then a body that never yields.
    HoldBody,
    /// No response until the server shuts down.
    HoldHeaders,
}

impl Behavior {
    /// Answers the request with body `request`; `seq` numbers the response's ids.
    pub(super) fn answer(&self, request: &Value, seq: u64) -> Answer {
        match self {
            Behavior::Reply(text) => Answer::Stream(sse::message(seq, text)),
            Behavior::RunThenReply {
                command,
                yield_time_ms,
            } => run_then_reply(command, *yield_time_ms, request, seq),
            Behavior::Fail { code, message } => Answer::Stream(sse::failed(seq, code, message)),
            Behavior::Status(code) => status_error(*code),
            Behavior::Hang => Answer::HoldBody,
            Behavior::HangBeforeHeaders => Answer::HoldHeaders,
        }
    }

    /// Checks that the behavior can be served: a [`Behavior::Status`] code must be an HTTP
    /// status.
    pub(super) fn check(&self) -> Result<(), String> {
        match self {
            Behavior::Status(code) if StatusCode::from_u16(*code).is_err() => {
                Err(format!("{code} is not an HTTP status code"))
            }
            _ => Ok(()),
        }
    }
}

/// The error body the real API sends, so Codex shows `error.message`.
pub(super) fn error_body(message: &str, kind: &str, code: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
}

fn status_error(code: u16) -> Answer {
    let status = StatusCode::from_u16(code).expect("FakeModel::start checked the status code");
    let message = format!("the fake model answers every request with HTTP {code}");
    let body = error_body(&message, "fake_status", &format!("fake_status_{code}"));
    Answer::Error { status, body }
}

fn run_then_reply(command: &str, yield_time_ms: u64, request: &Value, seq: u64) -> Answer {
    match tool_output_of_this_turn(request) {
        Some(output) => {
            let text = format!("The command printed:\n{}", command_output(output));
            Answer::Stream(sse::message(seq, &text))
        }
        None => {
            let arguments = json!({"cmd": command, "yield_time_ms": yield_time_ms});
            let call_id = format!("call_{seq}");
            Answer::Stream(sse::function_call(
                seq,
                &call_id,
                "exec_command",
                &arguments,
            ))
        }
    }
}

/// The output of a tool call made after the latest user message, if any. Earlier turns of a
/// resumed thread are in the history too, and must not count.
fn tool_output_of_this_turn(request: &Value) -> Option<String> {
    let input = request["input"].as_array()?;
    let this_turn = input.iter().rev().take_while(|item| item["role"] != "user");
    let output = this_turn
        .filter(|item| item["type"] == "function_call_output")
        .map(|item| &item["output"])
        .next()?;
    Some(
        output
            .as_str()
            .map_or_else(|| output.to_string(), str::to_owned),
    )
}

/// What the command printed: Codex prefixes it with a header ending in `Output:\n`
/// (chunk id, wall time, exit code, token count).
fn command_output(tool_output: String) -> String {
    match tool_output.split_once("\nOutput:\n") {
        Some((_header, printed)) => printed.to_owned(),
        None => tool_output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_echo() -> Behavior {
        Behavior::RunThenReply {
            command: "echo hi".into(),
            yield_time_ms: 1000,
        }
    }

    fn user(text: &str) -> Value {
        let content = json!([{"type": "input_text", "text": text}]);
        json!({"type": "message", "role": "user", "content": content})
    }

    fn tool_output(output: &str) -> Value {
        json!({"type": "function_call_output", "call_id": "call_1", "output": output})
    }

    fn streamed(answer: Answer) -> String {
        match answer {
            Answer::Stream(body) => body,
            other => panic!("expected a stream, got {other:?}"),
        }
    }

    #[test]
    fn run_then_reply_first_asks_for_the_command() {
        let body = streamed(run_echo().answer(&json!({"input": [user("go")]}), 1));

        assert!(body.contains(r#"\"cmd\":\"echo hi\""#), "{body}");
        assert!(body.contains(r#""name":"exec_command""#));
    }

    #[test]
    fn run_then_reply_quotes_the_output_verbatim() {
        let output =
            "Chunk ID: ab\nWall time: 0.1 seconds\nProcess exited with code 0\nOutput:\nhi\n";
        let request = json!({"input": [user("go"), tool_output(output)]});
        let body = streamed(run_echo().answer(&request, 2));

        assert!(
            body.contains(r#""text":"The command printed:\nhi\n""#),
            "{body}"
        );
    }

    #[test]
    fn run_then_reply_ignores_tool_output_of_an_earlier_turn() {
        let request = json!({"input": [user("one"), tool_output("Output:\nold"), user("two")]});
        let body = streamed(run_echo().answer(&request, 3));

        assert!(body.contains("function_call"), "{body}");
    }

    #[test]
    fn status_rejects_codes_outside_http() {
        assert!(Behavior::Status(1000).check().is_err());
        assert!(Behavior::Status(503).check().is_ok());
    }
}
