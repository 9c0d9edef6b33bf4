//! The API's one error type: a status, a stable machine code and a message that says what to
//! fix. Internal details go to the log, never to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Every code an error answer of the API can carry. The OpenAPI document lists exactly these,
/// and debug builds refuse to make an error with any other, so the two cannot drift apart.
pub const ERROR_CODES: &[&str] = &[
    "artifact_not_declared",
    "artifact_not_found",
    "artifact_too_large",
    "body_too_large",
    "cli_not_found",
    "credentials_expired",
    "credentials_invalid",
    "credentials_invalidated",
    "credentials_missing",
    "credentials_refresh_reused",
    "host_not_allowed",
    "idempotency_conflict",
    "internal_error",
    "invalid_artifact_path",
    "invalid_body",
    "invalid_checksum_format",
    "invalid_cursor",
    "invalid_field",
    "invalid_filter",
    "invalid_idempotency_key",
    "invalid_input",
    "invalid_json",
    "invalid_path",
    "invalid_query",
    "invalid_ref",
    "invalid_report",
    "invalid_size",
    "invalid_ticket",
    "invalid_timeout",
    "invalid_tool_name",
    "invalid_url",
    "invalid_wait",
    "login_start_failed",
    "login_unavailable",
    "mcp_bad_request",
    "mcp_not_acceptable",
    "mcp_session_not_found",
    "method_not_allowed",
    "missing_field",
    "no_login",
    "no_pending_login",
    "not_found",
    "origin_not_allowed",
    "queue_full",
    "recording_not_found",
    "run_finished",
    "run_not_found",
    "session_exited",
    "session_not_found",
    "session_not_idle",
    "session_waiting_for_input",
    "shutting_down",
    "too_many_sessions",
    "unauthorized",
    "unknown_adapter",
    "unknown_credential",
    "unknown_field",
    "unknown_key",
    "unsupported_media_type",
    "url_has_credentials",
    "url_host_unresolvable",
    "url_not_allowed",
    "webhooks_disabled",
    "websocket_required",
    "workspace_error",
];

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header, when retrying later can succeed.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            ERROR_CODES.contains(&code),
            "error code `{code}` is missing from ERROR_CODES (and so from the OpenAPI document)"
        );
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A 400 with this code and message.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A 404 for a missing resource.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// A 401: no token, or not one we know.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API token as `Authorization: Bearer <token>`",
        )
    }

    /// A 500 for our own fault. `cause` is logged, not shown.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %crate::error_chain(cause), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the bridge failed to handle this request; its log says why",
        )
    }
}

impl From<crate::run::engine::SubmitError> for ApiError {
    fn from(err: crate::run::engine::SubmitError) -> Self {
        use crate::run::engine::SubmitError;
        match err {
            SubmitError::QueueFull { retry_after_s, .. } => Self {
                retry_after: Some(retry_after_s),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "queue_full",
                    format!("{err}; retry later"),
                )
            },
            SubmitError::ShuttingDown => Self {
                retry_after: Some(5),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "the bridge is shutting down; retry against another replica or later",
                )
            },
            SubmitError::Conflict { .. } => Self::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("{err}: use a new key (or contract_id) for a different request"),
            ),
            SubmitError::Store(e) => Self::internal(&e),
        }
    }
}

/// The body of every error answer, as the OpenAPI document describes it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to branch on and a message for a person.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable machine code; the OpenAPI document lists every one.
    #[schema(schema_with = error_code_schema)]
    pub code: String,
    /// What to fix, in words.
    pub message: String,
}

/// `code` as a string enum of [`ERROR_CODES`].
fn error_code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ERROR_CODES.iter().copied()))
        .build()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_client_error() {
            tracing::debug!(code = self.code, message = %self.message, "request refused");
        }
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
