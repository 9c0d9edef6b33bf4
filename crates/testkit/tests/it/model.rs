//! The fake model at the HTTP level, for what Codex cannot show: which bytes a held response
//! sends, and what happens to it when the fake is dropped.

use std::time::Duration;

use reqwest::StatusCode;
use testkit::model::{Behavior, FakeModel};

use crate::support::http;

const KEY: &str = "sk-model-test";

/// Long enough for a loopback answer that is coming; the tests below expect none.
const SILENCE: Duration = Duration::from_millis(300);

fn post_responses(model: &FakeModel, key: &str) -> reqwest::RequestBuilder {
    let url = format!("{}/responses", model.base_url());
    let body = r#"{"model":"gpt-5.5","input":[]}"#;
    http()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
}

#[tokio::test]
async fn hang_sends_headers_then_holds_the_body_until_dropped() {
    let model = FakeModel::start(Behavior::Hang, KEY).await;
    let mut response = post_responses(&model, KEY)
        .send()
        .await
        .expect("headers arrive");

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(SILENCE, response.chunk()).await;
    assert!(first.is_err(), "the body stays silent, got {first:?}");

    drop(model);
    let after_drop = response.chunk().await;
    assert!(
        !matches!(after_drop, Ok(Some(_))),
        "no data after drop: {after_drop:?}"
    );
}

#[tokio::test]
async fn hang_before_headers_sends_nothing() {
    let model = FakeModel::start(Behavior::HangBeforeHeaders, KEY).await;
    let pending = tokio::time::timeout(SILENCE, post_responses(&model, KEY).send()).await;

    assert!(pending.is_err(), "no headers expected, got {pending:?}");
    assert_eq!(model.wait_for_requests(1).await.len(), 1);
}

#[tokio::test]
async fn held_answers_wait_for_the_release() {
    let model = FakeModel::start(Behavior::Reply("hi".into()), KEY).await;
    model.hold_answers();
    let mut answer = tokio::spawn(post_responses(&model, KEY).send());
    model.wait_for_requests(1).await;
    let early = tokio::time::timeout(SILENCE, &mut answer).await;
    assert!(early.is_err(), "no answer while held, got {early:?}");

    model.release_answers();
    let response = answer
        .await
        .expect("joined")
        .expect("answered after release");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.expect("body");
    assert!(body.contains("response.completed"), "{body}");
}

#[tokio::test]
async fn wrong_bearer_gets_401_and_is_still_recorded() {
    let model = FakeModel::start(Behavior::Reply("hi".into()), KEY).await;
    let response = post_responses(&model, "sk-wrong")
        .send()
        .await
        .expect("loopback answers");

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let recorded = model.requests();
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some("Bearer sk-wrong")
    );
}

#[tokio::test]
async fn status_answers_with_a_json_error() {
    let model = FakeModel::start(Behavior::Status(429), KEY).await;
    let response = post_responses(&model, KEY)
        .send()
        .await
        .expect("loopback answers");

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value =
        serde_json::from_slice(&response.bytes().await.expect("body")).expect("JSON error");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|text| text.contains("429"))
    );
}

#[tokio::test]
async fn models_side_request_gets_an_empty_list() {
    let model = FakeModel::start(Behavior::Reply("hi".into()), KEY).await;
    let url = format!("{}/models?client_version=0.171.0", model.base_url());
    let response = http()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("loopback answers");

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), r#"{"models":[]}"#);
    assert_eq!(
        model.requests()[0].query.as_deref(),
        Some("client_version=0.171.0")
    );
}
