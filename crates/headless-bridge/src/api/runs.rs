//! `/v1/runs`: the general run API.
//!
//! `POST /v1/runs` validates the whole request before any work starts, stores the run and
//! answers 202 with its record at once; `?wait=N` holds the answer up to N seconds for the
//! outcome (200 when it came, 202 when not yet). `GET /v1/runs/{id}` returns a record and
//! `GET /v1/runs` pages through them. A run can be cancelled, followed live as Server-Sent
//! Events (see [`super::events`]), and its full output read as text.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt as _;
use tokio_util::io::ReaderStream;

use super::AppState;
use super::body::{self, ApiPath, ApiQuery, JsonObject};
use super::error::{ApiError, ErrorBody};
use super::schema::{AdapterList, RunPage, SubmitRunRequest};
use crate::adapter::{Adapter, CODEX, codex, health};
use crate::git;
use crate::policy::UrlPolicy;
use crate::run::engine::{CancelError, Submitted};
use crate::run::{RepoSpec, RunId, RunRecord, RunSpec, RunState, ToolSpec};
use crate::store::RunFilter;

/// Linux caps a single argument at 128 KiB (MAX_ARG_STRLEN), and the prompt is one argument.
const MAX_PROMPT: usize = 120 << 10;
const MAX_URL: usize = 2048;
/// The longest a request may hold its connection waiting for an outcome.
const MAX_WAIT_S: u64 = 600;
const MAX_LIST: usize = 100;

/// Query of `POST /v1/runs`. A parameter it does not take is refused, as a misspelt one
/// would otherwise be ignored without a word.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Seconds to wait for the outcome before answering.
    wait: Option<u64>,
}

/// Query of `GET /v1/runs`. A parameter it does not take is refused: a misspelt filter
/// (`status=running`) would otherwise list every run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    state: Option<String>,
    adapter: Option<String>,
    contract_id: Option<String>,
    cursor: Option<String>,
}

/// Starts a run, or finds the one an idempotency key already names.
#[utoipa::path(
    post, path = "/v1/runs", tag = "runs",
    summary = "Start a run",
    description = "Validates the whole request before any work starts, stores the run and answers 202 with its record; `wait` holds the answer until the run finishes (200) or the time is up (202).",
    params(
        ("wait" = Option<u64>, Query, maximum = 600, description = "seconds to wait for the outcome"),
        ("Prefer" = Option<String>, Header, description = "`wait=N`, as an alternative to `?wait=N` (RFC 7240)"),
        ("Idempotency-Key" = Option<String>, Header, description = "repeating a key with the same body returns the earlier run"),
    ),
    request_body(content = SubmitRunRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "the run finished within `wait`, or the idempotency key named an earlier run", body = RunRecord,
         headers(("Location" = String, description = "the run's URL"), ("Idempotent-Replayed" = String, description = "`true` for an earlier run"))),
        (status = 202, description = "the run is queued or running", body = RunRecord,
         headers(("Location" = String, description = "the run's URL"))),
        (status = 409, description = "`idempotency_conflict`: the key was used with a different body", body = ErrorBody),
        (status = 429, description = "`queue_full`: retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u64, description = "seconds"))),
        (status = 503, description = "`shutting_down`", body = ErrorBody,
         headers(("Retry-After" = u64, description = "seconds"))),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<SubmitQuery>,
    headers: HeaderMap,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let spec = validate(&state, &body).await?;
    let wait = match query.wait.or_else(|| prefer_wait(&headers)) {
        Some(wait) if wait > MAX_WAIT_S => {
            return Err(ApiError::bad_request(
                "invalid_wait",
                format!("`wait` may be at most {MAX_WAIT_S} seconds"),
            ));
        }
        wait => wait.unwrap_or(0),
    };
    let key = idempotency_key(&headers)?
        .or_else(|| spec.contract_id.as_ref().map(|id| format!("contract:{id}")));

    let submitted = state.engine.submit(spec, key).await?;
    let replayed = matches!(submitted, Submitted::Existing(_));
    let mut record = submitted.record().clone();
    if wait > 0 && !record.is_finished() {
        let waited = state
            .engine
            .wait(record.id, Duration::from_secs(wait))
            .await;
        record = waited
            .map_err(|e| ApiError::internal(&e))?
            .unwrap_or(record);
    }

    let status = if record.is_finished() || replayed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = HeaderValue::from_str(&format!("/v1/runs/{}", record.id))
        .expect("a uuid path is a valid header");
    let mut response = (status, [(header::LOCATION, location)], Json(record)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The adapters this bridge offers, each with its health.
#[utoipa::path(
    get, path = "/v1/adapters", tag = "adapters",
    summary = "List the adapters and their health",
    responses((status = 200, description = "every adapter, with its health", body = AdapterList)),
)]
pub async fn adapters(State(state): State<AppState>) -> Json<Value> {
    Json(adapter_list(&state).await)
}

