//! The real Codex TUI (`codex` without `exec`) in an interactive session, against the fake
//! model: the built-in session spec must find its input line, answer its first-run screens
//! (the offer of a newer model appears on every fresh Codex home), and tell a turn in
//! progress from an idle prompt.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use testkit::model::Behavior;

use crate::sessions::{input, leftovers, screen_when, start, text};
use crate::support::{CANARY_KEY, Model};

#[tokio::test]
async fn the_codex_tui_answers_a_typed_prompt_from_the_model() {
    let model = Model::start(Behavior::Reply("Hello from the fake model".into())).await;
    let bridge = model.bridge().await;
    let id = start(
        &bridge,
        json!({"adapter": "codex", "rows": 30, "cols": 100}),
    )
    .await;

    // Idle means the input line shows: the model offer was answered by the spec's rule.
    let screen = screen_when(&bridge, &id, "idle").await;
    let shown = text(&screen);
    assert!(shown.contains("OpenAI Codex"), "{shown}");
    assert!(!shown.contains("Use existing model"), "{shown}");
    assert!(model.fake.requests().is_empty());

    // Typed keys followed at once by Enter look like a paste to Codex, which makes the Enter
    // a newline: the prompt goes in as a bracketed paste, which it reads as one event.
    let (status, typed) = input(&bridge, &id, json!({"paste": "Please say hello"})).await;
    assert_eq!(status, 200, "{typed}");
    let (status, answered) = input(
        &bridge,
        &id,
        json!({"keys": ["Enter"], "wait": "idle", "timeout_ms": 30000}),
    )
    .await;
    assert_eq!(status, 200, "{answered}");
    let shown = text(&answered);
    assert!(shown.contains("Hello from the fake model"), "{shown}");
    assert!(!shown.contains("esc to interrupt"), "{shown}");
    assert!(!shown.contains(CANARY_KEY));

    // The prompt reached the model as a turn's last user message (the TUI also asks the
    // model, in a thread of its own, for a title for the thread).
    let last_inputs: Vec<String> = model
        .fake
        .requests()
        .iter()
        .filter_map(|r| {
            r.body["input"].as_array()?.last()?["content"][0]["text"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    let turns = last_inputs
        .iter()
        .filter(|t| *t == "Please say hello")
        .count();
    assert_eq!(turns, 1, "{last_inputs:?}");

    let (status, ended) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["reason"], "deleted");
    assert_eq!(leftovers(&id), 0);
}

#[tokio::test]
async fn a_first_prompt_given_at_start_is_answered_before_the_session_is_idle() {
    let model = Model::start(Behavior::Reply("Hello from the start".into())).await;
    let bridge = model.bridge().await;
    let body = json!({"adapter": "codex", "rows": 30, "cols": 100, "prompt": "Say hi"});
    let id = start(&bridge, body).await;

    let screen = screen_when(&bridge, &id, "idle").await;
    let shown = text(&screen);
    assert!(shown.contains("Hello from the start"), "{shown}");

    let (status, _) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(leftovers(&id), 0);
}

#[tokio::test]
async fn a_codex_turn_in_progress_is_busy_until_interrupted() {
    let model = Model::start(Behavior::Hang).await;
    let bridge = model.bridge().await;
    let id = start(
        &bridge,
        json!({"adapter": "codex", "rows": 30, "cols": 100}),
    )
    .await;
    screen_when(&bridge, &id, "idle").await;

    // The model never answers: the input line stays drawn, but the turn's line says it is
    // working, so waiting for idle meets the deadline.
    let (status, _) = input(&bridge, &id, json!({"paste": "Take your time"})).await;
    assert_eq!(status, 200);
    let (status, refused) = input(
        &bridge,
        &id,
        json!({"keys": ["Enter"], "wait": "idle", "timeout_ms": 3000}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "session_not_idle");
    let shown = text(&refused["screen"]);
    assert!(shown.contains("esc to interrupt"), "{shown}");
    tokio::time::timeout(Duration::from_secs(20), model.fake.wait_for_requests(1))
        .await
        .expect("the turn reached the model");

    // Esc interrupts the turn, and the input line is ready again.
    let (status, answered) = input(
        &bridge,
        &id,
        json!({"keys": ["Esc"], "wait": "idle", "timeout_ms": 20000}),
    )
    .await;
    assert_eq!(status, 200, "{answered}");
    assert!(!text(&answered).contains("esc to interrupt"));

    let (status, _) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(leftovers(&id), 0);
}
