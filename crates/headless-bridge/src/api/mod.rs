//! The HTTP API: routes, shared state, authentication and request spans.
//!
//! [`router`] builds the whole application from an [`AppState`], so tests drive it without a
//! socket. Everything but `/health` and the runs page's static files sits behind bearer-token
//! authentication; the page itself reads its data through the authenticated routes. A
//! session's WebSocket also takes a single-use ticket instead of the token.

mod artifacts;
mod attach;
mod auth;
mod body;
mod credentials;
mod error;
mod events;
pub mod health;
mod legacy;
mod page;
mod runs;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tracing::Instrument as _;

pub use error::ApiError;

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
        }
    }
}

/// The application: every route, with authentication, body limits and request spans.
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/run_codex_session", post(legacy::run_codex_session))
        .route("/v1/adapters", get(runs::adapters))
        .route("/v1/runs", post(runs::submit).get(runs::list))
        .route("/v1/runs/{id}", get(runs::get))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/runs/{id}/events", get(events::events))
        .route("/v1/runs/{id}/logs", get(runs::logs))
        .route("/v1/runs/{id}/artifacts/{*path}", get(artifacts::download))
        .route(
            "/v1/credentials/codex/login",
            post(credentials::start_login)
                .get(credentials::get_login)
                .delete(credentials::cancel_login),
        )
        .route("/v1/sessions", post(sessions::start).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/v1/sessions/{id}/screen", get(sessions::screen))
        .route("/v1/sessions/{id}/input", post(sessions::input))
        .route("/v1/sessions/{id}/resize", post(sessions::resize))
        .route("/v1/sessions/{id}/events", get(sessions::events))
        .route("/v1/sessions/{id}/recording", get(sessions::recording))
        .route("/v1/sessions/{id}/attach-ticket", post(attach::ticket))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));

    Router::new()
        .route("/health", get(health::health))
        .route("/", get(page::index))
        .route("/assets/page.css", get(page::stylesheet))
        .route("/assets/page.js", get(page::script))
        .route("/assets/favicon.svg", get(page::favicon))
        // Checks the API token itself, or takes a ticket instead (see `attach`).
        .route("/v1/sessions/{id}/attach", get(attach::attach))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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

/// One span per request, named by the route template (never the raw path, which may hold ids
/// of unbounded variety). Health checks log at debug so probes do not flood the log.
async fn request_span(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!("request", %method, route);
    async move {
        let started = std::time::Instant::now();
        let response = next.run(request).await;
        let status = response.status().as_u16();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if route == "/health" {
            tracing::debug!(status, elapsed_ms, "request served");
        } else {
            tracing::info!(status, elapsed_ms, "request served");
        }
        response
    }
    .instrument(span)
    .await
}
