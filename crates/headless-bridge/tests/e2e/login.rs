//! A ChatGPT login through real refreshes: the real Codex CLI refreshes an expired access
//! token against a loopback OAuth token endpoint that rotates single-use refresh tokens, as
//! the real one does. The bridge must keep each rotated token for the next run, never let two
//! runs refresh at once, and tell the truth in health when the login dies.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use testkit::model::{Behavior, FakeModel};

use crate::support::{BridgeProcess, unsigned_jwt};

/// What the token endpoint saw.
#[derive(Default)]
struct Tokens {
    /// The refresh token it will accept next; any other is "already used".
    current: String,
    issued: usize,
    refreshes: usize,
    reused: usize,
}

/// A loopback stand-in for the OAuth token endpoint: single-use, rotating refresh tokens.
pub(crate) struct TokenEndpoint {
    pub(crate) url: String,
    state: Arc<Mutex<Tokens>>,
}

impl TokenEndpoint {
    pub(crate) async fn start(first: &str) -> Self {
        let state = Arc::new(Mutex::new(Tokens {
            current: first.to_owned(),
            ..Tokens::default()
        }));
        let app = axum::Router::new()
            .route("/oauth/token", axum::routing::post(refresh))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    pub(crate) fn seen(&self) -> (usize, usize) {
        let tokens = self.state.lock().unwrap();
        (tokens.refreshes, tokens.reused)
    }

    /// Makes every refresh token it has issued count as used: the login is dead.
    fn revoke_all(&self) {
        self.state.lock().unwrap().current = "rt_revoked".into();
    }
}

async fn refresh(
    State(state): State<Arc<Mutex<Tokens>>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut tokens = state.lock().unwrap();
    if body["refresh_token"] != tokens.current.as_str() {
        tokens.reused += 1;
        let error = json!({"error": {"code": "refresh_token_reused", "message": "refresh token already used"}});
        return (StatusCode::UNAUTHORIZED, Json(error));
    }
    tokens.refreshes += 1;
    tokens.issued += 1;
    tokens.current = format!("rt_rotated_{}", tokens.issued);
    let answer = json!({"id_token": id_token(), "access_token": fresh_access_token(), "refresh_token": tokens.current});
    (StatusCode::OK, Json(answer))
}

/// The ChatGPT account claims every test token carries.
pub(crate) fn auth_claims() -> Value {
    json!({"chatgpt_plan_type": "pro", "chatgpt_user_id": "user-1", "chatgpt_account_id": "acct-1"})
}

fn id_token() -> String {
    unsigned_jwt(&json!({"email": "dev@example.com", "https://api.openai.com/auth": auth_claims()}))
}

/// The access token of the mounted login: expired, so the first run must refresh it.
pub(crate) fn expired_access_token() -> String {
    unsigned_jwt(&json!({"exp": 1000, "https://api.openai.com/auth": auth_claims()}))
}

/// The access token a refresh issues, the only one the fake model accepts. A run that starts
/// from the mounted login instead of the refreshed one must refresh again, with a refresh token
/// that was already used.
pub(crate) fn fresh_access_token() -> String {
    unsigned_jwt(&json!({"exp": 4_000_000_000_i64, "https://api.openai.com/auth": auth_claims()}))
}

pub(crate) fn chatgpt_login(refresh_token: &str) -> String {
    json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {"id_token": id_token(), "access_token": expired_access_token(), "refresh_token": refresh_token, "account_id": "acct-1"},
        "last_refresh": "2026-01-01T00:00:00Z",
    })
    .to_string()
}

/// A login directory in ChatGPT mode against `model`, and a bridge process using it.
async fn world() -> (
    FakeModel,
    TokenEndpoint,
    tempfile::TempDir,
    tempfile::TempDir,
    BridgeProcess,
) {
    let model = FakeModel::start(
        Behavior::Reply("answered with a refreshed login".into()),
        &fresh_access_token(),
    )
    .await;
    let tokens = TokenEndpoint::start("rt_initial").await;
    let codex_dir = tempfile::tempdir().unwrap();
    // ChatGPT mode also talks to chatgpt_base_url; keep that on the fake too.
    let origin = model.base_url().trim_end_matches("/v1").to_owned();
    // The ChatGPT apps connector would talk to the fake too, and only add noise.
    let base = model
        .codex_config_toml()
        .replace("[features]\n", "[features]\napps = false\n");
    let config = format!("chatgpt_base_url = \"{origin}/backend-api\"\n{base}");
    kubelet_secret(
        codex_dir.path(),
        1,
        &[
            ("config.toml", config.as_str()),
            ("auth.json", chatgpt_login("rt_initial").as_str()),
        ],
    );

    let data_dir = tempfile::tempdir().unwrap();
    let bridge = BridgeProcess::start_with(
        data_dir.path(),
        &[
            ("HB_CODEX_DIR", codex_dir.path()),
            ("CODEX_REFRESH_TOKEN_URL_OVERRIDE", Path::new(&tokens.url)),
        ],
    )
    .await;
    (model, tokens, codex_dir, data_dir, bridge)
}

