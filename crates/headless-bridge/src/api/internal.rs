//! `POST /internal/v1/runs/{id}/report`: where the worker of a run in a Kubernetes Job
//! reports its events and outcome (`k8s::report`).
//!
//! Not behind the API tokens: a run pod never holds one. Each run has its own random token
//! instead, which only lets its worker report for that run, and only while it is in progress.
//! Without the Job executor the route answers 404.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};

use super::AppState;
use super::error::ApiError;
use crate::k8s::executor::DeliverError;
use crate::k8s::report::Report;
use crate::run::RunId;

/// Takes one report from a run's worker.
pub async fn report(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let no_run = || ApiError::not_found("run_not_found", "no run in progress has this id");
    let jobs = state.engine.jobs().ok_or_else(no_run)?;
    let id: RunId = id.parse().map_err(|_| no_run())?;
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::auth::bearer_token)
        .ok_or_else(ApiError::unauthorized)?;
    let report: Report = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_report", format!("the report does not parse: {e}"))
    })?;
    match jobs.deliver(id, token, report).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(DeliverError::UnknownRun) => Err(no_run()),
        Err(DeliverError::Unauthorized) => Err(ApiError::unauthorized()),
    }
}
