//! The built-in `claude` and `gemini` adapters, end to end: the real bridge runs the real,
//! pinned Claude Code and Gemini CLIs (`scripts/install-clis.sh`) against loopback
//! fakes of the Anthropic Messages API and the Gemini API. Each test drives one path an agent
//! relies on: a tool turn that changes the repository, the outcome read from the CLI's own
//! result event, each way of logging in, and each failure mapped to its reason code.

use serde_json::{Value, json};
use tempfile::TempDir;
use testkit::agent_api::AgentBehavior;
use testkit::anthropic::FakeAnthropic;
use testkit::gemini::FakeGemini;
use testkit::git::GitServer;

use crate::support::{BridgeBuilder, TestBridge, agent_cli_bin, secrets_dir, traversable_data_dir};

/// The credential each fake accepts: a canary that must never appear in any answer.
const KEY: &str = "sk-ant-canary-7d1b2c9e4f0a3b5c";
/// The user Claude Code runs as by default (`nobody`), since it refuses root.
const NOBODY: &str = "65534";

async fn repo(git: &GitServer) -> String {
    git.create_repo("widget", &[("README.md", "widget\n")])
}

async fn run(bridge: &TestBridge, adapter: &str, prompt: &str, repo_url: Option<&str>) -> Value {
    let mut request = json!({"adapter": adapter, "prompt": prompt});
    if let Some(url) = repo_url {
        request["repo"] = json!({"url": url});
    }
    let (status, run) = bridge.post("/v1/runs?wait=300", &request).await;
    assert_eq!(status, 200, "{run}");
    assert!(
        !run.to_string().contains(KEY),
        "the credential leaked: {run}"
    );
    run
}

async fn claude_bridge(fake_url: &str, secrets: &TempDir) -> TestBridge {
    BridgeBuilder::new()
        .var(
            "HB_CLAUDE_BIN",
            agent_cli_bin("claude").display().to_string(),
        )
        .var("HB_CLAUDE_DIR", secrets.path().display().to_string())
        .var("HB_CLAUDE_BASE_URL", fake_url)
        .data_dir(traversable_data_dir())
        .start()
        .await
}

async fn gemini_bridge(fake_url: &str, secrets: &TempDir) -> TestBridge {
    BridgeBuilder::new()
        .var(
            "HB_GEMINI_BIN",
            agent_cli_bin("gemini").display().to_string(),
        )
        .var("HB_GEMINI_DIR", secrets.path().display().to_string())
        .var("HB_GEMINI_BASE_URL", fake_url)
        .start()
        .await
}

fn run_then_reply(command: &str) -> AgentBehavior {
    AgentBehavior::RunThenReply {
        command: command.into(),
        reply: "Done: wrote who.txt".into(),
    }
}

#[tokio::test]
async fn claude_runs_a_tool_turn_as_an_unprivileged_user_and_reports_the_diff() {
    let fake = FakeAnthropic::start(run_then_reply("id -u > who.txt"), KEY).await;
    let secrets = secrets_dir(&[("api_key", KEY)]);
    let bridge = claude_bridge(&fake.base_url(), &secrets).await;
    let git = GitServer::start().await;

    let run = run(
        &bridge,
        "claude",
        "-write your uid to who.txt",
        Some(&repo(&git).await),
    )
    .await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["output"], "Done: wrote who.txt");
    let diff = run["diff"].as_str().unwrap();
    assert!(
        diff.contains("+++ b/who.txt") && diff.contains(&format!("+{NOBODY}")),
        "{diff}"
    );
    assert_eq!(
        run["usage"]["input_tokens"], 24,
        "two requests of 12: {run}"
    );

    let calls = fake.message_calls();
    assert_eq!(calls.len(), 2, "a tool turn, then the answer");
    assert_eq!(calls[0].header("x-api-key"), Some(KEY));
    assert_eq!(calls[0].query.as_deref(), Some("beta=true"));
    let prompt = calls[0].body["messages"].to_string();
    assert!(
        prompt.contains("-write your uid"),
        "the prompt is passed whole: {prompt}"
    );
}

#[tokio::test]
async fn claude_logs_in_with_an_oauth_token() {
    let fake = FakeAnthropic::start(AgentBehavior::Reply("hello".into()), KEY).await;
    let secrets = secrets_dir(&[("oauth_token", KEY)]);
    let bridge = claude_bridge(&fake.base_url(), &secrets).await;

    let run = run(&bridge, "claude", "say hello", None).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    let calls = fake.message_calls();
    let bearer = format!("Bearer {KEY}");
    assert_eq!(calls[0].header("authorization"), Some(bearer.as_str()));
    assert_eq!(calls[0].header("x-api-key"), None);
}

