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
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};

use super::AppState;
use super::body::MAX_BODY_BYTES;
use super::error::{ApiError, ErrorBody};
use super::schema::McpSse;

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
        let response = match self.0.oneshot(request).await {
            Ok(response) => response.map(axum::body::Body::new),
            Err(never) => match never {},
        };
        as_api_error(response).await
    }
}

/// The SDK refuses a malformed exchange (no session id, an `Accept` without SSE, ...) with a
/// plain-text body and no content type; such an answer becomes the API's JSON error, with the
/// SDK's text as its message. JSON-RPC errors, which are JSON already and which MCP clients
/// read, pass as they are.
async fn as_api_error(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::NOT_FOUND => "mcp_session_not_found",
        StatusCode::NOT_ACCEPTABLE => "mcp_not_acceptable",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        s if s.is_server_error() => "internal_error",
        _ => "mcp_bad_request",
    };
    let text = axum::body::to_bytes(response.into_body(), MAX_SDK_MESSAGE)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    ApiError::new(status, code, message).into_response()
}

/// The SDK's refusals are one short sentence; anything longer is cut.
const MAX_SDK_MESSAGE: usize = 4096;

/// A refusal of `/mcp`: the API's error body, or a JSON-RPC error response, which MCP clients
/// read. Either one, so `anyOf`: an error body is an object too.
struct McpError;

impl utoipa::PartialSchema for McpError {
    fn schema() -> RefOr<Schema> {
        AnyOfBuilder::new()
            .item(Ref::from_schema_name("ErrorBody"))
            .item(ObjectBuilder::new())
            .description(Some("the API's error body, or a JSON-RPC error response"))
            .into()
    }
}

impl utoipa::ToSchema for McpError {}

/// A JSON-RPC message from the client: a request, a notification or a response.
#[utoipa::path(
    post, path = "/mcp", tag = "mcp",
    summary = "Send an MCP message (streamable HTTP transport)",
    description = "One JSON-RPC message of the Model Context Protocol. `Accept` must allow `application/json` and `text/event-stream`. The answer to a request is JSON or an SSE stream; a notification or response gets 202. After `initialize`, send the `Mcp-Session-Id` the server gave.",
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "the answer, as JSON or as an SSE stream", content(
            (Object = "application/json"), (McpSse = "text/event-stream"))),
        (status = 202, description = "a notification or response was accepted"),
        (status = 400, description = "`mcp_bad_request`: not a valid MCP message or session, or a JSON-RPC error", body = McpError),
        (status = 404, description = "`mcp_session_not_found`, or a JSON-RPC error for an unknown method", body = McpError),
        (status = 406, description = "`mcp_not_acceptable`: `Accept` must allow both JSON and SSE", body = ErrorBody),
        (status = 413, description = "`body_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the message must be JSON", body = ErrorBody),
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
        (status = 200, description = "a Server-Sent Event stream", body = McpSse, content_type = "text/event-stream"),
        (status = 400, description = "`mcp_bad_request`: no or a malformed session id", body = McpError),
        (status = 404, description = "`mcp_session_not_found`", body = ErrorBody),
        (status = 406, description = "`mcp_not_acceptable`: `Accept` must allow `text/event-stream`", body = ErrorBody),
        (status = 409, description = "`mcp_bad_request`: the session already has such a stream", body = McpError),
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
        (status = 400, description = "`mcp_bad_request`: no or a malformed session id", body = McpError),
        (status = 404, description = "`mcp_session_not_found`", body = ErrorBody),
    ),
)]
pub async fn end(Extension(mcp): Extension<McpEndpoint>, request: Request) -> Response {
    mcp.forward(request).await
}
