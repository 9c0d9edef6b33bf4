//! `/v1/credentials/codex/login`: the login relay, for an operator whose login has died and
//! who has no workstation at hand (see `crate::credentials::relay`).
//!
//! `POST` starts a device-code login and answers with the URL to open and the code to enter;
//! the bridge adopts the new login by itself once the person has entered the code. `GET`
//! follows the latest login, `DELETE` cancels a pending one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::body::ApiQuery;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::credentials::logins::Login;
use crate::credentials::relay::{LoginView, StartError};

/// Query of the login routes: which Codex login, the default one when absent.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    credential: Option<String>,
}

/// The login the query names, or 404 `unknown_credential`.
fn named<'a>(state: &'a AppState, query: &LoginQuery) -> Result<&'a Login, ApiError> {
    state
        .engine
        .logins()
        .get(query.credential.as_deref())
        .ok_or_else(|| unknown(state, query))
}

fn unknown(state: &AppState, query: &LoginQuery) -> ApiError {
    let known = state.engine.logins().names().join(", ");
    ApiError::not_found(
        "unknown_credential",
        format!(
            "credential `{}` is not configured; this bridge has: {known}",
            query.credential.as_deref().unwrap_or_default()
        ),
    )
}

/// Starts a login: 202 with a new one, 200 with the one already pending.
#[utoipa::path(
    post, path = "/v1/credentials/codex/login", tag = "credentials",
    summary = "Log the bridge in through a device code",
    description = "Runs the Codex CLI's device-code login and answers with the URL to open and the code to enter; the new login is adopted when a person completes it.",
    params(("credential" = Option<String>, Query, description = "a named Codex login; the default one when absent")),
    responses(
        (status = 200, description = "the login already pending", body = LoginView),
        (status = 202, description = "a new login, pending", body = LoginView),
        (status = 404, description = "`unknown_credential`", body = ErrorBody),
        (status = 502, description = "`login_start_failed`: the CLI printed no code", body = ErrorBody),
        (status = 503, description = "`login_unavailable`: the CLI could not be started", body = ErrorBody),
    ),
)]
pub async fn start_login(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LoginQuery>,
) -> Result<(StatusCode, Json<LoginView>), ApiError> {
    let Some(started) = state.engine.start_login(query.credential.as_deref()).await else {
        return Err(unknown(&state, &query));
    };
    match started {
        Ok((view, true)) => Ok((StatusCode::ACCEPTED, Json(view))),
        Ok((view, false)) => Ok((StatusCode::OK, Json(view))),
        Err(e @ StartError::Home { .. }) => Err(ApiError::internal(&e)),
        Err(e @ StartError::Spawn { .. }) => {
            tracing::error!(error = %crate::error_chain(&e), "failed to start a login");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "login_unavailable",
                e.to_string(),
            ))
        }
        Err(e @ StartError::NoCode { .. }) => {
            tracing::warn!(error = %e, "the Codex CLI did not start a device-code login");
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "login_start_failed",
                e.to_string(),
            ))
        }
    }
}

/// The latest login since the bridge started.
#[utoipa::path(
    get, path = "/v1/credentials/codex/login", tag = "credentials",
    summary = "The latest login through the bridge",
    params(("credential" = Option<String>, Query, description = "a named Codex login; the default one when absent")),
    responses(
        (status = 200, description = "the latest login", body = LoginView),
        (status = 404, description = "`no_login` or `unknown_credential`", body = ErrorBody),
    ),
)]
pub async fn get_login(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LoginQuery>,
) -> Result<Json<LoginView>, ApiError> {
    named(&state, &query)?
        .relay
        .latest()
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                "no_login",
                "no login was started since the bridge started; POST to start one",
            )
        })
}

/// Cancels the pending login.
#[utoipa::path(
    delete, path = "/v1/credentials/codex/login", tag = "credentials",
    summary = "Cancel the pending login",
    params(("credential" = Option<String>, Query, description = "a named Codex login; the default one when absent")),
    responses(
        (status = 200, description = "the login, cancelled", body = LoginView),
        (status = 404, description = "`unknown_credential`", body = ErrorBody),
        (status = 409, description = "`no_pending_login`", body = ErrorBody),
    ),
)]
pub async fn cancel_login(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<LoginQuery>,
) -> Result<Json<LoginView>, ApiError> {
    let login = named(&state, &query)?;
    login.relay.cancel().await.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_pending_login",
            "no login is pending",
        )
    })
}