/// The credentials file a `claude login` writes, copied owner-only into the run's HOME. Its
/// token is valid for an hour, so the CLI uses it as it is and never calls the token endpoint
/// (which is not configurable, and not on loopback).
#[tokio::test]
async fn claude_logs_in_with_a_credentials_file_and_its_expiry_is_shown() {
    let fake = FakeAnthropic::start(AgentBehavior::Reply("hello".into()), KEY).await;
    let expires_ms = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;
    let credentials = json!({"claudeAiOauth": {"accessToken": KEY,
        "refreshToken": "sk-ant-ort01-canary-refresh-0123", "expiresAt": expires_ms,
        "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}});
    let secrets = secrets_dir(&[("credentials.json", &credentials.to_string())]);
    let bridge = claude_bridge(&fake.base_url(), &secrets).await;

    let run = run(&bridge, "claude", "say hello", None).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(
        !run.to_string().contains("canary-refresh"),
        "the refresh token leaked: {run}"
    );
    let bearer = format!("Bearer {KEY}");
    assert_eq!(
        fake.message_calls()[0].header("authorization"),
        Some(bearer.as_str())
    );
    let (_, adapters) = bridge.get("/v1/adapters").await;
    let health = &adapter(&adapters, "claude")["health"];
    assert_eq!(health["ok"], true, "{health}");
    assert_eq!(
        health["credentials"]["expires_at"],
        expires_ms / 1000,
        "{health}"
    );
}

/// Claude reports an API error as `subtype: "success"` with `is_error: true`.
#[tokio::test]
async fn a_claude_api_error_fails_the_run_although_the_subtype_says_success() {
    let behavior = AgentBehavior::Error {
        status: 500,
        message: "fake internal error".into(),
    };
    let fake = FakeAnthropic::start(behavior, KEY).await;
    let secrets = secrets_dir(&[("api_key", KEY)]);
    let bridge = claude_bridge(&fake.base_url(), &secrets).await;

    let run = run(&bridge, "claude", "hi", None).await;

    assert_eq!(
        (&run["outcome"], &run["reason"]),
        (&json!("failed"), &json!("upstream_error")),
        "{run}"
    );
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("fake internal error"),
        "{run}"
    );
    let result = run["logs"].as_str().unwrap();
    assert!(
        result.contains(r#""subtype":"success""#) && result.contains(r#""is_error":true"#),
        "{result}"
    );
}

#[tokio::test]
async fn a_refused_claude_key_is_credentials_invalid() {
    let fake = FakeAnthropic::start(AgentBehavior::Reply("never".into()), KEY).await;
    let secrets = secrets_dir(&[("api_key", "sk-ant-wrong-key-0123456789")]);
    let bridge = claude_bridge(&fake.base_url(), &secrets).await;

    let run = run(&bridge, "claude", "hi", None).await;

    assert_eq!(run["reason"], "credentials_invalid", "{run}");
    assert_eq!(fake.message_calls().len(), 1, "no retries on a refused key");
}

#[tokio::test]
async fn claude_without_a_login_fails_before_it_starts_and_is_unhealthy() {
    let fake = FakeAnthropic::start(AgentBehavior::Reply("never".into()), KEY).await;
    let secrets = secrets_dir(&[]);
    let bridge = claude_bridge(&fake.base_url(), &secrets).await;

    let run = run(&bridge, "claude", "hi", None).await;

    assert_eq!(run["reason"], "credentials_missing", "{run}");
    assert!(
        run["message"].as_str().unwrap().contains("api_key"),
        "{run}"
    );
    assert!(fake.calls().is_empty(), "the CLI never started");
    let (_, adapters) = bridge.get("/v1/adapters").await;
    let claude = adapter(&adapters, "claude");
    assert_eq!(claude["health"]["ok"], false, "{claude}");
    assert_eq!(
        claude["health"]["binary"]["version"], "2.1.197 (Claude Code)",
        "{claude}"
    );
    assert_eq!(
        claude["health"]["credentials"]["reason"], "credentials_missing",
        "{claude}"
    );
}

fn adapter<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name} is listed: {list}"))
}

#[tokio::test]
async fn gemini_runs_a_tool_turn_with_its_auth_type_set() {
    let fake = FakeGemini::start(run_then_reply("echo hi > who.txt"), KEY).await;
    let secrets = secrets_dir(&[("api_key", KEY)]);
    let bridge = gemini_bridge(&fake.base_url(), &secrets).await;
    let git = GitServer::start().await;

    let run = run(&bridge, "gemini", "-write who.txt", Some(&repo(&git).await)).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["output"], "Done: wrote who.txt");
    let diff = run["diff"].as_str().unwrap();
    assert!(
        diff.contains("+++ b/who.txt") && diff.contains("+hi"),
        "{diff}"
    );
    let streams = fake.stream_calls();
    assert_eq!(
        streams.len(),
        2,
        "a tool turn, then the answer: {:?}",
        fake.calls()
    );
    assert_eq!(streams[0].header("x-goog-api-key"), Some(KEY));
    assert!(
        streams[0].body["contents"]
            .to_string()
            .contains("-write who.txt")
    );

    let (_, adapters) = bridge.get("/v1/adapters").await;
    let gemini = adapter(&adapters, "gemini");
    assert_eq!(gemini["health"]["ok"], true, "{gemini}");
    assert_eq!(gemini["health"]["binary"]["version"], "0.61.0", "{gemini}");
}

#[tokio::test]
async fn a_refused_gemini_key_is_credentials_invalid() {
    let fake = FakeGemini::start(AgentBehavior::Reply("never".into()), KEY).await;
    let secrets = secrets_dir(&[("api_key", "AIza-wrong-key-0123456789")]);
    let bridge = gemini_bridge(&fake.base_url(), &secrets).await;

    let run = run(&bridge, "gemini", "hi", None).await;

    assert_eq!(
        (&run["outcome"], &run["reason"]),
        (&json!("failed"), &json!("credentials_invalid")),
        "{run}"
    );
}

#[tokio::test]
async fn a_gemini_api_error_is_an_upstream_error() {
    let behavior = AgentBehavior::Error {
        status: 400,
        message: "fake bad request".into(),
    };
    let fake = FakeGemini::start(behavior, KEY).await;
    let secrets = secrets_dir(&[("api_key", KEY)]);
    let bridge = gemini_bridge(&fake.base_url(), &secrets).await;

    let run = run(&bridge, "gemini", "hi", None).await;

    assert_eq!(
        (&run["outcome"], &run["reason"]),
        (&json!("failed"), &json!("upstream_error")),
        "{run}"
    );
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("fake bad request"),
        "{run}"
    );
}
