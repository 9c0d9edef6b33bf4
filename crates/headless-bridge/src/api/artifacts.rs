//! `GET /v1/runs/{id}/artifacts/{*path}`: a file the run declared and the bridge kept.
//!
//! Only paths listed in the run's record are served, so nothing a run did not declare, and
//! nothing outside its kept files, can be read through this route. Collecting and capping
//! the files is [`crate::artifacts`]' job.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::body::ApiPath;
use super::error::{ApiError, ErrorBody};
use crate::run::RunId;

/// Serves one kept artifact as bytes.
#[utoipa::path(
    get, path = "/v1/runs/{id}/artifacts/{*path}", tag = "runs",
    summary = "Download an artifact a run left",
    params(
        ("id" = String, Path, description = "the run's id"),
        ("path" = String, Path, description = "the artifact's path, as the record lists it"),
    ),
    responses(
        (status = 200, description = "the file's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "`artifact_not_found`", body = ErrorBody),
    ),
)]
pub async fn download(
    State(state): State<AppState>,
    ApiPath((id, path)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::not_found(
            "artifact_not_found",
            format!("run `{id}` has no artifact `{path}`; its record lists those it has"),
        )
    };
    let run_id: RunId = id.parse().map_err(|_| not_found())?;
    let record = state
        .engine
        .store()
        .get(run_id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(not_found)?;
    if !record.artifacts.iter().any(|a| a.path == path) {
        return Err(not_found());
    }

    let store = crate::artifacts::store_dir(&state.config.data_dir, &record.id.to_string());
    let bytes = crate::artifacts::read(&store, &path).map_err(|e| ApiError::internal(&e))?;
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    Ok((headers, bytes).into_response())
}
