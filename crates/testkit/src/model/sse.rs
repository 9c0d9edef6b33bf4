//! The streamed bodies the fake model answers `POST /responses` with: Server-Sent Events in
//! the shape of the OpenAI Responses API, reduced to what Codex needs to see one assistant
//! message, one function call or one failure.
//!
//! The event sequences follow traffic observed between Codex 0.171.0 and a loopback mock
//! (`/work/shared/notes/codex-cli.md` §5.2). Codex dispatches on the JSON `type`; the `event:`
//! line is sent anyway, as the real API does. Every stream except a failure ends with
//! `response.completed`: without it Codex treats the stream as dropped and retries.

use serde_json::{Value, json};

/// A stream that answers with one assistant message holding `text`.
pub(super) fn message(seq: u64, text: &str) -> String {
    let item_id = format!("msg_{seq}");
    let added = json!({"type": "message", "role": "assistant", "id": item_id,
        "status": "in_progress", "content": []});
    let done = json!({"type": "message", "role": "assistant", "id": item_id,
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});

    let events = [
        created(seq),
        json!({"type": "response.output_item.added", "output_index": 0, "item": added}),
        json!({"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
            "content_index": 0, "delta": text}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": done}),
        completed(seq),
    ];
    frames(&events)
}

/// A stream that asks Codex to call the tool `name` with the JSON `arguments`.
pub(super) fn function_call(seq: u64, call_id: &str, name: &str, arguments: &Value) -> String {
    let item_id = format!("fc_{seq}");
    let arguments = arguments.to_string();
    let item = |arguments: &str, status: &str| {
        json!({"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status})
    };

    let events = [
        created(seq),
        json!({"type": "response.output_item.added", "output_index": 0,
            "item": item("", "in_progress")}),
        json!({"type": "response.function_call_arguments.delta", "item_id": item_id,
            "output_index": 0, "delta": arguments}),
        json!({"type": "response.function_call_arguments.done", "item_id": item_id,
            "output_index": 0, "arguments": arguments}),
        json!({"type": "response.output_item.done", "output_index": 0,
            "item": item(&arguments, "completed")}),
        completed(seq),
    ];
    frames(&events)
}

/// A stream that fails the response with an API error `code` and `message`.
pub(super) fn failed(seq: u64, code: &str, message: &str) -> String {
    let failure = json!({"type": "response.failed", "response": {
        "id": response_id(seq), "status": "failed",
        "error": {"code": code, "message": message}}});
    frames(&[created(seq), failure])
}

fn created(seq: u64) -> Value {
    json!({"type": "response.created",
        "response": {"id": response_id(seq), "status": "in_progress"}})
}

/// Usage is fixed so tests can predict Codex's cumulative `turn.completed.usage`.
fn completed(seq: u64) -> Value {
    json!({"type": "response.completed", "response": {
        "id": response_id(seq), "status": "completed",
        "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 110}}})
}

fn response_id(seq: u64) -> String {
    format!("resp_{seq}")
}

fn frames(events: &[Value]) -> String {
    events.iter().map(frame).collect()
}

fn frame(event: &Value) -> String {
    let kind = event["type"].as_str().unwrap_or("message");
    format!("event: {kind}\ndata: {event}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(body: &str) -> Vec<Value> {
        body.split("\n\n")
            .filter(|frame| !frame.is_empty())
            .map(|frame| {
                let data = frame.lines().find_map(|line| line.strip_prefix("data: "));
                serde_json::from_str(data.expect("every frame has a data line"))
                    .expect("every data line is JSON")
            })
            .collect()
    }

    fn types(body: &str) -> Vec<String> {
        events(body)
            .iter()
            .map(|event| event["type"].to_string())
            .collect()
    }

    #[test]
    fn message_ends_with_completed_and_carries_the_text() {
        let body = message(3, "hello\nworld");
        let events = events(&body);

        assert_eq!(
            events.last().expect("not empty")["type"],
            "response.completed"
        );
        assert_eq!(events[3]["item"]["content"][0]["text"], "hello\nworld");
        assert!(body.starts_with("event: response.created\ndata: {"));
    }

    #[test]
    fn function_call_sends_arguments_as_a_json_string() {
        let body = function_call(1, "call_1", "exec_command", &json!({"cmd": "echo hi"}));
        let done = &events(&body)[4];

        assert_eq!(done["item"]["arguments"], r#"{"cmd":"echo hi"}"#);
        assert_eq!(done["item"]["call_id"], "call_1");
    }

    #[test]
    fn failed_has_no_completed_event() {
        let body = failed(1, "server_error", "boom");

        assert_eq!(
            types(&body),
            [r#""response.created""#, r#""response.failed""#]
        );
    }
}
