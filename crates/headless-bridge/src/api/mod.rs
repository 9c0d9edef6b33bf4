//! The HTTP API: routes, shared state, authentication and request spans.
//!
//! [`router`] builds the whole application from an [`AppState`], so tests drive it without a
//! socket. All routes are in one table, [`routes`], which also yields the OpenAPI document
//! (see [`openapi`]). Everything but `/health`, `/openapi.json`, the runs page's static files
//! and the Job workers' report route sits behind bearer-token authentication; the page reads
//! its data through the authenticated routes, the report route takes the run's own token, and
//! `/mcp` is the same API as a Model Context Protocol server. A session's WebSocket attach
//! checks the token itself, or takes a single-use ticket instead.

mod artifacts;
mod attach;
mod auth;
mod body;
mod credentials;
mod error;
mod events;
pub mod health;
mod internal;
mod legacy;
mod mcp;
pub mod openapi;
mod page;
mod runs;
mod schema;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ERROR_CODES};

use crate::config::Config;
use crate::run::engine::Engine;
use crate::session::Sessions;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub engine: Engine,
    pub sessions: Sessions,
    token_digests: Arc<Vec<[u8; 32]>>,
    /// Cancelled when the bridge shuts down, to end long-lived streams such as MCP sessions'.
    shutdown: CancellationToken,
}

impl AppState {
    /// State for a bridge with this configuration, engine and sessions.
    pub fn new(config: Arc<Config>, engine: Engine, sessions: Sessions) -> Self {
        let token_digests = Arc::new(auth::digests(config.api_tokens.values()));
        Self {
            config,
            engine,
            sessions,
            token_digests,
            shutdown: CancellationToken::new(),
        }
    }

    /// Ends the API's long-lived streams; call it when the server stops accepting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }
}

/// The route table: public routes, routes behind the token, and routes that check the token
/// themselves because they also take another credential. Each handler's `#[utoipa::path]`
/// gives both its route and its documentation, so the router and the OpenAPI document are
/// made from the same entries.
fn route_table() -> [OpenApiRouter<AppState>; 3] {
    let public = OpenApiRouter::new()
        .routes(routes!(health::health))
        .routes(routes!(openapi::serve))
        .routes(routes!(page::index))
        .routes(routes!(page::stylesheet))
        .routes(routes!(page::script))
        .routes(routes!(page::terminal_script))
        .routes(routes!(page::favicon));
    let protected = OpenApiRouter::new()
        .routes(routes!(legacy::run_codex_session))
        .routes(routes!(runs::adapters))
        .routes(routes!(runs::submit, runs::list))
        .routes(routes!(runs::get))
        .routes(routes!(runs::cancel))
        .routes(routes!(events::events))
        .routes(routes!(runs::logs))
        .routes(routes!(artifacts::download))
        .routes(routes!(
            credentials::start_login,
            credentials::get_login,
            credentials::cancel_login
        ))
        .routes(routes!(sessions::start, sessions::list))
        .routes(routes!(sessions::get, sessions::delete))
        .routes(routes!(sessions::screen))
        .routes(routes!(sessions::input))
        .routes(routes!(sessions::resize))
        .routes(routes!(sessions::events))
        .routes(routes!(sessions::recording))
        .routes(routes!(attach::ticket))
        .routes(routes!(mcp::post, mcp::stream, mcp::end));
    // A session's WebSocket: browsers cannot set headers on one, so it takes a single-use
    // ticket instead of the token too (see `attach`).
    let own_check = OpenApiRouter::new().routes(routes!(attach::attach));
    [public, protected, own_check]
}

/// Every route, with its documentation.
fn routes() -> OpenApiRouter<AppState> {
    let [public, protected, own_check] = route_table();
    public.merge(protected).merge(own_check)
}

/// The application: every route, with authentication, body limits and request spans.
pub fn router(state: AppState) -> Router {
    let [public, protected, own_check] = route_table();
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    let (app, _documented) = public.merge(protected).merge(own_check).split_for_parts();
    let mcp = mcp::McpEndpoint::new(state.clone(), state.shutdown.clone());

    // The Job workers' report and artifact routes: internal, not part of the documented API,
    // and authenticated by the run's own token rather than the API's, before the body is read.
    // An artifact is capped as a local run's is.
    let artifact_limit =
        usize::try_from(state.config.workspace.artifact_max_bytes).unwrap_or(usize::MAX);
    let internal = Router::new()
        .route(
            crate::k8s::report::REPORT_ROUTE,
            axum::routing::post(internal::report),
        )
        .route_layer(DefaultBodyLimit::max(crate::k8s::report::MAX_REPORT_BYTES))
        .merge(
            Router::new()
                .route(
                    crate::k8s::report::ARTIFACT_ROUTE,
                    axum::routing::put(internal::artifact),
                )
                .route_layer(DefaultBodyLimit::max(artifact_limit)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            internal::require_run_token,
        ));

    app.merge(internal)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(mcp))
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such route; see the README for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see the README for the API",
    )
}

/// One span per request, carrying the method, the route template (never the raw path, which
/// may hold ids of unbounded variety) and a request id: the caller's `X-Request-Id` when it is
/// a short token, else a new one. The id is echoed in the answer, so a client can quote it and
/// an operator find every log line of that request. Health checks log at debug so probes do
/// not flood the log.
async fn request_span(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_request_id(id))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let span = tracing::info_span!("request", %method, route, request_id);
    async move {
        let started = std::time::Instant::now();
        let mut response = next.run(request).await;
        let status = response.status().as_u16();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if route == "/health" {
            tracing::debug!(status, elapsed_ms, "request served");
        } else {
            tracing::info!(status, elapsed_ms, "request served");
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        response
    }
    .instrument(span)
    .await
}

/// The header that carries a request's id, both ways.
const REQUEST_ID: &str = "x-request-id";

/// A caller's request id is kept only when it cannot forge or flood a log line: 1 to 64
/// letters, digits, `-`, `_`, `.` or `:`.
fn is_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_request_ids_are_taken_from_callers() {
        for good in ["abc", "0193e0a4-7c1d-7000-8000-000000000000", "trace:1.2_3"] {
            assert!(is_request_id(good), "{good}");
        }
        for bad in ["", "a b", "x\ny", "\"quoted\"", &"a".repeat(65)] {
            assert!(!is_request_id(bad), "{bad}");
        }
    }
}
