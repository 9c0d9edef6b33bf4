//! The real Codex CLI against the fake model: each behavior ends the turn the way the bridge
//! will see it, and the key reaches the fake through `auth.json` alone.

use testkit::model::{Behavior, CODEX_MODEL, FakeModel, RecordedRequest};

use crate::support::{Codex, require_codex};

const KEY: &str = "sk-testkit-0123456789abcdef";

/// All Codex 0.171.0 prints on stderr in a clean `--json` run, even with stdin at /dev/null.
const STDIN_NOTICE: &str = "Reading additional input from stdin...";

fn bearer() -> String {
    format!("Bearer {KEY}")
}

/// The text of the last input item: the user's prompt on a turn's first request.
fn prompt_of(request: &RecordedRequest) -> &str {
    let last = request.body["input"]
        .as_array()
        .and_then(|input| input.last());
    last.and_then(|item| item["content"][0]["text"].as_str())
        .unwrap_or_default()
}

#[tokio::test]
async fn reply_completes_the_turn_with_the_message() {
    let binary = require_codex!();
    let model = FakeModel::start(Behavior::Reply("Fixed the bug.".into()), KEY).await;
    let run = Codex::new(binary, &model).exec("Please fix the bug").await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.terminal()["type"], "turn.completed", "{run:#?}");
    assert_eq!(run.messages(), ["Fixed the bug."]);
    assert_eq!(run.last_message, "Fixed the bug.");
    let noise = run.stderr.lines().filter(|line| !line.is_empty());
    let unexpected: Vec<&str> = noise.filter(|line| *line != STDIN_NOTICE).collect();
    assert!(
        unexpected.is_empty(),
        "stderr of a clean run: {unexpected:?}"
    );

    let requests = model.requests();
    assert_eq!(requests.len(), 1, "no side requests: {requests:#?}");
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/v1/responses")
    );
    assert_eq!(request.authorization.as_deref(), Some(bearer().as_str()));
    assert_eq!(request.body["model"], CODEX_MODEL);
    assert_eq!(prompt_of(request), "Please fix the bug");
}

#[tokio::test]
async fn run_then_reply_quotes_what_the_command_printed() {
    let binary = require_codex!();
    let behavior = Behavior::RunThenReply {
        command: "echo hi".into(),
        yield_time_ms: 10_000,
    };
    let model = FakeModel::start(behavior, KEY).await;
    let run = Codex::new(binary, &model)
        .exec("Say hi with the shell")
        .await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.terminal()["type"], "turn.completed");
    let mut completed = run
        .events
        .iter()
        .filter(|event| event["type"] == "item.completed");
    let executed = completed.find(|event| event["item"]["type"] == "command_execution");
    let executed = executed.expect("codex ran the command");
    assert_eq!(executed["item"]["aggregated_output"], "hi\n");
    assert_eq!(run.messages(), ["The command printed:\nhi\n"]);

    let requests = model.requests();
    assert_eq!(requests.len(), 2, "the call, then the call's output");
    assert!(
        requests
            .iter()
            .all(|request| request.authorization == Some(bearer()))
    );
}

#[tokio::test]
async fn fail_ends_in_turn_failed_and_exit_code_1() {
    let binary = require_codex!();
    let behavior = Behavior::Fail {
        code: "server_error".into(),
        message: "the fake broke".into(),
    };
    let model = FakeModel::start(behavior, KEY).await;
    let run = Codex::new(binary, &model).exec("Please fix the bug").await;

    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.terminal()["type"], "turn.failed");
    let message = run.terminal()["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("the fake broke"), "{message}");
    assert_eq!(model.requests().len(), 1, "the config disables retries");
    assert_eq!(run.last_message, "");
}

#[tokio::test]
async fn status_error_fails_the_turn_after_one_request() {
    let binary = require_codex!();
    let model = FakeModel::start(Behavior::Status(500), KEY).await;
    let run = Codex::new(binary, &model).exec("Please fix the bug").await;

    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.terminal()["type"], "turn.failed");
    assert_eq!(model.requests().len(), 1, "the config disables retries");
}

#[tokio::test]
async fn wrong_key_is_refused_with_401() {
    let binary = require_codex!();
    let model = FakeModel::start(Behavior::Reply("never sent".into()), "sk-the-right-key").await;
    let codex = Codex::new(binary, &model);
    let wrong = r#"{"auth_mode":"apikey","OPENAI_API_KEY":"sk-the-wrong-key"}"#;
    std::fs::write(codex.codex_home.join("auth.json"), wrong).expect("scratch is writable");
    let run = codex.exec("Please fix the bug").await;

    assert_eq!(run.code, Some(1), "{run:#?}");
    let message = run.terminal()["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("401"), "{message}");
}

#[tokio::test]
async fn hang_runs_into_codex_stream_idle_timeout() {
    let binary = require_codex!();
    let model = FakeModel::start(Behavior::Hang, KEY).await;
    let codex =
        Codex::new(binary, &model).config("model_providers.fake.stream_idle_timeout_ms=500");
    let run = codex.exec("Please fix the bug").await;

    assert_eq!(run.code, Some(1), "{run:#?}");
    let message = run.terminal()["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("idle timeout"), "{message}");
}

#[tokio::test]
async fn prompt_starting_with_a_dash_passes_after_double_dash() {
    let binary = require_codex!();
    let model = FakeModel::start(Behavior::Reply("ok".into()), KEY).await;
    let run = Codex::new(binary, &model).exec("--help -rf").await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(prompt_of(&model.requests()[0]), "--help -rf");
}
