//! What the fakes of agent model APIs ([`crate::anthropic`], [`crate::gemini`]) share: the
//! [`AgentBehavior`] a test picks and the `Recorder` of the requests they received.
//!
//! Each fake owns its wire protocol; this module owns only the decision of what to say and
//! the log, so the two protocols read side by side without repeating the plumbing.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, Uri};
use serde_json::Value;
use tokio::sync::watch;

/// How a fake model API answers every model request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentBehavior {
    /// Answer with this text.
    Reply(String),
    /// Ask the CLI to run `command` with its shell tool; once the tool's result comes back,
    /// answer with `reply`.
    RunThenReply { command: String, reply: String },
    /// Answer with this HTTP status and the API's JSON error body carrying `message`.
    Error { status: u16, message: String },
}

/// One request a fake received, recorded before authentication.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Headers with lowercase names (values that are not UTF-8 left out).
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON; `Value::Null` when empty or not JSON.
    pub body: Value,
}

impl RecordedCall {
    pub(crate) fn new(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Self {
        Self {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
        }
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// The log of requests, which tests can wait on.
#[derive(Debug)]
pub(crate) struct Recorder {
    log: watch::Sender<Vec<RecordedCall>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            log: watch::Sender::new(Vec::new()),
        }
    }
}

impl Recorder {
    pub(crate) fn record(&self, call: RecordedCall) {
        self.log.send_modify(|calls| calls.push(call));
    }

    pub(crate) fn calls(&self) -> Vec<RecordedCall> {
        self.log.borrow().clone()
    }
}
