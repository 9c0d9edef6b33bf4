//! Several Codex logins in one bridge (two accounts, say): a run names the one it uses, each
//! login keeps its own working copy and config.toml, and deep health judges every one.

use serde_json::json;
use testkit::model::{Behavior, FakeModel};

use crate::support::{BridgeBuilder, Model, TestBridge};

/// The second account's API key: only its own model accepts it.
const SECOND_KEY: &str = "sk-second-account-7c1d93e0b2";

/// The default login against one model, a login named `second` against another.
async fn two_accounts() -> (Model, FakeModel, tempfile::TempDir, TestBridge) {
    let first = Model::start(Behavior::Reply("from the first account".into())).await;
    let second = FakeModel::start(
        Behavior::Reply("from the second account".into()),
        SECOND_KEY,
    )
    .await;
    let second_dir = tempfile::tempdir().unwrap();
    second.write_codex_home(second_dir.path()).unwrap();
    let bridge = BridgeBuilder::new()
        .codex_dir(first.codex_dir.path())
        .var(
            "HB_CODEX_CREDENTIALS",
            format!("second={}", second_dir.path().display()),
        )
        .start()
        .await;
    (first, second, second_dir, bridge)
}

#[tokio::test]
async fn a_run_uses_the_login_it_names_and_the_default_one_otherwise() {
    let (first, second, _second_dir, bridge) = two_accounts().await;

    let default = bridge
        .run_to_end(&json!({"adapter": "codex", "prompt": "hi"}))
        .await;
    let named = bridge
        .run_to_end(&json!({"adapter": "codex", "prompt": "hi", "credential": "second"}))
        .await;

    assert_eq!(default["output"], "from the first account", "{default}");
    assert_eq!(named["output"], "from the second account", "{named}");
    assert_eq!(named["spec"]["credential"], "second");
    assert_eq!(first.fake.requests().len(), 1, "one turn each");
    assert_eq!(second.requests().len(), 1, "one turn each");
    assert!(
        !named.to_string().contains(SECOND_KEY),
        "the key leaks nowhere"
    );
    let working = bridge
        .data_dir()
        .join("credentials/codex-named/second/auth.json");
    assert!(
        working.is_file(),
        "the named login has its own working copy"
    );
}

#[tokio::test]
async fn unknown_or_misplaced_credentials_are_refused_before_any_work() {
    let (first, second, _second_dir, bridge) = two_accounts().await;

    let (status, body) = bridge
        .post(
            "/v1/runs",
            &json!({"adapter": "codex", "prompt": "hi", "credential": "third"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_credential");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("default, second"), "{message}");

    let (status, body) = bridge
        .send(
            reqwest::Method::GET,
            "/v1/credentials/codex/login?credential=third",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_credential");
    assert!(first.fake.requests().is_empty() && second.requests().is_empty());
}

#[tokio::test]
async fn deep_health_judges_every_login_and_names_the_broken_one() {
    let (_first, _second, second_dir, bridge) = two_accounts().await;
    let (status, health) = bridge.get("/health?deep=1").await;
    assert_eq!(status, 200, "{health}");
    let codex = &health["adapters"]["codex"];
    assert_eq!(codex["named_credentials"]["second"]["state"], "ok");

    std::fs::remove_file(second_dir.path().join("auth.json")).unwrap();
    let (status, health) = bridge.get("/health?deep=1").await;

    assert_eq!(status, 503, "a login runs may name is gone: {health}");
    let second = &health["adapters"]["codex"]["named_credentials"]["second"];
    assert_eq!(second["reason"], "credentials_missing", "{health}");
    assert_eq!(
        health["adapters"]["codex"]["credentials"]["state"], "ok",
        "the default one is fine"
    );
}