/// `{"adapters": [...]}`: every adapter with its health, for the API and the MCP server.
pub(super) async fn adapter_list(state: &AppState) -> Value {
    let adapters = state.engine.adapters();
    let probe_homes = state.config.data_dir.join("health");
    let mut described = adapters.describe();
    for entry in &mut described {
        let name = entry["name"].as_str().unwrap_or_default().to_owned();
        entry["health"] = match adapters.get(&name) {
            Some(Adapter::Profile(profile)) => {
                health::check(&profile, &probe_homes.join(&name), adapters.probes()).await
            }
            _ => super::health::codex_adapter_health(state).await,
        };
    }
    serde_json::json!({ "adapters": described })
}

/// One run's record.
#[utoipa::path(
    get, path = "/v1/runs/{id}", tag = "runs",
    summary = "Get a run",
    params(("id" = String, Path, description = "the run's id")),
    responses(
        (status = 200, description = "the run's record", body = RunRecord),
        (status = 404, description = "`run_not_found`", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunRecord>, ApiError> {
    find(&state, &id).await.map(Json)
}

/// The record of the run with this id.
pub(super) async fn find(state: &AppState, id: &str) -> Result<RunRecord, ApiError> {
    let run_id = parse_id(id)?;
    let record = state
        .engine
        .store()
        .get(run_id)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    record.ok_or_else(|| not_found(id))
}

/// Cancels a queued or running run; answers with its record once it has stopped.
#[utoipa::path(
    post, path = "/v1/runs/{id}/cancel", tag = "runs",
    summary = "Cancel a run",
    params(("id" = String, Path, description = "the run's id")),
    responses(
        (status = 200, description = "the run has stopped; its record, with outcome `cancelled`", body = RunRecord),
        (status = 404, description = "`run_not_found`", body = ErrorBody),
        (status = 409, description = "`run_finished`: the run had already ended", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<RunRecord>, ApiError> {
    stop(&state, &id).await.map(Json)
}

/// Cancels the run with this id and answers with its record once it has stopped.
pub(super) async fn stop(state: &AppState, id: &str) -> Result<RunRecord, ApiError> {
    let run_id = parse_id(id)?;
    match state.engine.cancel(run_id).await {
        Ok(record) => Ok(record),
        Err(CancelError::NotFound) => Err(not_found(id)),
        Err(CancelError::Finished(record)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_finished",
            format!(
                "run {id} has already finished as {}",
                serde_json::to_value(record.outcome).unwrap_or_default()
            ),
        )),
        Err(CancelError::Store(e)) => Err(ApiError::internal(&e)),
    }
}

/// Runs matching the filters, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/runs", tag = "runs",
    summary = "List runs",
    params(
        ("state" = Option<RunState>, Query, description = "only runs in this state"),
        ("adapter" = Option<String>, Query, description = "only runs of this adapter"),
        ("contract_id" = Option<String>, Query, description = "only runs with this contract id"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100, description = "runs per page (default 20; larger values are capped at 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses((status = 200, description = "a page of runs, newest first", body = RunPage)),
)]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(20).clamp(1, MAX_LIST);
    let run_state = match query.state.as_deref() {
        None => None,
        Some(text) => Some(
            serde_json::from_value(Value::String(text.to_owned())).map_err(|_| {
                ApiError::bad_request(
                    "invalid_filter",
                    "`state` is one of queued, preparing, running, finished",
                )
            })?,
        ),
    };
    let before = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(cursor.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                "`cursor` must be a `next_cursor` from an earlier page",
            )
        })?),
    };
    // One more than the page holds, to know whether a run follows it: a full page alone
    // does not say so.
    let filter = RunFilter {
        state: run_state,
        adapter: query.adapter,
        contract_id: query.contract_id,
        before,
        limit: limit + 1,
    };
    let mut runs = state
        .engine
        .store()
        .list(filter)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let more = runs.len() > limit;
    runs.truncate(limit);
    let next_cursor = more
        .then(|| runs.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(Json(
        serde_json::json!({ "runs": runs, "next_cursor": next_cursor }),
    ))
}

