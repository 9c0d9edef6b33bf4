//! What a worker tells the bridge about its run, and how.
//!
//! The worker POSTs [`Report`]s to `POST /internal/v1/runs/{id}/report` on the bridge
//! (`HB_WORKER_BRIDGE_URL`), with `Authorization: Bearer <token>`, where the token is the
//! run's own: random, made by the bridge for this run alone, handed to the pod through the
//! run's Secret, and forgotten by the bridge once the last report is in. A report carries the
//! sink calls made since the last one, in order; the last report also carries the finished
//! record and, when the CLI refreshed its login, the new `auth.json`, which the bridge takes
//! into its working copy as it would from a local run. Before that last report the worker
//! `PUT`s each artifact it kept to `/internal/v1/runs/{id}/artifacts/{path}`, with the same
//! token; the bridge takes only paths the run declared, at most `HB_ARTIFACT_MAX_BYTES` each
//! (413 `artifact_too_large` beyond), and the finished record lists only those it holds.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::run::RunRecord;
use crate::run::events::Relayed;

/// The route a worker reports to, with `{id}` for the run id.
pub const REPORT_ROUTE: &str = "/internal/v1/runs/{id}/report";
/// The route a worker sends each kept artifact to (`PUT`, the file's bytes as the body),
/// before its final report.
pub const ARTIFACT_ROUTE: &str = "/internal/v1/runs/{id}/artifacts/{*path}";
/// The largest report the bridge takes: a batch of output lines, or a finished record with
/// its logs (capped at 1 MiB), output and diff.
pub const MAX_REPORT_BYTES: usize = 64 << 20;

/// One POST from a worker.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    /// Calls on the worker's event sink since the previous report.
    #[serde(default)]
    pub calls: Vec<Relayed>,
    /// The run as the worker finished it; present in the last report only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Box<RunRecord>>,
    /// The auth.json the CLI left, when it differs from the one it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<Login>,
}

/// A login's bytes, as text. `Debug` never shows them.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Login(pub String);

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Login(..)")
    }
}
