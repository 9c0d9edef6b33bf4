//! A fake of the GitHub REST API on loopback, for the real `gh` CLI.
//!
//! `gh` takes no base URL, but `GH_HOST=github.localhost` makes it speak plain HTTP to
//! `api.github.localhost`, and `HTTP_PROXY` sends that to this server as absolute-form requests
//! (`GET http://api.github.localhost/user`), as shared/notes/other-clis.md §3 records. The fake
//! answers `GET /user` for its token (`Authorization: token <t>`), the API's 401 "Bad
//! credentials" for any other, and 404 "Not Found" for any other path.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::agent_api::{RecordedCall, Recorder};
use crate::loopback::Loopback;

/// The login the fake's `/user` answers with.
pub const FAKE_LOGIN: &str = "fake-user";

/// A running fake of the GitHub API; dropping it shuts the server down.
pub struct FakeGitHub {
    server: Loopback,
    shared: Arc<Shared>,
}

struct Shared {
    token: String,
    recorder: Recorder,
}

impl FakeGitHub {
    /// Starts a fake that accepts only `token`.
    pub async fn start(token: &str) -> Self {
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            recorder: Recorder::default(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = Loopback::serve(router, CancellationToken::new()).await;
        Self { server, shared }
    }

    /// The proxy URL for `HTTP_PROXY`, such as `http://127.0.0.1:41234`.
    pub fn proxy_url(&self) -> String {
        self.server.origin()
    }

    /// Every request received so far.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.recorder.calls()
    }
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
    let expected = format!("token {}", shared.token);
    if call.header("authorization") != Some(expected.as_str()) {
        let body = json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    match (method, call.path.as_str()) {
        (Method::GET, "/user") => {
            axum::Json(json!({"login": FAKE_LOGIN, "id": 1, "type": "User"})).into_response()
        }
        _ => {
            let body = json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"});
            (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
        }
    }
}
