//! Adapters: how one CLI runs headless, and how to read what it printed.
//!
//! The set is closed and chosen at start-up: the built-in Codex adapter ([`codex`],
//! [`codex_events`]) and any number of declarative [`profile`]s. The run engine asks the
//! adapter for the command of a run, feeds every output line to an [`OutputReader`], and
//! takes the run's outcome from the reader's [`Verdict`].

pub mod codex;
pub mod codex_events;
pub mod profile;

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::sync::Arc;

use serde_json::{Value, json};

use self::codex::RunDirs;
use self::codex_events::{Terminal, Transcript};
use self::profile::{OutputFormat, OutputSpec, Profile};
use crate::run::{ReasonCode, Usage};

/// The built-in adapter's name.
pub const CODEX: &str = "codex";
/// Output kept as a text adapter's final message, from the end of stdout.
const TEXT_OUTPUT_BYTES: usize = 64 << 10;
/// Lines of a text adapter's output kept for the readable account.
const ACCOUNT_LINES: usize = 200;

/// Variables passed through from the bridge's own environment: locale, time zone, and the
/// settings an operator needs behind a proxy or with a private CA. Nothing else leaks in;
/// in particular not the bridge's API tokens.
const PASSTHROUGH_ENV: &[&str] = &[
    "LANG",
    "LC_ALL",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The environment every CLI of a run starts from: the run's tools first on PATH, its private
/// HOME, and the variables that tell tools nobody is at a terminal.
pub fn run_environment(dirs: &RunDirs) -> Vec<(OsString, OsString)> {
    let inherited_path =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut path = dirs.bin.clone().into_os_string();
    path.push(":");
    path.push(inherited_path);

    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), path),
        ("HOME".into(), dirs.home.clone().into()),
        ("TERM".into(), "dumb".into()),
        ("NO_COLOR".into(), "1".into()),
        ("CI".into(), "1".into()),
    ];
    for name in PASSTHROUGH_ENV {
        if let Some(value) = std::env::var_os(name) {
            env.push((name.into(), value));
        }
    }
    env
}

/// The adapter of one run.
#[derive(Debug, Clone)]
pub enum Adapter {
    Codex,
    Profile(Arc<Profile>),
}

impl Adapter {
    /// A fresh reader for a run of this adapter.
    pub fn reader(&self) -> OutputReader {
        match self {
            Self::Codex => OutputReader::Codex(Transcript::default()),
            Self::Profile(profile) => {
                OutputReader::Generic(GenericOutput::new(profile.output.clone()))
            }
        }
    }
}

/// The adapters this bridge offers, by name.
#[derive(Debug, Clone, Default)]
pub struct Adapters {
    profiles: BTreeMap<String, Arc<Profile>>,
}

impl Adapters {
    /// The built-in adapters plus these profiles.
    pub fn new(profiles: BTreeMap<String, Profile>) -> Self {
        Self {
            profiles: profiles
                .into_iter()
                .map(|(name, p)| (name, Arc::new(p)))
                .collect(),
        }
    }

    /// The adapter called `name`.
    pub fn get(&self, name: &str) -> Option<Adapter> {
        if name == CODEX {
            return Some(Adapter::Codex);
        }
        self.profiles.get(name).cloned().map(Adapter::Profile)
    }

    /// Every adapter's name.
    pub fn names(&self) -> Vec<&str> {
        std::iter::once(CODEX)
            .chain(self.profiles.keys().map(String::as_str))
            .collect()
    }

    /// A description of every adapter, for `GET /v1/adapters`.
    pub fn describe(&self) -> Vec<Value> {
        let codex = json!({"name": CODEX, "kind": "builtin", "description": "OpenAI Codex CLI (codex exec --json)"});
        let profiles = self.profiles.values().map(|p| {
            json!({"name": p.name, "kind": "profile", "description": p.description, "executable": p.executable})
        });
        std::iter::once(codex).chain(profiles).collect()
    }
}

/// What an adapter's output said about the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Failed {
        reason: ReasonCode,
        message: String,
    },
    /// The CLI stopped without saying how its work went.
    NoOutcome,
}

/// Reads a run's output as it comes.
#[derive(Debug)]
pub enum OutputReader {
    Codex(Transcript),
    Generic(GenericOutput),
}

impl OutputReader {
    /// Takes one stdout line; returns it parsed when it is a structured event.
    pub fn observe(&mut self, line: &str) -> Option<Value> {
        match self {
            Self::Codex(transcript) => transcript.observe(line),
            Self::Generic(output) => output.observe(line),
        }
    }

    /// The outcome, given how the process exited.
    pub fn verdict(&self, exit_code: Option<i32>) -> Verdict {
        match self {
            Self::Codex(transcript) => match &transcript.terminal {
                Some(Terminal::Completed) => Verdict::Succeeded,
                Some(Terminal::Failed { message }) => Verdict::Failed {
                    reason: codex_events::failure_reason(message),
                    message: message.clone(),
                },
                None => Verdict::NoOutcome,
            },
            Self::Generic(output) => output.verdict(exit_code),
        }
    }

    /// The final message.
    pub fn output(&self) -> String {
        match self {
            Self::Codex(transcript) => transcript.output().to_owned(),
            Self::Generic(output) => output.output(),
        }
    }

