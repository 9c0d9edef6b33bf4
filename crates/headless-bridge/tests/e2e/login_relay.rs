//! The login relay with the real Codex CLI: `codex login --device-auth`, run by the bridge,
//! against a loopback issuer that speaks the ChatGPT device-code protocol (a one-time code,
//! polling until a person approves it, then an authorization-code exchange with PKCE). The
//! test plays the person who enters the code.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use testkit::model::{Behavior, FakeModel};

use crate::login::auth_claims;
use crate::support::{BridgeProcess, TestBridge, unsigned_jwt};

const LOGIN: &str = "/v1/credentials/codex/login";
const USER_CODE: &str = "WXYZ-2345";
const REFRESH_TOKEN: &str = "rt_relayed_0b6e41d9";

/// What the issuer knows of the one device login it serves.
#[derive(Default)]
struct Device {
    approved: bool,
    polls: usize,
    exchanges: usize,
    /// Refuse the authorization-code exchange, as for a code that was already redeemed.
    refuse_exchange: bool,
}

/// A loopback ChatGPT issuer for device-code logins.
struct Issuer {
    url: String,
    device: Arc<Mutex<Device>>,
}

impl Issuer {
    async fn start() -> Self {
        let device = Arc::new(Mutex::new(Device::default()));
        let app = axum::Router::new()
            .route(
                "/api/accounts/deviceauth/usercode",
                axum::routing::post(user_code),
            )
            .route("/api/accounts/deviceauth/token", axum::routing::post(poll))
            .route("/oauth/token", axum::routing::post(exchange))
            .with_state(device.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, device }
    }

    /// What the person does in the browser: signs in and enters the code.
    fn approve(&self) {
        self.device.lock().unwrap().approved = true;
    }
}

async fn user_code(Json(body): Json<Value>) -> Json<Value> {
    assert!(body["client_id"].is_string(), "{body}");
    Json(json!({"device_auth_id": "device-1", "user_code": USER_CODE, "interval": "1"}))
}

async fn poll(
    State(device): State<Arc<Mutex<Device>>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let mut device = device.lock().unwrap();
    device.polls += 1;
    if body["device_auth_id"] != "device-1" || body["user_code"] != USER_CODE {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "bad_code"})));
    }
    if !device.approved {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "authorization_pending"})),
        );
    }
    let grant = json!({"authorization_code": "code-1", "code_challenge": "challenge-1", "code_verifier": "verifier-1"});
    (StatusCode::OK, Json(grant))
}

async fn exchange(
    State(device): State<Arc<Mutex<Device>>>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let mut device = device.lock().unwrap();
    device.exchanges += 1;
    let field = |name: &str| form.get(name).map(String::as_str);
    let valid = field("grant_type") == Some("authorization_code")
        && field("code") == Some("code-1")
        && field("code_verifier") == Some("verifier-1");
    if !valid || device.refuse_exchange {
        let error =
            json!({"error": "invalid_grant", "error_description": "the code was already used"});
        return (StatusCode::BAD_REQUEST, Json(error));
    }
    let tokens = json!({"id_token": id_token(), "access_token": access_token(), "refresh_token": REFRESH_TOKEN});
    (StatusCode::OK, Json(tokens))
}

fn id_token() -> String {
    unsigned_jwt(
        &json!({"email": "dev@example.com", "exp": 4_000_000_000_i64,
        "https://api.openai.com/auth": auth_claims()}),
    )
}

/// The access token the issuer grants: the only one the fake model accepts.
fn access_token() -> String {
    unsigned_jwt(&json!({"exp": 4_000_000_000_i64, "https://api.openai.com/auth": auth_claims()}))
}

/// A model that accepts only the relayed login, a credential directory with a config.toml
/// and no auth.json (the pod has no login at all), and a bridge using both and the issuer.
async fn world() -> (
    FakeModel,
    Issuer,
    tempfile::TempDir,
    tempfile::TempDir,
    BridgeProcess,
) {
    let model = FakeModel::start(Behavior::Reply("relayed".into()), &access_token()).await;
    let issuer = Issuer::start().await;
    let codex_dir = tempfile::tempdir().unwrap();
    let origin = model.base_url().trim_end_matches("/v1").to_owned();
    let base = model
        .codex_config_toml()
        .replace("[features]\n", "[features]\napps = false\n");
    let config = format!("chatgpt_base_url = \"{origin}/backend-api\"\n{base}");
    std::fs::write(codex_dir.path().join("config.toml"), config).unwrap();

    let data_dir = tempfile::tempdir().unwrap();
    let bridge = BridgeProcess::start_with(
        data_dir.path(),
        &[
            ("HB_CODEX_DIR", codex_dir.path()),
            ("HB_CODEX_LOGIN_ISSUER", Path::new(&issuer.url)),
        ],
    )
    .await;
    (model, issuer, codex_dir, data_dir, bridge)
}

/// Follows the latest login until it is no longer pending.
async fn finished_login(client: &TestBridge) -> Value {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, login) = client.get(LOGIN).await;
        assert_eq!(status, 200, "{login}");
        if login["state"] != "pending" {
            return login;
        }
        assert!(Instant::now() < give_up, "the login never ended: {login}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Live processes running a device-code login against `issuer`.
fn login_processes(issuer: &Issuer) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&issuer.url) && cmdline.contains("--device-auth"))
        .collect()
}

