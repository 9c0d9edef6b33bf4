//! The routes where the worker of a run in a Kubernetes Job reports (`k8s::report`):
//! `POST /internal/v1/runs/{id}/report` for its events and outcome, and
//! `PUT /internal/v1/runs/{id}/artifacts/{*path}` for each artifact it kept.
//!
//! Not behind the API tokens: a run pod never holds one. Each run has its own random token
//! instead, which only lets its worker report for that run, and only while it is in progress;
//! it is checked before the body is read ([`require_run_token`]).
//! Without the Job executor the routes answer 404.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use super::error::ApiError;
use crate::k8s::executor::{DeliverError, JobExecutor};
use crate::k8s::report::Report;
use crate::run::RunId;

/// Takes one report from a run's worker.
pub async fn report(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (jobs, id, token) = caller(&state, &id, &headers)?;
    let report: Report = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_report", format!("the report does not parse: {e}"))
    })?;
    jobs.deliver(id, &token, report)
        .await
        .map_err(refused)
        .map(|()| StatusCode::NO_CONTENT)
}

/// Takes one artifact a run's worker kept, at most `HB_ARTIFACT_MAX_BYTES` (the route's body
/// limit), as a local run would keep it.
pub async fn artifact(
    State(state): State<AppState>,
    Path((id, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let (jobs, id, token) = caller(&state, &id, &headers)?;
    let max = state.config.workspace.artifact_max_bytes;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "artifact_too_large",
                format!("the artifact is larger than {max} bytes (HB_ARTIFACT_MAX_BYTES)"),
            )
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("failed to read the body: {rejection}"),
            )
        }
    })?;
    let jobs = jobs.clone();
    let kept =
        tokio::task::spawn_blocking(move || jobs.keep_artifact(id, &token, &path, &body)).await;
    kept.map_err(|e| ApiError::internal(&e))?
        .map_err(refused)
        .map(|()| StatusCode::NO_CONTENT)
}

/// Refuses a request whose token is not its run's before its body is read: only a run's own
/// worker may make the bridge take in a report or an artifact, up to 64 MiB.
pub async fn require_run_token(
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let id = params.get("id").map_or("", String::as_str);
    let (jobs, id, token) = caller(&state, id, &headers)?;
    jobs.check_token(id, &token).map_err(refused)?;
    Ok(next.run(request).await)
}

/// The Job executor, the run id and the bearer token of a worker's request.
fn caller<'a>(
    state: &'a AppState,
    id: &str,
    headers: &'a HeaderMap,
) -> Result<(&'a std::sync::Arc<JobExecutor>, RunId, String), ApiError> {
    let jobs = state.engine.jobs().ok_or_else(no_run)?;
    let id: RunId = id.parse().map_err(|_| no_run())?;
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::auth::bearer_token)
        .ok_or_else(ApiError::unauthorized)?;
    Ok((jobs, id, token.to_owned()))
}

fn no_run() -> ApiError {
    ApiError::not_found("run_not_found", "no run in progress has this id")
}

fn refused(e: DeliverError) -> ApiError {
    match e {
        DeliverError::UnknownRun => no_run(),
        DeliverError::Unauthorized => ApiError::unauthorized(),
        DeliverError::Undeclared(_) => {
            ApiError::bad_request("artifact_not_declared", e.to_string())
        }
        DeliverError::Keep(source) => ApiError::internal(&source),
    }
}