/// The run's full output stream as text (stdout, and stderr lines marked `[stderr]`).
#[utoipa::path(
    get, path = "/v1/runs/{id}/logs", tag = "runs",
    summary = "Read a run's output",
    params(("id" = String, Path, description = "the run's id")),
    responses(
        (status = 200, description = "the full output stream, stderr lines marked `[stderr]`", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 404, description = "`run_not_found`", body = ErrorBody),
    ),
)]
pub async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    // Streamed from the file: a log may be HB_MAX_LOG_BYTES long, and a client that reads it
    // slowly must not hold all of it in memory.
    let body = match open_log(&state, &id).await? {
        Some(file) => Body::from_stream(ReaderStream::with_capacity(file, 64 << 10)),
        None => Body::empty(),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The run's log file; empty while the run has written none.
pub(super) async fn read_log(state: &AppState, id: &str) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    if let Some(mut file) = open_log(state, id).await? {
        file.read_to_end(&mut bytes)
            .await
            .map_err(|e| ApiError::internal(&e))?;
    }
    Ok(bytes)
}

/// The run's log file, open; `None` while the run has written none.
async fn open_log(state: &AppState, id: &str) -> Result<Option<tokio::fs::File>, ApiError> {
    let run_id = parse_id(id)?;
    if state
        .engine
        .store()
        .get(run_id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .is_none()
    {
        return Err(not_found(id));
    }
    match tokio::fs::File::open(state.engine.log_path(run_id)).await {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

pub(super) fn parse_id(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|_| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("run_not_found", format!("no run has id `{id}`"))
}

/// `Prefer: wait=N` (RFC 7240) as an alternative to `?wait=N`.
fn prefer_wait(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| pref.trim().strip_prefix("wait=")?.trim().parse().ok())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // A header value may hold tabs (RFC 9110, field-value), which are not visible.
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && !k.contains('\t'));
    let key = key.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_idempotency_key",
            "`Idempotency-Key` must be 1 to 255 visible characters",
        )
    })?;
    Ok(Some(format!("key:{key}")))
}

/// The fields of a run request (see [`SubmitRunRequest`]).
const RUN_FIELDS: &[&str] = &[
    "adapter",
    "prompt",
    "repo",
    "tools",
    "artifacts",
    "credential",
    "timeout_s",
    "idle_timeout_s",
    "contract_id",
    "callback_url",
];
/// The fields of a run request's `repo` (see [`super::schema::RepoRequest`]).
const REPO_FIELDS: &[&str] = &["url", "ref", "submodules"];
/// The fields of each of a run request's `tools` (see [`super::schema::ToolRequest`]).
const TOOL_FIELDS: &[&str] = &["name", "url", "sha256", "mirrors", "archive_path"];