#[tokio::test]
async fn a_person_logs_the_bridge_in_through_the_relay_and_runs_use_the_new_login() {
    let (_model, issuer, codex_dir, data_dir, bridge) = world().await;
    let client = bridge.client();
    let (status, health) = client.get("/health?deep=1").await;
    assert_eq!(status, 503, "no login yet: {health}");

    let (status, started) = client.post(LOGIN, &json!({})).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["state"], "pending");
    assert_eq!(started["user_code"], USER_CODE);
    assert_eq!(
        started["verification_url"],
        format!("{}/codex/device", issuer.url)
    );
    let (status, again) = client.post(LOGIN, &json!({})).await;
    assert_eq!(status, 200, "the pending login, not a second one: {again}");
    assert_eq!(again["id"], started["id"]);

    issuer.approve();
    let login = finished_login(&client).await;

    assert_eq!(login["state"], "succeeded", "{login}");
    assert!(login["finished_at"].is_string());
    let (status, health) = client.get("/health?deep=1").await;
    assert_eq!(status, 200, "the relayed login is healthy: {health}");
    let credentials = &health["adapters"]["codex"]["credentials"];
    assert_eq!(credentials["facts"]["auth_mode"], "chatgpt", "{health}");
    let run = client
        .run_to_end(&json!({"adapter": "codex", "prompt": "hi"}))
        .await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["output"], "relayed");

    let working = data_dir.path().join("credentials/codex/auth.json");
    let kept = std::fs::read_to_string(&working).expect("the working copy holds the login");
    assert!(kept.contains(REFRESH_TOKEN));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&working).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !codex_dir.path().join("auth.json").exists(),
        "the source is input only"
    );
    for shown in [&started, &login, &health, &run] {
        let text = shown.to_string();
        assert!(
            !text.contains(REFRESH_TOKEN) && !text.contains(&access_token()),
            "a token leaked: {text}"
        );
    }
    let homes = data_dir.path().join("credentials/logins");
    let left: Vec<_> = std::fs::read_dir(&homes).unwrap().collect();
    assert!(left.is_empty(), "the login's home is removed: {left:?}");
    assert_eq!(login_processes(&issuer), Vec::<String>::new());
    assert_eq!(issuer.device.lock().unwrap().exchanges, 1);
}

#[tokio::test]
async fn a_pending_login_can_be_cancelled_and_leaves_no_process() {
    let (_model, issuer, _codex_dir, _data_dir, bridge) = world().await;
    let client = bridge.client();
    let (status, started) = client.post(LOGIN, &json!({})).await;
    assert_eq!(status, 202, "{started}");
    assert!(!login_processes(&issuer).is_empty(), "the CLI is polling");

    let (status, cancelled) = client.send(reqwest::Method::DELETE, LOGIN, None).await;

    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(login_processes(&issuer), Vec::<String>::new());
    let (status, again) = client.send(reqwest::Method::DELETE, LOGIN, None).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "no_pending_login");
    let (status, health) = client.get("/health?deep=1").await;
    assert_eq!(status, 503, "still no login: {health}");
}

#[tokio::test]
async fn a_refused_exchange_fails_the_login_in_the_clis_words_and_keeps_the_old_state() {
    let (_model, issuer, _codex_dir, data_dir, bridge) = world().await;
    issuer.device.lock().unwrap().refuse_exchange = true;
    let client = bridge.client();
    let (status, _) = client.post(LOGIN, &json!({})).await;
    assert_eq!(status, 202);

    issuer.approve();
    let login = finished_login(&client).await;

    assert_eq!(login["state"], "failed", "{login}");
    let message = login["message"].as_str().expect("a message");
    assert!(
        message.contains("Error logging in") && message.contains("the code was already used"),
        "the CLI's and the issuer's words: {message}"
    );
    assert!(
        !message.contains("Welcome"),
        "only what explains it: {message}"
    );
    assert!(
        !data_dir.path().join("credentials/codex/auth.json").exists(),
        "nothing adopted"
    );
    assert_eq!(login_processes(&issuer), Vec::<String>::new());
    let (status, health) = client.get("/health?deep=1").await;
    assert_eq!(status, 503, "{health}");
}

/// A client that hangs up while the CLI starts does not orphan the CLI: the login still
/// becomes pending (and can be followed and cancelled), and no process or home stays. The
/// CLI is a stand-in that prints its code slowly; the relay only reads its screen.
#[tokio::test]
async fn a_start_the_client_hangs_up_on_is_followed_and_leaves_nothing_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("cli.pid");
    let cli = dir.path().join("codex");
    std::fs::write(
        &cli,
        format!(
            "#!/bin/sh\necho $$ > {}\nsleep 2\necho https://issuer.test/codex/device\n\
             echo WXYZ-2345\nexec sleep 600\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cli, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bridge = crate::support::BridgeBuilder::new()
        .var("HB_CODEX_BIN", cli.display().to_string())
        .start()
        .await;

    let hung_up = bridge
        .client
        .post(format!("{}{LOGIN}", bridge.url))
        .bearer_auth(crate::support::TOKEN)
        .json(&json!({}))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(hung_up.is_err(), "the CLI prints its code only after 2 s");

    let deadline = Instant::now() + Duration::from_secs(20);
    let pending = loop {
        let (status, login) = bridge.get(LOGIN).await;
        if status == 200 {
            break login;
        }
        assert!(Instant::now() < deadline, "the login never showed: {login}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pending["state"], "pending", "{pending}");
    assert_eq!(pending["user_code"], "WXYZ-2345");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let (status, cancelled) = bridge.send(reqwest::Method::DELETE, LOGIN, None).await;
    assert_eq!(
        (status.as_u16(), &cancelled["state"]),
        (200, &json!("cancelled"))
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the CLI is gone"
    );
    let homes = bridge.data_dir().join("credentials").join("logins");
    let left: Vec<_> = std::fs::read_dir(&homes).unwrap().collect();
    assert!(left.is_empty(), "the login's home is removed: {left:?}");
    bridge.stop().await;
}
