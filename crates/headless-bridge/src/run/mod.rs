//! Runs: one CLI invocation from request to outcome.
//!
//! A run is queued, then prepares its workspace (clone, tools, credentials), then runs the CLI,
//! then finishes with an [`Outcome`] and, unless it succeeded, a [`ReasonCode`] an agent can
//! branch on. The [`engine`] drives that lifecycle; the [`supervisor`] owns the process.

pub mod engine;
pub mod events;
pub(crate) mod failure;
pub(crate) mod pipeline;
pub mod shim;
pub mod supervisor;
pub mod text;
pub mod webhook;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::digest::Sha256Digest;

/// A run's identifier: a UUIDv7, so ids sort by creation time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = "uuid")]
pub struct RunId(uuid::Uuid);

impl RunId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for RunId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Preparing,
    Running,
    Finished,
}

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// The bridge stopped while the run was in progress.
    Interrupted,
}

/// Why a run did not succeed: a stable code an agent can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// No auth.json where the configuration says it is.
    CredentialsMissing,
    /// auth.json is unreadable or not a credential the CLI accepts.
    CredentialsInvalid,
    /// The login expired and cannot be refreshed: a person must log in again.
    CredentialsExpired,
    /// The refresh token was already used by another copy of the login.
    CredentialsRefreshReused,
    /// The provider revoked the login.
    CredentialsInvalidated,
    /// The run passed its wall-clock limit.
    TimedOut,
    /// The CLI printed nothing for longer than the run's idle limit.
    Stalled,
    Cancelled,
    Interrupted,
    /// A tool's sha256 did not match the request.
    ChecksumMismatch,
    /// A tool could not be downloaded.
    DownloadFailed,
    /// The repository could not be cloned.
    RepoCloneFailed,
    /// The git server refused our credentials (or asked for some), or an ssh server's host key
    /// is not the one `known_hosts` trusts.
    RepoAuthFailed,
    /// The CLI executable could not be started.
    CliNotFound,
    /// The CLI rejected its command line.
    CliUsageError,
    /// The CLI stopped to ask a person something; headless, nobody would answer.
    InteractivePromptBlocked,
    /// The CLI stopped without reporting an outcome (bad configuration, a crash).
    CliError,
    /// The model provider or cloud answered with an error.
    UpstreamError,
    /// The run's workspace could not be prepared (disk, permissions).
    WorkspaceError,
    /// The workspace passed its size limit, or the disk had too little free space.
    WorkspaceDiskFull,
    /// The Job executor could not create or follow the run's Kubernetes Job, or the Job ended
    /// without its worker reporting an outcome.
    ExecutorError,
}

impl ReasonCode {
    /// The code as it appears on the wire, for logs and metrics labels.
    pub fn as_str(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(code)) => code,
            _ => unreachable!("unit enum variants serialize as strings"),
        }
    }
}

/// A repository to clone into the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RepoSpec {
    pub url: String,
    /// A branch or tag; the remote's default branch when absent.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Also check out the submodules (one level).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub submodules: bool,
}

/// A tool to download, verify and put on the run's PATH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ToolSpec {
    pub name: String,
    pub url: String,
    /// The digest as `sha256:<64 hex>`.
    #[serde(with = "digest_text")]
    #[schema(value_type = String, pattern = "^sha256:[0-9a-f]{64}$")]
    pub sha256: Sha256Digest,
    /// Other URLs serving the same bytes, tried in order after `url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// When the download is an archive (tar.gz or zip): the executable's path inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_path: Option<String>,
}

impl ToolSpec {
    /// The most tools a run may ask for.
    pub const MAX_PER_RUN: usize = 16;
    /// The most mirrors one tool may list: each failing one costs retries within the fetch's
    /// time limit, so a long list only delays the verdict.
    pub const MAX_MIRRORS: usize = 8;
    /// The longest tool name.
    pub const MAX_NAME: usize = 64;

    /// Checks a tool's name, which becomes a file name in the run's bin directory and a
    /// command name in a shell.
    pub fn check_name(name: &str) -> Result<(), &'static str> {
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid_chars || name.starts_with(['.', '-']) {
            return Err("must be letters, digits, '.', '_' or '-', not starting with '.' or '-'");
        }
        Ok(())
    }
}

mod digest_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::digest::Sha256Digest;

    pub fn serialize<S: Serializer>(d: &Sha256Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Digest, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Everything a validated request asks of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunSpec {
    /// The adapter's name: `codex`, or a profile's.
    pub adapter: String,
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repo: Option<RepoSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    pub timeout_s: u64,
    /// Longest silence before the run counts as stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Where to POST the finished record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The caller's own reference (the original API's contract id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<String>,
    /// Files in the work tree the run will write for the caller, relative paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// The named Codex login the run uses; the default one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Token counts the CLI reported for the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_output_tokens: u64,
}

/// A run as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunRecord {
    pub id: RunId,
    pub state: RunState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonCode>,
    /// A human explanation of a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Facts about a failure a program may want (expected and actual digests, say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    pub spec: RunSpec,
    /// The CLI's final message.
    pub output: String,
    /// A readable account of the run, secrets redacted.
    pub logs: String,
    /// What the run changed in the repository, as a git patch.
    pub diff: String,
    /// The declared files the run left, downloadable under `/v1/runs/{id}/artifacts/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<crate::artifacts::Artifact>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
}

impl RunRecord {
    /// A new queued record for `spec`.
    pub fn queued(spec: RunSpec) -> Self {
        Self {
            id: RunId::new(),
            state: RunState::Queued,
            outcome: None,
            reason: None,
            message: None,
            details: None,
            spec,
            output: String::new(),
            logs: String::new(),
            diff: String::new(),
            artifacts: Vec::new(),
            usage: None,
            exit_code: None,
            created_at: OffsetDateTime::now_utc(),
            started_at: None,
            finished_at: None,
        }
    }

    /// Whether the run has finished.
    pub fn is_finished(&self) -> bool {
        self.state == RunState::Finished
    }
}
