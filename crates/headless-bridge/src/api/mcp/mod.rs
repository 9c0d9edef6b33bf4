//! `/mcp`: the bridge as a Model Context Protocol server, over the streamable HTTP transport.
//!
//! The protocol itself (JSON-RPC framing, sessions, Server-Sent Event streams, version
//! negotiation) is the official Rust SDK's (`rmcp`); [`server`] says what the bridge offers
//! through it: tools to start a run and wait for it, get one, cancel one and list the adapters
//! with their health, and each run's log as a resource. The routes sit behind the same bearer
//! authentication as the rest of the API (`auth.rs`), so the SDK's own `Host` check is off:
//! with tokens any host may call, and without tokens `auth.rs` already answers loopback hosts
//! only.

mod server;

use axum::extract::{Extension, Request};
use axum::response::Response;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::AppState;
use super::body::MAX_BODY_BYTES;
use super::error::ErrorBody;

/// The MCP transport, shared by the three routes of `/mcp`.
#[derive(Clone)]
pub struct McpEndpoint(StreamableHttpService<server::BridgeMcp, LocalSessionManager>);

impl McpEndpoint {
    /// The endpoint for this bridge; `shutdown` ends every session and open stream, so that
    /// a connected client cannot hold a graceful shutdown up.
    pub fn new(state: AppState, shutdown: CancellationToken) -> Self {
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_cancellation_token(shutdown)
            .with_max_request_body_bytes(MAX_BODY_BYTES);
        let service = StreamableHttpService::new(
            move || Ok(server::BridgeMcp::new(state.clone())),
            Default::default(),
            config,
        );
        Self(service)
    }

    async fn forward(self, request: Request) -> Response {
        match self.0.oneshot(request).await {
            Ok(response) => response.map(axum::body::Body::new),
            Err(never) => match never {},
        }
    }
}

/// A JSON-RPC message from the client: a request, a notification or a response.
#[utoipa::path(
    post, path = "/mcp", tag = "mcp",
    summary = "Send an MCP message (streamable HTTP transport)",
    description = "One JSON-RPC message of the Model Context Protocol. `Accept` must allow `application/json` and `text/event-stream`. The answer to a request is JSON or an SSE stream; a notification or response gets 202. After `initialize`, send the `Mcp-Session-Id` the server gave.",
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "the answer, as JSON or as an SSE stream", content(
            (Object = "application/json"), (String = "text/event-stream"))),
        (status = 202, description = "a notification or response was accepted"),
        (status = 404, description = "the session is unknown or has ended"),
        (status = 406, description = "`Accept` does not allow both JSON and SSE"),
        (status = 413, description = "the message is too large", body = ErrorBody),
        (status = 415, description = "the message is not JSON"),
        (status = 422, description = "the message is not a valid JSON-RPC message"),
    ),
)]
pub async fn post(Extension(mcp): Extension<McpEndpoint>, request: Request) -> Response {
    mcp.forward(request).await
}

/// The stream of messages the server sends outside any request.
#[utoipa::path(
    get, path = "/mcp", tag = "mcp",
    summary = "Open the session's server-to-client stream (SSE)",
    params(("Mcp-Session-Id" = String, Header, description = "the session, from `initialize`")),
    responses(
        (status = 200, description = "a Server-Sent Event stream", body = String, content_type = "text/event-stream"),
        (status = 404, description = "the session is unknown or has ended"),
        (status = 406, description = "`Accept` does not allow `text/event-stream`"),
        (status = 409, description = "the session already has such a stream"),
    ),
)]
pub async fn stream(Extension(mcp): Extension<McpEndpoint>, request: Request) -> Response {
    mcp.forward(request).await
}

/// Ends a session.
#[utoipa::path(
    delete, path = "/mcp", tag = "mcp",
    summary = "End an MCP session",
    params(("Mcp-Session-Id" = String, Header, description = "the session, from `initialize`")),
    responses(
        (status = 202, description = "the session has ended"),
        (status = 404, description = "the session is unknown or has ended"),
    ),
)]
pub async fn end(Extension(mcp): Extension<McpEndpoint>, request: Request) -> Response {
    mcp.forward(request).await
}
