//! `/health` and `/health?deep=1` against the real codex binary and real login files.

use reqwest::StatusCode;
use serde_json::Value;
use testkit::model::Behavior;

use crate::support::{BridgeBuilder, CANARY_KEY, Model, unsigned_jwt};

async fn health(bridge: &crate::support::TestBridge, query: &str) -> (StatusCode, Value) {
    let response = bridge
        .client
        .get(format!("{}/health{query}", bridge.url))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn deep_health_is_ok_with_a_working_binary_and_an_api_key() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;

    let (status, body) = health(&bridge, "?deep=1").await;

    assert_eq!(status, 200, "{body}");
    let codex = &body["adapters"]["codex"];
    assert!(
        codex["binary"]["version"]
            .as_str()
            .unwrap()
            .contains("0.171.0"),
        "{body}"
    );
    assert_eq!(codex["credentials"]["facts"]["auth_mode"], "api_key");
    assert!(
        !body.to_string().contains(CANARY_KEY),
        "health must never show a secret"
    );
    assert!(
        model.fake.requests().is_empty(),
        "a health check must not call the model"
    );
}

#[tokio::test]
async fn deep_health_is_503_with_the_remedy_when_the_login_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let bridge = BridgeBuilder::new().codex_dir(dir.path()).start().await;

    let (status, body) = health(&bridge, "?deep=1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["adapters"]["codex"]["credentials"]["reason"],
        "credentials_missing"
    );
    assert!(
        body["adapters"]["codex"]["credentials"]["problem"]
            .as_str()
            .unwrap()
            .contains("codex login")
    );

    let (status, body) = health(&bridge, "").await;
    assert_eq!(status, 200, "liveness never depends on credentials: {body}");
}

#[tokio::test]
async fn deep_health_is_503_when_the_login_has_expired_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = |claims: &str| unsigned_jwt(&serde_json::from_str(claims).unwrap());
    let auth = serde_json::json!({
        "auth_mode": "chatgpt",
        "tokens": {"id_token": jwt(r#"{"email":"a@b.c"}"#), "access_token": jwt(r#"{"exp":1000}"#), "account_id": "acct"},
    });
    std::fs::write(dir.path().join("auth.json"), auth.to_string()).unwrap();
    let bridge = BridgeBuilder::new().codex_dir(dir.path()).start().await;

    let (status, body) = health(&bridge, "?deep=1").await;

    assert_eq!(status, 503, "{body}");
    let credentials = &body["adapters"]["codex"]["credentials"];
    assert_eq!(credentials["reason"], "credentials_expired");
    assert!(
        credentials["remedy"]
            .as_str()
            .unwrap()
            .contains("codex login")
    );
    assert_eq!(
        credentials["facts"]["access_token_expires_at"],
        "1970-01-01T00:16:40Z"
    );
}

/// A ChatGPT login without a refresh token whose access token expires in an hour.
fn login_expiring_in_an_hour(dir: &std::path::Path) {
    let jwt = |claims: &str| unsigned_jwt(&serde_json::from_str(claims).unwrap());
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let auth = serde_json::json!({
        "auth_mode": "chatgpt",
        "tokens": {"id_token": jwt(r#"{"email":"a@b.c"}"#),
            "access_token": jwt(&format!(r#"{{"exp":{exp}}}"#)), "account_id": "acct"},
    });
    std::fs::write(dir.join("auth.json"), auth.to_string()).unwrap();
}

#[tokio::test]
async fn deep_health_is_degraded_but_200_when_a_login_will_die_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    login_expiring_in_an_hour(dir.path());
    let bridge = BridgeBuilder::new().codex_dir(dir.path()).start().await;

    let (status, body) = health(&bridge, "?deep=1").await;

    assert_eq!(status, 200, "it still works: {body}");
    assert_eq!(body["status"], "degraded", "{body}");
    let credentials = &body["adapters"]["codex"]["credentials"];
    assert_eq!(credentials["state"], "degraded");
    let left = credentials["expires_in_s"].as_i64().expect("seconds left");
    assert!((3500..=3600).contains(&left), "{left}");
    assert!(
        credentials["remedy"]
            .as_str()
            .unwrap()
            .contains("/v1/credentials/codex/login")
    );
}

#[tokio::test]
async fn the_warning_window_is_the_operators_choice() {
    let dir = tempfile::tempdir().unwrap();
    login_expiring_in_an_hour(dir.path());
    let bridge = BridgeBuilder::new()
        .codex_dir(dir.path())
        .var("HB_CREDENTIAL_WARN_WINDOW", "30m")
        .start()
        .await;

    let (status, body) = health(&bridge, "?deep=1").await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["status"], "ok",
        "an hour is outside 30 minutes: {body}"
    );
    assert_eq!(body["adapters"]["codex"]["credentials"]["state"], "ok");
}

#[tokio::test]
async fn deep_health_is_503_when_the_binary_is_missing() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_CODEX_BIN", "/nonexistent/codex")
        .start()
        .await;

    let (status, body) = health(&bridge, "?deep=1").await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(body["adapters"]["codex"]["binary"]["ok"], false);
    assert!(
        body["adapters"]["codex"]["binary"]["remedy"]
            .as_str()
            .unwrap()
            .contains("HB_CODEX_BIN")
    );
}

#[tokio::test]
async fn deep_health_is_503_when_config_toml_is_broken() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    std::fs::write(
        model.codex_dir.path().join("config.toml"),
        "model = [unclosed\n",
    )
    .unwrap();
    let bridge = model.bridge().await;

    let (status, body) = health(&bridge, "?deep=1").await;

    assert_eq!(status, 503, "{body}");
    assert_eq!(body["adapters"]["codex"]["config_toml"]["ok"], false);
    assert!(
        body["adapters"]["codex"]["config_toml"]["problem"]
            .as_str()
            .unwrap()
            .contains("config.toml")
    );
    assert_eq!(body["git"]["ok"], true);
}

#[tokio::test]
async fn doctor_explains_the_deep_check_and_secret_create_prints_a_manifest() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_headless-bridge");
    let doctor = |codex_dir: &std::path::Path| {
        std::process::Command::new(bin)
            .arg("doctor")
            .env("HB_CODEX_DIR", codex_dir)
            .env("HB_CODEX_BIN", crate::support::codex_bin())
            .env("HB_DATA_DIR", data.path())
            .output()
            .expect("doctor runs")
    };

    let healthy = doctor(model.codex_dir.path());
    let report = String::from_utf8_lossy(&healthy.stdout);
    assert!(healthy.status.success(), "{report}");
    assert!(
        report.contains("ok    codex binary  codex-cli 0.171.0")
            && report.contains("all checks passed"),
        "{report}"
    );
    let broken = doctor(std::path::Path::new("/nonexistent"));
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("FAIL  login"));

    let secret = std::process::Command::new(bin)
        .args(["secret", "create", "--name", "codex-login", "--from"])
        .arg(model.codex_dir.path().join("auth.json"))
        .output()
        .expect("secret create runs");
    let manifest = String::from_utf8_lossy(&secret.stdout);
    assert!(
        secret.status.success()
            && manifest.contains("kind: Secret")
            && manifest.contains("  auth.json: "),
        "{manifest}"
    );
    assert!(
        !manifest.contains(CANARY_KEY),
        "the login is base64-encoded, not shown"
    );
}
