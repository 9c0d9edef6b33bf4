//! A fake of the Anthropic Messages API on loopback, for the real Claude Code CLI.
//!
//! It speaks the protocol as Claude Code 2.1.197 uses it (shared/notes/other-clis.md §1.6):
//! a `HEAD /` preconnect, then `POST /v1/messages?beta=true` with `stream: true`, answered
//! with Server-Sent Events (`message_start`, content blocks with their deltas,
//! `message_delta` with the stop reason, `message_stop`). A shell-tool turn is a `tool_use`
//! block for `Bash`; the next request carries its `tool_result`, and the fake then answers
//! with text. Authentication is `x-api-key` or `Authorization: Bearer` (OAuth tokens); a
//! wrong one gets the API's 401 with `x-should-retry: false`, which stops the CLI's retries.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::agent_api::{AgentBehavior, RecordedCall, Recorder};
use crate::loopback::Loopback;

/// The model the fake names in its answers when the request names none.
const DEFAULT_MODEL: &str = "claude-fake";

/// A running fake of the Messages API; dropping it shuts the server down.
pub struct FakeAnthropic {
    server: Loopback,
    shared: Arc<Shared>,
}

struct Shared {
    behavior: AgentBehavior,
    credential: String,
    recorder: Recorder,
}

impl FakeAnthropic {
    /// Starts a fake that answers as `behavior` and accepts only `credential`, as an API key
    /// or as a bearer token.
    pub async fn start(behavior: AgentBehavior, credential: &str) -> Self {
        let shared = Arc::new(Shared {
            behavior,
            credential: credential.to_owned(),
            recorder: Recorder::default(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = Loopback::serve(router, CancellationToken::new()).await;
        Self { server, shared }
    }

    /// The base URL for `ANTHROPIC_BASE_URL`, such as `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        self.server.origin()
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.recorder.calls()
    }

    /// The `POST /v1/messages` requests received so far.
    pub fn message_calls(&self) -> Vec<RecordedCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.path == "/v1/messages")
            .collect()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = RecordedCall::new(&method, &uri, &headers, &body);
    shared.recorder.record(call.clone());
    match (method, call.path.as_str()) {
        (Method::HEAD | Method::GET, "/") => StatusCode::OK.into_response(),
        (Method::POST, "/v1/messages") if !authorized(&call, &shared.credential) => {
            error(401, "authentication_error", "invalid x-api-key")
        }
        (Method::POST, "/v1/messages") => answer(&shared.behavior, &call.body),
        (Method::POST, "/v1/messages/count_tokens") => {
            axum::Json(json!({"input_tokens": 42})).into_response()
        }
        _ => error(404, "not_found_error", "the fake has no such route"),
    }
}

fn authorized(call: &RecordedCall, credential: &str) -> bool {
    let bearer = format!("Bearer {credential}");
    call.header("x-api-key") == Some(credential)
        || call.header("authorization") == Some(bearer.as_str())
}

fn answer(behavior: &AgentBehavior, request: &Value) -> Response {
    let model = request["model"].as_str().unwrap_or(DEFAULT_MODEL);
    match behavior {
        AgentBehavior::Reply(text) => stream(&text_message(model, text)),
        AgentBehavior::RunThenReply { command, reply } => {
            if has_tools(request) && !answers_a_tool(request) {
                stream(&tool_message(model, command))
            } else {
                stream(&text_message(model, reply))
            }
        }
        AgentBehavior::Error { status, message } => error(*status, "api_error", message),
    }
}

fn has_tools(request: &Value) -> bool {
    request["tools"].as_array().is_some_and(|t| !t.is_empty())
}

/// Whether the last user message carries a tool result: the turn after a tool call.
fn answers_a_tool(request: &Value) -> bool {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages.iter().rev().find(|m| m["role"] == "user");
    last_user
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
}

fn start_events(model: &str) -> Value {
    json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null,
        "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1}}})
}

fn end_events(stop_reason: &str) -> [Value; 2] {
    [
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason,
            "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        json!({"type": "message_stop"}),
    ]
}

fn text_message(model: &str, text: &str) -> Vec<Value> {
    let mut events = vec![
        start_events(model),
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}),
        json!({"type": "content_block_stop", "index": 0}),
    ];
    events.extend(end_events("end_turn"));
    events
}

fn tool_message(model: &str, command: &str) -> Vec<Value> {
    let input = json!({"command": command, "description": "run the requested command"}).to_string();
    // The input arrives in pieces, as the real API streams it.
    let (first, second) = input.split_at(input.len() / 2);
    let mut events = vec![
        start_events(model),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use",
            "id": "toolu_fake_1", "name": "Bash", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": first}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": second}}),
        json!({"type": "content_block_stop", "index": 0}),
    ];
    events.extend(end_events("tool_use"));
    events
}

fn stream(events: &[Value]) -> Response {
    let body: String = events
        .iter()
        .map(|e| {
            format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap_or("message")
            )
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(body),
    )
        .into_response()
}

/// The API's error body; `x-should-retry: false` makes the CLI give up at once.
fn error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).expect("the fake's statuses are valid");
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, [("x-should-retry", "false")], axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_turn_is_followed_by_text() {
        let first = json!({"tools": [{"name": "Bash"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "go"}]}]});
        assert!(has_tools(&first) && !answers_a_tool(&first));
        let second = json!({"tools": [{"name": "Bash"}], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "go"}]},
            {"role": "assistant", "content": [{"type": "tool_use"}]},
            {"role": "user", "content": [{"type": "tool_result", "content": "ok"}]}]});
        assert!(answers_a_tool(&second));
    }

    #[test]
    fn tool_input_pieces_join_to_json() {
        let events = tool_message("m", "echo hi > f.txt");
        let joined: String = events[2..4]
            .iter()
            .map(|e| e["delta"]["partial_json"].as_str().unwrap())
            .collect();
        let input: Value = serde_json::from_str(&joined).unwrap();
        assert_eq!(input["command"], "echo hi > f.txt");
    }
}
