//! A fake of the Netlify API (`/api/v1`) on loopback, for the real `netlify` CLI.
//!
//! netlify-cli takes its API base from `NETLIFY_API_URL` (an origin alone means the path prefix
//! `/api/v1`). The fake knows one site, [`FAKE_SITE_ID`] named [`FAKE_SITE_NAME`], in one
//! account, and answers only requests carrying `Authorization: Bearer <its token>`; any other
//! gets a 401 with the API's `{"code", "message"}` error body. It serves what `netlify deploy
//! --no-build` calls, in the API's JSON shapes:
//!
//! - `GET /user`, `GET /accounts`, `GET /accounts/{slug}/env` (no variables);
//! - `GET /sites/{id}` and `GET /sites?name=N` (the list, filtered by name);
//! - a file-digest deploy: `POST /sites/{id}/deploys` makes a draft, `PUT
//!   /sites/{id}/deploys/{deploy}` with `{"files": {path: sha1}}` answers that every file is
//!   `required`, `PUT /deploys/{deploy}/files/{path}` takes each upload, `GET` of the deploy
//!   says it is `ready`; `POST /deploys/{deploy}/cancel` (sent when a deploy fails) ends it.
//!
//! Anything else is the API's 404 `{"code":404,"message":"Not Found"}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::agent_api::{RecordedCall, Recorder};
use crate::loopback::Loopback;

/// The id of the one site the fake knows.
pub const FAKE_SITE_ID: &str = "5f1e0c2a-fake-site";
/// That site's name.
pub const FAKE_SITE_NAME: &str = "fake-site";
/// The id every deploy the fake makes gets.
pub const FAKE_DEPLOY_ID: &str = "6a7b8c9dfake";

const ACCOUNT_SLUG: &str = "fake-team";

/// A running fake of the Netlify API; dropping it shuts the server down.
pub struct FakeNetlify {
    server: Loopback,
    shared: Arc<Shared>,
}

struct Shared {
    token: String,
    recorder: Recorder,
    /// Uploaded files by deploy path, as received.
    uploads: Mutex<BTreeMap<String, Bytes>>,
}

impl FakeNetlify {
    /// Starts a fake that accepts only `token`.
    pub async fn start(token: &str) -> Self {
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            recorder: Recorder::default(),
            uploads: Mutex::default(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = Loopback::serve(router, CancellationToken::new()).await;
        Self { server, shared }
    }

    /// The value for `NETLIFY_API_URL`, such as `http://127.0.0.1:41234`.
    pub fn api_url(&self) -> String {
        self.server.origin()
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.recorder.calls()
    }

    /// The files uploaded to deploys so far, by path within the deploy.
    pub fn uploads(&self) -> BTreeMap<String, Bytes> {
        self.shared.uploads.lock().expect("uploads lock").clone()
    }

    /// The URL the fake gives the deploy it makes.
    pub fn deploy_url() -> String {
        format!("https://{FAKE_DEPLOY_ID}--{FAKE_SITE_NAME}.netlify.app")
    }
}

fn site() -> Value {
    json!({
        "id": FAKE_SITE_ID,
        "site_id": FAKE_SITE_ID,
        "name": FAKE_SITE_NAME,
        "account_id": "acc-fake",
        "account_slug": ACCOUNT_SLUG,
        "url": format!("http://{FAKE_SITE_NAME}.netlify.app"),
        "ssl_url": format!("https://{FAKE_SITE_NAME}.netlify.app"),
        "admin_url": format!("https://app.netlify.com/projects/{FAKE_SITE_NAME}"),
        "build_settings": {},
        "feature_flags": {},
        "use_envelope": false,
    })
}

fn deploy(state: &str, required: Vec<Value>) -> Value {
    json!({
        "id": FAKE_DEPLOY_ID,
        "site_id": FAKE_SITE_ID,
        "name": FAKE_SITE_NAME,
        "state": state,
        "required": required,
        "required_functions": [],
        "deploy_url": format!("http://{FAKE_DEPLOY_ID}--{FAKE_SITE_NAME}.netlify.app"),
        "deploy_ssl_url": FakeNetlify::deploy_url(),
        "url": format!("http://{FAKE_SITE_NAME}.netlify.app"),
        "ssl_url": format!("https://{FAKE_SITE_NAME}.netlify.app"),
        "admin_url": format!("https://app.netlify.com/projects/{FAKE_SITE_NAME}"),
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"code": status.as_u16(), "message": message});
    (status, axum::Json(body)).into_response()
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
    let segments: Vec<&str> = call.path.trim_matches('/').split('/').collect();
    let expected = format!("Bearer {}", shared.token);
    if call.header("authorization") != Some(expected.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Access Denied: your access token is invalid",
        );
    }
    let Some(rest) = segments.strip_prefix(&["api", "v1"]) else {
        return error(StatusCode::NOT_FOUND, "Not Found");
    };
    let answer = match (&method, rest) {
        (&Method::GET, ["user"]) => json!({
            "id": "user-fake",
            "email": "fake@example.com",
            "full_name": "Fake User",
            "slug": "fake",
        }),
        (&Method::GET, ["accounts"]) => json!([{
            "id": "acc-fake", "slug": ACCOUNT_SLUG, "name": "Fake Team", "type": "personal",
        }]),
        (&Method::GET, ["accounts", _, "env"]) => json!([]),
        (&Method::GET, ["sites"]) => {
            let name = query_value(call.query.as_deref(), "name");
            let matches = name.is_none_or(|n| FAKE_SITE_NAME.contains(n.as_str()));
            Value::Array(matches.then(site).into_iter().collect())
        }
        (&Method::GET, ["sites", FAKE_SITE_ID]) => site(),
        (&Method::POST, ["sites", FAKE_SITE_ID, "deploys"]) => deploy("new", Vec::new()),
        (&Method::PUT, ["sites", FAKE_SITE_ID, "deploys", FAKE_DEPLOY_ID]) => {
            // Every digest is unknown to the fake, so every file is required.
            let digests = call.body["files"]
                .as_object()
                .map(|files| files.values().cloned().collect())
                .unwrap_or_default();
            deploy("prepared", digests)
        }
        (&Method::PUT, ["deploys", FAKE_DEPLOY_ID, "files", path @ ..]) => {
            let path = path.join("/");
            shared
                .uploads
                .lock()
                .expect("uploads lock")
                .insert(path.clone(), body);
            json!({"id": path, "path": format!("/{path}"), "mime_type": "application/octet-stream"})
        }
        (&Method::GET, ["sites", FAKE_SITE_ID, "deploys", FAKE_DEPLOY_ID])
        | (&Method::GET, ["deploys", FAKE_DEPLOY_ID]) => deploy("ready", Vec::new()),
        (&Method::POST, ["deploys", FAKE_DEPLOY_ID, "cancel"]) => deploy("error", Vec::new()),
        _ => return error(StatusCode::NOT_FOUND, "Not Found"),
    };
    axum::Json(answer).into_response()
}

/// The first value of `name` in a query string (no percent-decoding: the fake's names need
/// none).
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}
