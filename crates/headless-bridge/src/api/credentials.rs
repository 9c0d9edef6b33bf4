//! `/v1/credentials/codex/login`: the login relay, for an operator whose login has died and
//! who has no workstation at hand (see `crate::credentials::relay`).
//!
//! `POST` starts a device-code login and answers with the URL to open and the code to enter;
//! the bridge adopts the new login by itself once the person has entered the code. `GET`
//! follows the latest login, `DELETE` cancels a pending one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::{ApiError, AppState};
use crate::credentials::relay::{LoginView, StartError};

/// Starts a login: 202 with a new one, 200 with the one already pending.
pub async fn start_login(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<LoginView>), ApiError> {
    match state.engine.start_login().await {
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
pub async fn get_login(State(state): State<AppState>) -> Result<Json<LoginView>, ApiError> {
    state.engine.relay().latest().map(Json).ok_or_else(|| {
        ApiError::not_found(
            "no_login",
            "no login was started since the bridge started; POST to start one",
        )
    })
}

/// Cancels the pending login.
pub async fn cancel_login(State(state): State<AppState>) -> Result<Json<LoginView>, ApiError> {
    state
        .engine
        .relay()
        .cancel()
        .await
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "no_pending_login",
                "no login is pending",
            )
        })
}