/// Checks a run request and turns it into a spec; every problem is a 4xx before any work.
pub(super) async fn validate(state: &AppState, body: &JsonObject) -> Result<RunSpec, ApiError> {
    body::only_fields(&body.0, None, RUN_FIELDS)?;
    let policy = state.engine.policy();
    let mut urls = body::UrlChecks::default();
    let known = state.engine.adapters().names().join(", ");
    let adapter = body.string("adapter", 64, &format!("the CLI to run, one of: {known}"))?;
    if state.engine.adapters().get(&adapter).is_none() {
        return Err(ApiError::bad_request(
            "unknown_adapter",
            format!("adapter `{adapter}` is not known; this bridge has: {known}"),
        ));
    }
    let prompt = body.string("prompt", MAX_PROMPT, "the task for the CLI")?;
    if adapter == CODEX && prompt.trim() == "-" {
        // codex exec reads its prompt from stdin when given "-", even after "--".
        return Err(ApiError::bad_request(
            "invalid_field",
            "`prompt` must be the task itself, not \"-\"",
        ));
    }
    let contract_id = body.optional_string("contract_id", 256)?;
    if contract_id
        .as_deref()
        .is_some_and(|id| id.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            "`contract_id` must not contain control characters",
        ));
    }
    let timeout_s = match body.optional_u64("timeout_s")? {
        None => state.config.run_timeout.as_secs(),
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_timeout",
                "`timeout_s` must be at least 1",
            ));
        }
        Some(t) if t > state.config.max_run_timeout.as_secs() => {
            let max = state.config.max_run_timeout.as_secs();
            return Err(ApiError::bad_request(
                "invalid_timeout",
                format!("`timeout_s` may be at most {max} on this bridge"),
            ));
        }
        Some(t) => t,
    };

    let idle_timeout_s = match body.optional_u64("idle_timeout_s")? {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_timeout",
                "`idle_timeout_s` must be at least 1",
            ));
        }
        Some(idle) if idle > timeout_s => {
            return Err(ApiError::bad_request(
                "invalid_timeout",
                "`idle_timeout_s` may not exceed the run's `timeout_s`",
            ));
        }
        idle => idle,
    };
    let callback_url = match body.optional_string("callback_url", MAX_URL)? {
        Some(_) if !state.engine.webhooks_enabled() => {
            return Err(ApiError::bad_request(
                "webhooks_disabled",
                "`callback_url` needs HB_WEBHOOK_SECRET on the bridge, so that deliveries can be signed",
            ));
        }
        Some(url) => {
            urls.syntax(policy, "callback_url", &url)?;
            Some(url)
        }
        None => None,
    };

    let repo = match body.0.get("repo") {
        None | Some(Value::Null) => None,
        Some(Value::Object(repo)) => Some(validate_repo(policy, repo, &mut urls)?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`repo` must be an object {url, ref}",
            ));
        }
    };
    let tools = match body.0.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => validate_tools(policy, items, &mut urls)?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`tools` must be a list of {name, url, sha256}",
            ));
        }
    };

    let artifacts = validate_artifacts(body.0.get("artifacts"))?;
    let credential = body.optional_string("credential", 64)?;
    if let Some(name) = &credential {
        if adapter != CODEX {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`credential` names a Codex login; the codex adapter is the one that takes it",
            ));
        }
        if state.engine.logins().get(Some(name)).is_none() {
            let known = state.engine.logins().names().join(", ");
            return Err(ApiError::bad_request(
                "unknown_credential",
                format!("credential `{name}` is not configured; this bridge has: {known}"),
            ));
        }
    }
    // Last, as they may resolve names: every other mistake is reported first.
    urls.hosts(policy).await?;

    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    let prompt = if adapter == CODEX {
        codex::run_prompt(&prompt, &names)
    } else {
        prompt
    };
    Ok(RunSpec {
        adapter,
        prompt,
        repo,
        tools,
        timeout_s,
        idle_timeout_s,
        callback_url,
        contract_id,
        artifacts,
        credential,
    })
}

fn validate_repo(
    policy: &UrlPolicy,
    repo: &Map<String, Value>,
    urls: &mut body::UrlChecks,
) -> Result<RepoSpec, ApiError> {
    body::only_fields(repo, Some("repo"), REPO_FIELDS)?;
    let url = body::optional_string(repo, "url", MAX_URL)?.ok_or_else(|| {
        ApiError::bad_request(
            "missing_field",
            "`repo.url` is required: the https URL to clone",
        )
    })?;
    urls.repo_syntax(policy, "repo.url", &url)?;
    let git_ref = body::optional_string(repo, "ref", 255)?;
    if let Some(name) = &git_ref {
        git::check_ref_name(name).map_err(|why| {
            ApiError::bad_request(
                "invalid_ref",
                format!("`repo.ref` is not a branch or tag name: it {why}"),
            )
        })?;
    }
    let submodules = match repo.get("submodules") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`repo.submodules` must be true or false",
            ));
        }
    };
    Ok(RepoSpec {
        url,
        git_ref,
        submodules,
    })
}