/// Writes `files` into `dir` the way the kubelet mounts a Secret: each file a symlink through
/// `..data`, itself a symlink to a timestamped directory holding version `version`.
fn kubelet_secret(dir: &Path, version: u32, files: &[(&str, &str)]) {
    let versioned = format!("..2026_12_04_00_00_0{version}.000000001");
    std::fs::create_dir(dir.join(&versioned)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&versioned).join(name), text).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    // The kubelet's swap: a new `..data` link renamed over the old one, in one step.
    std::os::unix::fs::symlink(&versioned, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
}

fn run_body(prompt: &str) -> Value {
    json!({"adapter": "codex", "prompt": prompt})
}

#[tokio::test]
async fn each_refreshed_token_is_kept_for_the_next_run_and_the_secret_is_never_written() {
    let (_model, tokens, codex_dir, _data, bridge) = world().await;
    let source = std::fs::read(codex_dir.path().join("auth.json")).unwrap();
    let client = bridge.client();

    for prompt in ["first", "second", "third"] {
        let run = client.run_to_end(&run_body(prompt)).await;
        assert_eq!(run["outcome"], "succeeded", "{run}");
        assert!(
            !run.to_string().contains("rt_rotated"),
            "a refreshed token leaked: {run}"
        );
    }

    assert_eq!(
        tokens.seen(),
        (1, 0),
        "one refresh; later runs used the tokens it issued"
    );
    assert_eq!(
        std::fs::read(codex_dir.path().join("auth.json")).unwrap(),
        source,
        "the source is input only"
    );
    let (status, health) = client.get("/health?deep=1").await;
    assert_eq!(status, 200, "{health}");
    assert!(
        health["adapters"]["codex"]["credentials"]["versions"]["last_refresh"].is_string(),
        "{health}"
    );
}

#[tokio::test]
async fn concurrent_runs_of_one_login_never_refresh_at_once() {
    let (_model, tokens, _codex_dir, _data, bridge) = world().await;
    let client = bridge.client();

    let (one, two) = (run_body("one"), run_body("two"));
    let (a, b) = tokio::join!(client.run_to_end(&one), client.run_to_end(&two));

    assert_eq!(
        (&a["outcome"], &b["outcome"]),
        (&json!("succeeded"), &json!("succeeded")),
        "{a}\n{b}"
    );
    assert_eq!(
        tokens.seen(),
        (1, 0),
        "one refresh served both runs; no refresh token was presented twice"
    );
}

#[tokio::test]
async fn a_dead_login_fails_typed_turns_health_503_until_the_secret_changes() {
    let (_model, tokens, codex_dir, _data, bridge) = world().await;
    let client = bridge.client();
    tokens.revoke_all();

    let run = client.run_to_end(&run_body("hi")).await;

    assert_eq!(
        (&run["outcome"], &run["reason"]),
        (&json!("failed"), &json!("credentials_refresh_reused")),
        "{run}"
    );
    let (status, health) = client.get("/health?deep=1").await;
    assert_eq!(status, 503, "{health}");
    let credentials = &health["adapters"]["codex"]["credentials"];
    assert_eq!(credentials["reason"], "credentials_refresh_reused");
    assert!(
        credentials["remedy"]
            .as_str()
            .unwrap()
            .contains("codex login")
    );

    // A person logs in again and the Secret is updated: the kubelet swaps `..data`.
    tokens.state.lock().unwrap().current = "rt_new_login".into();
    let config = std::fs::read_to_string(codex_dir.path().join("config.toml")).unwrap();
    kubelet_secret(
        codex_dir.path(),
        2,
        &[
            ("config.toml", config.as_str()),
            ("auth.json", chatgpt_login("rt_new_login").as_str()),
        ],
    );
    let (status, health) = client.get("/health?deep=1").await;
    assert_eq!(
        status, 200,
        "a new login is not judged by the old one's failure: {health}"
    );
    let run = client.run_to_end(&run_body("again")).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
}

#[tokio::test]
async fn a_hundred_deep_health_checks_change_no_file_and_call_no_token_endpoint() {
    let (_model, tokens, codex_dir, data_dir, bridge) = world().await;
    let client = bridge.client();
    let run = client.run_to_end(&run_body("first")).await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    let source = std::fs::read(codex_dir.path().join("auth.json")).unwrap();
    let working_path = data_dir.path().join("credentials/codex/auth.json");
    let working = std::fs::read(&working_path).unwrap();
    let seen = tokens.seen();

    for _ in 0..100 {
        let (status, health) = client.get("/health?deep=1").await;
        assert_eq!(status, 200, "{health}");
    }

    assert_eq!(tokens.seen(), seen, "health never refreshes");
    assert_eq!(
        std::fs::read(codex_dir.path().join("auth.json")).unwrap(),
        source
    );
    assert_eq!(
        std::fs::read(&working_path).unwrap(),
        working,
        "the working copy is byte-identical"
    );
}
