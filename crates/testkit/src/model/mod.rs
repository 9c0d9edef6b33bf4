//! A fake of the OpenAI Responses API on loopback that the real Codex CLI runs turns against.
//!
//! [`FakeModel`] owns the server side: it answers `POST /v1/responses` with a Server-Sent
//! Events stream chosen by a [`Behavior`], answers Codex's model-list side request
//! `GET /v1/models`, rejects any bearer but its API key with `401` and records every request.
//! A test can hold its answers back and release them when it has seen what it wants to see of
//! a run in progress ([`FakeModel::hold_answers`]).
//! It also owns the Codex side of the handshake, the `config.toml` and `auth.json` that point
//! a Codex home at it. What Codex does with the answers is the business of the tests.

mod behavior;
mod codex_home;
mod sse;

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::loopback::Loopback;
use behavior::{Answer, error_body};

pub use behavior::Behavior;
pub use codex_home::CODEX_MODEL;

/// The path prefix of the API, as in `https://api.openai.com/v1`.
const API_PREFIX: &str = "/v1";

/// One request the fake model received, recorded before authentication.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordedRequest {
    /// The HTTP method, such as `POST`.
    pub method: String,
    /// The path without the query, such as `/v1/responses`.
    pub path: String,
    /// The raw query string, if the URL had one.
    pub query: Option<String>,
    /// The `Authorization` header, if present and valid UTF-8.
    pub authorization: Option<String>,
    /// The body parsed as JSON; `Value::Null` when empty or not JSON.
    pub body: Value,
}

/// A running fake of the Responses API on 127.0.0.1; dropping it shuts the server down and
/// ends held-open responses.
pub struct FakeModel {
    server: Loopback,
    shared: Arc<Shared>,
}

/// What the handler needs, shared between the server task and the handle.
struct Shared {
    behavior: Behavior,
    api_key: String,
    shutdown: CancellationToken,
    log: watch::Sender<Vec<RecordedRequest>>,
    /// Whether `POST /responses` is answered (true) or held until released (false).
    answering: watch::Sender<bool>,
}

impl FakeModel {
    /// Starts a fake that answers as `behavior` and accepts only `Authorization: Bearer
    /// <api_key>`.
    ///
    /// Panics if `behavior` cannot be served, such as a [`Behavior::Status`] outside 100-999.
    pub async fn start(behavior: Behavior, api_key: &str) -> FakeModel {
        if let Err(problem) = behavior.check() {
            panic!("FakeModel cannot serve {behavior:?}: {problem}");
        }
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            behavior,
            api_key: api_key.to_owned(),
            shutdown: shutdown.clone(),
            log: watch::Sender::new(Vec::new()),
            answering: watch::Sender::new(true),
        });

        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let server = Loopback::serve(router, shutdown).await;
        FakeModel { server, shared }
    }

    /// The base URL a client configures, such as `http://127.0.0.1:41234/v1`.
    pub fn base_url(&self) -> String {
        format!("{}{API_PREFIX}", self.server.origin())
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.log.borrow().clone()
    }

    /// Waits until at least `count` requests have arrived, then returns all of them.
    pub async fn wait_for_requests(&self, count: usize) -> Vec<RecordedRequest> {
        let mut log = self.shared.log.subscribe();
        let arrived = log.wait_for(|requests| requests.len() >= count).await;
        arrived
            .expect("the sender lives in `shared`, which `self` keeps alive")
            .clone()
    }

    /// Holds every `POST /responses` from now on (recorded, but unanswered) until
    /// [`FakeModel::release_answers`], so a test can look at a run while its CLI waits for the
    /// model, with no timing involved.
    pub fn hold_answers(&self) {
        self.shared.answering.send_replace(false);
    }

    /// Answers the held requests, and every later one at once.
    pub fn release_answers(&self) {
        self.shared.answering.send_replace(true);
    }
}

impl fmt::Debug for FakeModel {
    /// Leaves the API key out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeModel")
            .field("base_url", &self.base_url())
            .field("behavior", &self.shared.behavior)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Appends `request` to the log and returns its 1-based sequence number.
    fn record(&self, request: RecordedRequest) -> u64 {
        let mut seq = 0;
        self.log.send_modify(|requests| {
            requests.push(request);
            seq = requests.len();
        });
        u64::try_from(seq).expect("a request log never outgrows u64")
    }

    fn authorized(&self, request: &RecordedRequest) -> bool {
        let expected = format!("Bearer {}", self.api_key);
        request.authorization.as_deref() == Some(expected.as_str())
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = RecordedRequest::new(&method, &uri, &headers, &body);
    let seq = shared.record(request.clone());
    if !shared.authorized(&request) {
        return unauthorized();
    }

    let route = request.path.strip_prefix(API_PREFIX).unwrap_or_default();
    match (method, route) {
        (Method::POST, "/responses") => {
            let mut answering = shared.answering.subscribe();
            tokio::select! {
                _ = answering.wait_for(|open| *open) => {}
                () = shared.shutdown.cancelled() => {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
            }
            let answer = shared.behavior.answer(&request.body, seq);
            respond(answer, &shared.shutdown).await
        }
        (Method::GET, "/models") => Json(json!({"models": []})).into_response(),
        _ => not_found(&request),
    }
}

impl RecordedRequest {
    fn new(method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> RecordedRequest {
        let authorization = headers.get(header::AUTHORIZATION);
        RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            authorization: authorization
                .and_then(|value| value.to_str().ok())
                .map(Into::into),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
        }
    }
}

async fn respond(answer: Answer, shutdown: &CancellationToken) -> Response {
    match answer {
        Answer::Stream(events) => event_stream(Body::from(events)),
        Answer::Error { status, body } => (status, Json(body)).into_response(),
        Answer::HoldBody => event_stream(held_body(shutdown.clone())),
        Answer::HoldHeaders => {
            shutdown.cancelled().await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

fn event_stream(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

/// A body that yields nothing until shutdown, then breaks the connection.
fn held_body(shutdown: CancellationToken) -> Body {
    let end = async move {
        shutdown.cancelled_owned().await;
        Err::<Bytes, _>(std::io::Error::other("the fake model shut down"))
    };
    Body::from_stream(futures::stream::once(end))
}

fn unauthorized() -> Response {
    let message = "Incorrect API key provided.";
    let body = error_body(message, "invalid_request_error", "invalid_api_key");
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

fn not_found(request: &RecordedRequest) -> Response {
    let message = format!(
        "the fake model has no route {} {}",
        request.method, request.path
    );
    let body = error_body(&message, "invalid_request_error", "not_found");
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
