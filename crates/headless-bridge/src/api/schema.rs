//! Shapes of request and response bodies that exist only to be documented.
//!
//! The handlers read request bodies field by field (see [`super::body`]) so that each problem
//! gets its own error code, and some answers are assembled as JSON values; these types give
//! those bodies a schema in the OpenAPI document. The records themselves ([`RunRecord`],
//! [`RunEvent`], ...) derive their schemas where they are defined, from the types that are
//! serialized.
//!
//! [`RunRecord`]: crate::run::RunRecord
//! [`RunEvent`]: crate::run::events::RunEvent

// The fields are read by nothing but the schema derive.
#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

use crate::run::RunRecord;
use crate::run::events::EventKind;

/// `POST /v1/runs`: what to run. A field not listed here is refused as `unknown_field`, here
/// and in `repo` and `tools`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRunRequest {
    /// The adapter to run: `codex`, `claude`, `gemini` or a profile's name
    /// (`GET /v1/adapters` lists them).
    #[schema(example = "codex", min_length = 1, max_length = 64)]
    adapter: String,
    /// The task for the CLI.
    #[schema(
        example = "Fix the failing test in src/add.rs",
        min_length = 1,
        max_length = 122880
    )]
    prompt: String,
    #[schema(inline)]
    repo: Option<RepoRequest>,
    /// Tools to download, verify and put on the CLI's PATH (at most 16).
    #[schema(max_items = 16, inline)]
    tools: Option<Vec<ToolRequest>>,
    /// Paths relative to the work tree that the run will write and the bridge keeps
    /// (at most 16).
    #[schema(max_items = 16)]
    artifacts: Option<Vec<String>>,
    /// A named Codex login (HB_CODEX_CREDENTIALS) for a `codex` run; the default one when
    /// absent.
    #[schema(max_length = 64)]
    credential: Option<String>,
    /// Seconds the run may take (at most the bridge's `max_run_timeout`).
    #[schema(minimum = 1)]
    timeout_s: Option<u64>,
    /// Seconds the CLI may print nothing before the run ends as `stalled`.
    #[schema(minimum = 1)]
    idle_timeout_s: Option<u64>,
    /// The caller's own reference; also the idempotency key without an `Idempotency-Key`.
    #[schema(max_length = 256)]
    contract_id: Option<String>,
    /// Where to POST the finished record (needs `HB_WEBHOOK_SECRET` on the bridge).
    #[schema(format = "uri", max_length = 2048)]
    callback_url: Option<String>,
}

/// The repository to clone into the run's work tree.
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoRequest {
    /// An https URL (or a URL on a host in `HB_ALLOWED_HOSTS`).
    #[schema(format = "uri", max_length = 2048)]
    url: String,
    /// A branch, a tag or a full commit id; the default branch when absent.
    #[serde(rename = "ref")]
    #[schema(max_length = 255)]
    git_ref: Option<String>,
    /// Also check out the submodules.
    submodules: Option<bool>,
}

/// A tool the run needs, verified by its sha256 before the CLI starts.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolRequest {
    /// Its command name on the run's PATH.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]*$", max_length = 64)]
    name: String,
    #[schema(format = "uri", max_length = 2048)]
    url: String,
    /// `sha256:<64 hex>` or the 64 hex characters alone.
    sha256: String,
    /// Other URLs serving the same bytes, tried in order (at most 8).
    #[schema(max_items = 8)]
    mirrors: Option<Vec<String>>,
    /// The download is a tar.gz or zip archive; this is the executable's path inside it.
    archive_path: Option<String>,
}

/// `POST /run_codex_session`: the original service's request, field for field.
#[derive(ToSchema)]
pub struct LegacyRequest {
    /// The caller's reference for this run; repeating it returns the same run.
    #[schema(example = "c-42", max_length = 256)]
    contract_id: String,
    /// The https URL of the repository to clone.
    #[schema(format = "uri", max_length = 2048)]
    repo_url: String,
    /// A description of the failure to fix.
    failure_details: String,
    /// The URL to download the `ak` tool from.
    #[schema(format = "uri", max_length = 2048)]
    ak_url: String,
    /// The sha256 of the `ak` tool: `sha256:<64 hex>` or the 64 hex characters alone.
    ak_hash: String,
}

/// `GET /v1/runs`: a page of runs, newest first.
#[derive(ToSchema)]
pub struct RunPage {
    runs: Vec<RunRecord>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// `GET /v1/adapters`: every adapter with its health.
#[derive(ToSchema)]
pub struct AdapterList {
    adapters: Vec<AdapterInfo>,
}

/// One adapter.
#[derive(ToSchema)]
pub struct AdapterInfo {
    #[schema(example = "codex")]
    name: String,
    /// `builtin` (codex, claude, gemini) or `profile` (from `HB_ADAPTERS_DIR`).
    #[schema(pattern = "^(builtin|profile)$")]
    kind: String,
    description: String,
    /// A profile's executable.
    executable: Option<String>,
    health: AdapterHealth,
}

/// An adapter's health, judged without the network and without showing a secret.
#[derive(ToSchema)]
pub struct AdapterHealth {
    /// Whether a run could start now.
    ok: bool,
    /// The probe of the executable: `ok`, `path`, `version` or `problem` and `remedy`.
    #[schema(value_type = Object)]
    binary: Value,
    /// The login: `ok`, and when not, `reason`, `problem` and `remedy`; `expires_at`.
    #[schema(value_type = Object)]
    credentials: Value,
}

/// `GET /health`: `{"status": "ok"}`, or with `deep=1` the facts behind the verdict.
#[derive(ToSchema)]
pub struct HealthReport {
    /// `ok`, or `unhealthy` (deep check only, with status 503).
    #[schema(pattern = "^(ok|unhealthy)$")]
    status: String,
    /// Deep check: `git --version`.
    #[schema(value_type = Option<Object>)]
    git: Option<Value>,
    /// Deep check: per adapter, `ok`, `binary`, `credentials`, `config_toml`.
    #[schema(value_type = Option<Object>)]
    adapters: Option<Value>,
}

/// One Server-Sent Event of `GET /v1/runs/{id}/events`, as an SSE parser sees it.
#[derive(ToSchema)]
pub struct RunEventSse {
    /// The event's `seq`, to send back as `Last-Event-ID`.
    id: Option<String>,
    /// The event's `kind`.
    event: Option<EventKind>,
    /// The `RunEvent` as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// One Server-Sent Event of `/mcp`: a JSON-RPC message.
#[derive(ToSchema)]
pub struct McpSse {
    id: Option<String>,
    event: Option<String>,
    /// A JSON-RPC message (empty in the SDK's priming event).
    data: String,
}
