//! A fake of the Gemini API (`generativelanguage`, v1beta) on loopback, for the real Gemini
//! CLI.
//!
//! It speaks the protocol as Gemini CLI 0.61.0 uses it (shared/notes/other-clis.md §2.3):
//! `POST /v1beta/models/<model>:streamGenerateContent?alt=sse` answered with data-only
//! Server-Sent Events of `GenerateContentResponse` JSON, the last with `finishReason`; and
//! `POST …:generateContent` for the CLI's structured side calls (the model router), answered
//! with a JSON object that fills the request's response schema. A shell-tool turn is a
//! `functionCall` of `run_shell_command`; the next request carries its `functionResponse`,
//! and the fake then answers with text. Authentication is the `x-goog-api-key` header; a
//! wrong key gets the API's 400 "API key not valid".

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::agent_api::{AgentBehavior, RecordedCall, Recorder};
use crate::loopback::Loopback;

/// The path prefix of model methods.
const MODELS: &str = "/v1beta/models/";

/// A running fake of the Gemini API; dropping it shuts the server down.
pub struct FakeGemini {
    server: Loopback,
    shared: Arc<Shared>,
}

struct Shared {
    behavior: AgentBehavior,
    api_key: String,
    recorder: Recorder,
}

impl FakeGemini {
    /// Starts a fake that answers as `behavior` and accepts only `api_key`.
    pub async fn start(behavior: AgentBehavior, api_key: &str) -> Self {
        let shared = Arc::new(Shared {
            behavior,
            api_key: api_key.to_owned(),
            recorder: Recorder::default(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = Loopback::serve(router, CancellationToken::new()).await;
        Self { server, shared }
    }

    /// The base URL for `GOOGLE_GEMINI_BASE_URL`, such as `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
        self.server.origin()
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.recorder.calls()
    }

    /// The streamed model requests received so far.
    pub fn stream_calls(&self) -> Vec<RecordedCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.ends_with(":streamGenerateContent"))
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
    let Some((model, rpc)) = call
        .path
        .strip_prefix(MODELS)
        .and_then(|m| m.split_once(':'))
    else {
        return error(404, "NOT_FOUND", "the fake has no such route");
    };
    if method != Method::POST {
        return error(405, "INVALID_ARGUMENT", "model methods are POST");
    }
    if call.header("x-goog-api-key") != Some(shared.api_key.as_str()) {
        return error(
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
        );
    }
    match (rpc, &shared.behavior) {
        (_, AgentBehavior::Error { status, message }) => error(*status, "UNAVAILABLE", message),
        ("generateContent", _) => axum::Json(structured(model, &call.body)).into_response(),
        ("streamGenerateContent", behavior) => stream(model, behavior, &call.body),
        ("countTokens", _) => axum::Json(json!({"totalTokens": 42})).into_response(),
        _ => error(404, "NOT_FOUND", "the fake has no such method"),
    }
}

fn stream(model: &str, behavior: &AgentBehavior, request: &Value) -> Response {
    let part = match behavior {
        AgentBehavior::RunThenReply { command, .. }
            if declares(request, "run_shell_command") && !answers_a_call(request) =>
        {
            json!({"functionCall": {"name": "run_shell_command",
                "args": {"command": command, "description": "run the requested command"}}})
        }
        AgentBehavior::RunThenReply { reply, .. } | AgentBehavior::Reply(reply) => {
            json!({"text": reply})
        }
        AgentBehavior::Error { .. } => unreachable!("errors are answered before streaming"),
    };
    let chunk = |parts: Value, last: bool| {
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if last {
            candidate["finishReason"] = json!("STOP");
        }
        json!({"candidates": [candidate], "modelVersion": model,
            "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 7,
                "totalTokenCount": 19}})
    };
    let body = [chunk(json!([part]), true)]
        .iter()
        .map(|c| format!("data: {c}\r\n\r\n"))
        .collect::<String>();
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(body),
    )
        .into_response()
}

/// Whether the request offers the function `name`.
fn declares(request: &Value, name: &str) -> bool {
    let tools = request["tools"].as_array().cloned().unwrap_or_default();
    tools.iter().any(|tool| {
        tool["functionDeclarations"]
            .as_array()
            .is_some_and(|fs| fs.iter().any(|f| f["name"] == name))
    })
}

/// Whether the last user turn carries a function response: the turn after a call.
fn answers_a_call(request: &Value) -> bool {
    let contents = request["contents"].as_array().cloned().unwrap_or_default();
    let last_user = contents.iter().rev().find(|c| c["role"] == "user");
    last_user
        .and_then(|c| c["parts"].as_array())
        .is_some_and(|parts| parts.iter().any(|p| p.get("functionResponse").is_some()))
}

/// A non-streamed answer whose text is an object filling the request's response schema (the
/// model router asks for `{complexity_reasoning, complexity_score}`).
fn structured(model: &str, request: &Value) -> Value {
    let config = &request["generationConfig"];
    let schema = config
        .get("responseJsonSchema")
        .or_else(|| config.get("responseSchema"))
        .cloned()
        .unwrap_or(Value::Null);
    let text = fill(&schema).to_string();
    json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
        "finishReason": "STOP", "index": 0}], "modelVersion": model,
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 5, "totalTokenCount": 10}})
}

/// The smallest value a schema accepts: the first enum value, 1, false, a short string.
fn fill(schema: &Value) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let kind = schema["type"]
        .as_str()
        .unwrap_or("object")
        .to_ascii_lowercase();
    match kind.as_str() {
        "integer" | "number" => json!(1),
        "boolean" => json!(false),
        "array" => json!([]),
        "string" => json!("user"),
        _ => {
            let properties = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let filled: Map<String, Value> = properties
                .iter()
                .map(|(k, v)| (k.clone(), fill(v)))
                .collect();
            Value::Object(filled)
        }
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let code = StatusCode::from_u16(status).expect("the fake's statuses are valid");
    let body = json!({"error": {"code": status, "message": message, "status": kind}});
    (code, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_router_schema_is_filled() {
        let request = json!({"generationConfig": {"responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object", "properties": {
                "complexity_reasoning": {"type": "string"},
                "complexity_score": {"type": "integer"}}}}});
        let answer = structured("m", &request);
        let text = answer["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            value,
            json!({"complexity_reasoning": "user", "complexity_score": 1})
        );
    }

    #[test]
    fn a_call_is_answered_once() {
        let first = json!({"tools": [{"functionDeclarations": [{"name": "run_shell_command"}]}],
            "contents": [{"role": "user", "parts": [{"text": "go"}]}]});
        assert!(declares(&first, "run_shell_command") && !answers_a_call(&first));
        let second = json!({"contents": [{"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [{"functionCall": {}}]},
            {"role": "user", "parts": [{"functionResponse": {}}]}]});
        assert!(answers_a_call(&second));
    }
}
