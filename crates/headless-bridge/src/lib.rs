//! headless-bridge: runs local-first developer CLIs (Codex, Claude Code, Gemini CLI, and any
//! other through an adapter profile) headless behind an HTTP API, for AI agents and for
//! Kubernetes.
//!
//! The pieces, each in its own module: [`config`] reads the settings; [`api`] serves HTTP;
//! [`run`] drives a run from request to outcome, with [`run::supervisor`] owning the CLI's
//! process; [`adapter`] knows how each CLI runs headless and how to read its output;
//! [`credentials`] reads the login and gives each run a private copy; [`fetch`] downloads,
//! verifies and caches tools; [`git`] clones repositories; [`workspace`] lays out a run's
//! files, prepares them and watches their size; [`artifacts`] keeps the files a run declares;
//! [`store`] keeps run records in SQLite; [`policy`] decides which URLs a run may reach;
//! [`redact`] keeps secrets out of what runs report; [`k8s`] runs runs as Kubernetes Jobs and
//! writes refreshed logins back to their Secret; [`server`] ties them together.
//! [`redact`] keeps secrets out of what runs report; [`session`] runs interactive CLIs on a
//! pseudo-terminal; [`metrics`] counts for Prometheus; [`server`] ties them together;
//! [`client`] talks to a running bridge.

pub mod adapter;
pub mod api;
pub mod artifacts;
pub mod client;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod digest;
pub mod fetch;
pub mod git;
pub mod k8s;
pub mod lazy_client;
pub mod metrics;
pub mod policy;
pub mod reaper;
pub mod redact;
pub mod run;
pub mod server;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod workspace;

/// An error and its causes on one line, each shown once.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