    /// The readable account of the run, a line each.
    pub fn account(&self) -> Vec<String> {
        match self {
            Self::Codex(transcript) => transcript.account.clone(),
            Self::Generic(output) => output.account.iter().cloned().collect(),
        }
    }

    /// Token usage, where the CLI reports it.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Self::Codex(transcript) => transcript.usage.clone(),
            Self::Generic(_) => None,
        }
    }

    /// The CLI's last error notice, to explain a run that ended without an outcome.
    pub fn last_error(&self) -> Option<String> {
        match self {
            Self::Codex(transcript) => transcript.last_error.clone(),
            Self::Generic(_) => None,
        }
    }
}

/// The output of a profile adapter: text, or JSON Lines with a terminal event.
#[derive(Debug)]
pub struct GenericOutput {
    spec: OutputSpec,
    /// The end of stdout, the final message of a text adapter.
    tail: VecDeque<String>,
    tail_bytes: usize,
    account: VecDeque<String>,
    terminal: Option<Value>,
}

impl GenericOutput {
    fn new(spec: OutputSpec) -> Self {
        Self {
            spec,
            tail: VecDeque::new(),
            tail_bytes: 0,
            account: VecDeque::new(),
            terminal: None,
        }
    }

    fn observe(&mut self, line: &str) -> Option<Value> {
        self.remember(line);
        if self.spec.format != OutputFormat::Jsonl {
            return None;
        }
        let event: Value = serde_json::from_str(line).ok().filter(Value::is_object)?;
        if event.get("type").and_then(Value::as_str) == self.spec.terminal_type.as_deref() {
            self.terminal = Some(event.clone());
        }
        Some(event)
    }

    fn remember(&mut self, line: &str) {
        self.account.push_back(line.to_owned());
        if self.account.len() > ACCOUNT_LINES {
            self.account.pop_front();
        }
        self.tail.push_back(line.to_owned());
        self.tail_bytes += line.len() + 1;
        while self.tail_bytes > TEXT_OUTPUT_BYTES {
            let Some(dropped) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= dropped.len() + 1;
        }
    }

    fn verdict(&self, exit_code: Option<i32>) -> Verdict {
        match self.spec.format {
            OutputFormat::Text => match exit_code {
                Some(0) => Verdict::Succeeded,
                Some(code) => Verdict::Failed {
                    reason: ReasonCode::CliError,
                    message: format!("the CLI exited with code {code}"),
                },
                None => Verdict::NoOutcome,
            },
            OutputFormat::Jsonl => match &self.terminal {
                None => Verdict::NoOutcome,
                Some(event) if self.is_error(event) => Verdict::Failed {
                    reason: ReasonCode::UpstreamError,
                    message: self.message(event),
                },
                Some(_) => Verdict::Succeeded,
            },
        }
    }

    fn is_error(&self, event: &Value) -> bool {
        let field = self.spec.error_field.as_deref();
        field
            .and_then(|f| event.get(f))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    fn message(&self, event: &Value) -> String {
        let field = self.spec.message_field.as_deref();
        let text = field.and_then(|f| event.get(f)).and_then(Value::as_str);
        text.map_or_else(|| event.to_string(), str::to_owned)
    }

    fn output(&self) -> String {
        match (&self.terminal, self.spec.format) {
            (Some(event), OutputFormat::Jsonl) => self.message(event),
            _ => self.tail.iter().map(|l| format!("{l}\n")).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl() -> OutputSpec {
        OutputSpec {
            format: OutputFormat::Jsonl,
            terminal_type: Some("result".into()),
            error_field: Some("is_error".into()),
            message_field: Some("result".into()),
        }
    }

    #[test]
    fn text_output_succeeds_on_exit_zero_and_keeps_the_end() {
        let mut out = GenericOutput::new(OutputSpec::default());
        for i in 0..10_000 {
            out.observe(&format!(
                "line {i:05} ........................................"
            ));
        }
        assert_eq!(out.verdict(Some(0)), Verdict::Succeeded);
        assert!(matches!(out.verdict(Some(3)), Verdict::Failed { .. }));
        let text = out.output();
        assert!(
            text.len() <= TEXT_OUTPUT_BYTES
                && text.ends_with("line 09999 ........................................\n")
        );
        assert_eq!(out.account.len(), ACCOUNT_LINES);
    }

    #[test]
    fn jsonl_output_trusts_the_error_flag_over_the_exit_code() {
        let mut out = GenericOutput::new(jsonl());
        out.observe(r#"{"type":"progress"}"#);
        out.observe(r#"{"type":"result","subtype":"success","is_error":true,"result":"quota"}"#);
        let failed = Verdict::Failed {
            reason: ReasonCode::UpstreamError,
            message: "quota".into(),
        };
        assert_eq!(out.verdict(Some(0)), failed);
    }

    #[test]
    fn jsonl_without_its_terminal_event_has_no_outcome() {
        let mut out = GenericOutput::new(jsonl());
        out.observe(r#"{"type":"progress"}"#);
        assert_eq!(out.verdict(Some(0)), Verdict::NoOutcome);
    }
}
