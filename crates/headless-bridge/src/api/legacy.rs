//! `POST /run_codex_session`: the original service's contract, kept exactly.
//!
//! Request `{contract_id, repo_url, failure_details, ak_url, ak_hash}`; the answer comes when the
//! run has finished: `{status: "success"|"error", run_id, logs, output, meta}`, with meta
//! carrying the contract id and, on error, the reason code and message. A request that fails
//! validation gets a 400 before any work starts; a run that fails is still a 200 whose status
//! says "error", because the request itself was good and the run record exists.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::body::{self, JsonObject};
use super::error::{ApiError, ErrorBody};
use super::schema::LegacyRequest;
use crate::adapter::CODEX;
use crate::adapter::codex;
use crate::run::{Outcome, RepoSpec, RunRecord, RunSpec, ToolSpec};

/// The name the original service gives its helper tool.
const TOOL_NAME: &str = "ak";
const MAX_CONTRACT_ID: usize = 256;
const MAX_URL: usize = 2048;
/// The prompt built around the details is one argument, which Linux caps at 128 KiB.
const MAX_FAILURE_DETAILS: usize = 112 << 10;

/// The original response shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LegacyResponse {
    /// `success`, or `error` when the run did not succeed.
    #[schema(value_type = String, pattern = "^(success|error)$")]
    status: &'static str,
    /// The run's id, for `GET /v1/runs/{id}`.
    #[schema(format = "uuid")]
    run_id: String,
    /// Commands the CLI ran with exit codes, files changed, stderr; secrets redacted.
    logs: String,
    /// The CLI's final message, or on error the explanation.
    output: String,
    /// `contract_id`, `outcome`, `duration_ms`, `exit_code`, `usage`, `diff`; on error
    /// `reason` (a reason code), `message` and the failure's details.
    #[schema(value_type = Object)]
    meta: Map<String, Value>,
}

/// Validates the request, runs it to the end and answers in the original shape.
#[utoipa::path(
    post, path = "/run_codex_session", tag = "legacy",
    summary = "Run Codex on a repository (the original contract)",
    description = "Answers when the run has finished: a run that ran is a 200 whatever its outcome; only a refused request gets a 4xx.",
    request_body(content = LegacyRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "the run finished; `status` says how", body = LegacyResponse),
        (status = 409, description = "`idempotency_conflict`: the contract id was used with a different request", body = ErrorBody),
        (status = 429, description = "`queue_full`", body = ErrorBody),
        (status = 503, description = "`shutting_down`", body = ErrorBody),
    ),
)]
pub async fn run_codex_session(
    State(state): State<AppState>,
    body: JsonObject,
) -> Result<Json<LegacyResponse>, ApiError> {
    let spec = validate(&state, &body).await?;
    // The contract id is the original API's idempotency key: a client that retries after a
    // dropped connection gets the run it started, not a second one.
    let key = spec.contract_id.as_ref().map(|id| format!("contract:{id}"));
    let submitted = state.engine.submit(spec, key).await?;
    let finished = state
        .engine
        .wait(submitted.record().id, Duration::MAX)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| {
            ApiError::internal(&std::io::Error::other(
                "a submitted run vanished from the store",
            ))
        })?;
    Ok(Json(respond(finished)))
}

async fn validate(state: &AppState, body: &JsonObject) -> Result<RunSpec, ApiError> {
    let contract_id = body.string(
        "contract_id",
        MAX_CONTRACT_ID,
        "the caller's reference for this run",
    )?;
    if contract_id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`contract_id` must not contain control characters",
        ));
    }
    let repo_url = body.string(
        "repo_url",
        MAX_URL,
        "the https URL of the repository to clone",
    )?;
    let failure_details = body.string(
        "failure_details",
        MAX_FAILURE_DETAILS,
        "a description of the failure to fix",
    )?;
    let ak_url = body.string("ak_url", MAX_URL, "the URL to download the `ak` tool from")?;
    let ak_hash = body.string("ak_hash", 80, "the sha256 of the `ak` tool")?;

    let digest = body::digest("ak_hash", &ak_hash)?;
    let policy = state.engine.policy();
    body::url(policy, "repo_url", &repo_url).await?;
    body::url(policy, "ak_url", &ak_url).await?;

    let prompt = codex::legacy_prompt(&repo_url, &ak_url, &digest.to_string(), &failure_details);
    Ok(RunSpec {
        adapter: CODEX.into(),
        prompt,
        repo: Some(RepoSpec {
            url: repo_url,
            git_ref: None,
            submodules: false,
        }),
        tools: vec![ToolSpec {
            name: TOOL_NAME.into(),
            url: ak_url,
            sha256: digest,
            mirrors: Vec::new(),
            archive_path: None,
        }],
        timeout_s: state.config.run_timeout.as_secs(),
        idle_timeout_s: None,
        callback_url: None,
        contract_id: Some(contract_id),
        artifacts: Vec::new(),
        credential: None,
    })
}

fn respond(record: RunRecord) -> LegacyResponse {
    let succeeded = record.outcome == Some(Outcome::Succeeded);
    let mut meta = Map::new();
    meta.insert("contract_id".into(), json!(record.spec.contract_id));
    meta.insert("outcome".into(), json!(record.outcome));
    if let (Some(started), Some(finished)) = (record.started_at, record.finished_at) {
        meta.insert(
            "duration_ms".into(),
            json!((finished - started).whole_milliseconds()),
        );
    }
    if let Some(usage) = &record.usage {
        meta.insert("usage".into(), json!(usage));
    }
    if let Some(code) = record.exit_code {
        meta.insert("exit_code".into(), json!(code));
    }
    if !succeeded {
        meta.insert("reason".into(), json!(record.reason));
        meta.insert("message".into(), json!(record.message));
        if let Some(Value::Object(details)) = &record.details {
            meta.extend(details.clone());
        }
    }
    if !record.diff.is_empty() {
        meta.insert("diff".into(), json!(record.diff));
    }

    LegacyResponse {
        status: if succeeded { "success" } else { "error" },
        run_id: record.id.to_string(),
        logs: record.logs,
        output: if succeeded {
            record.output
        } else {
            record.message.unwrap_or(record.output)
        },
        meta,
    }
}
