//! A REST API stand-in on loopback that answers every request with one canned JSON response
//! and records what it received: enough to drive a CLI's error paths (a refused token, a
//! server error) where the real API's happy path would need far more of it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::agent_api::{RecordedCall, Recorder};
use crate::loopback::Loopback;

/// A running canned API; dropping it shuts the server down.
pub struct FakeRest {
    server: Loopback,
    shared: Arc<Shared>,
}

struct Shared {
    status: StatusCode,
    body: Value,
    recorder: Recorder,
}

impl FakeRest {
    /// Starts a server answering every request with `status` and `body`.
    ///
    /// Panics if `status` is not an HTTP status.
    pub async fn start(status: u16, body: Value) -> Self {
        let shared = Arc::new(Shared {
            status: StatusCode::from_u16(status).expect("an HTTP status"),
            body,
            recorder: Recorder::default(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = Loopback::serve(router, CancellationToken::new()).await;
        Self { server, shared }
    }

    /// The base URL, such as `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> String {
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
    shared
        .recorder
        .record(RecordedCall::new(&method, &uri, &headers, &body));
    (shared.status, axum::Json(shared.body.clone())).into_response()
}