fn validate_tools(
    policy: &UrlPolicy,
    items: &[Value],
    urls: &mut body::UrlChecks,
) -> Result<Vec<ToolSpec>, ApiError> {
    if items.len() > ToolSpec::MAX_PER_RUN {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("at most {} tools per run", ToolSpec::MAX_PER_RUN),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut tools = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(tool) = item else {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("`tools[{i}]` must be an object {{name, url, sha256}}"),
            ));
        };
        body::only_fields(tool, Some(&format!("tools[{i}]")), TOOL_FIELDS)?;
        let field = |name: &str| format!("tools[{i}].{name}");
        let required = |name: &str, max: usize| {
            body::optional_string(tool, name, max)?.ok_or_else(|| {
                ApiError::bad_request("missing_field", format!("`{}` is required", field(name)))
            })
        };
        let name = required("name", ToolSpec::MAX_NAME)?;
        ToolSpec::check_name(&name).map_err(|why| {
            ApiError::bad_request("invalid_tool_name", format!("`{}` {why}", field("name")))
        })?;
        if !seen.insert(name.clone()) {
            return Err(ApiError::bad_request(
                "invalid_tool_name",
                format!("tool `{name}` is listed twice"),
            ));
        }
        let url = required("url", MAX_URL)?;
        urls.syntax(policy, &field("url"), &url)?;
        let sha256 = body::digest(&field("sha256"), &required("sha256", 320)?)?;
        let mirrors = validate_mirrors(policy, tool, &field("mirrors"), urls)?;
        let archive_path = body::optional_string(tool, "archive_path", 512)?;
        if let Some(path) = &archive_path {
            crate::artifacts::check_declared(path).map_err(|why| {
                ApiError::bad_request(
                    "invalid_field",
                    format!("`{}` {why}", field("archive_path")),
                )
            })?;
        }
        tools.push(ToolSpec {
            name,
            url,
            sha256,
            mirrors,
            archive_path,
        });
    }
    Ok(tools)
}

fn validate_mirrors(
    policy: &UrlPolicy,
    tool: &Map<String, Value>,
    field: &str,
    urls: &mut body::UrlChecks,
) -> Result<Vec<String>, ApiError> {
    let items = match tool.get("mirrors") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= ToolSpec::MAX_MIRRORS => items,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!(
                    "`{field}` must be a list of at most {} URLs",
                    ToolSpec::MAX_MIRRORS
                ),
            ));
        }
    };
    let mut mirrors = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let name = format!("{field}[{i}]");
        let Some(url) = item.as_str().filter(|u| u.len() <= MAX_URL) else {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("`{name}` must be a URL of at most {MAX_URL} bytes"),
            ));
        };
        urls.syntax(policy, &name, url)?;
        mirrors.push(url.to_owned());
    }
    Ok(mirrors)
}

/// Declared artifacts: relative paths inside the work tree.
fn validate_artifacts(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    use crate::artifacts::{MAX_DECLARED, check_declared};
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_DECLARED => items,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("`artifacts` must be a list of at most {MAX_DECLARED} paths"),
            ));
        }
    };
    let mut paths = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = item.as_str().unwrap_or_default();
        check_declared(path).map_err(|why| {
            ApiError::bad_request("invalid_artifact_path", format!("`artifacts[{i}]` {why}"))
        })?;
        paths.push(path.to_owned());
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &str) -> Result<Option<String>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(value).expect("a valid header value"),
        );
        idempotency_key(&headers)
    }

    #[test]
    fn an_idempotency_key_is_visible_characters() {
        assert_eq!(key(" job-7 ").unwrap().as_deref(), Some("key:job-7"));
        assert!(key("").is_err());
        assert!(key(&"k".repeat(256)).is_err());
    }

    /// Regression: a key with a tab inside was accepted, though the answer to a bad key says
    /// "visible characters".
    #[test]
    fn an_idempotency_key_with_a_tab_is_refused() {
        let err = key("job\t7").unwrap_err();
        assert_eq!(err.code, "invalid_idempotency_key");
    }
}
