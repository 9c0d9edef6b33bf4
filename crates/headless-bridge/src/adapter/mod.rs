//! Adapters: how one CLI runs headless, and how to read what it printed.
//!
//! The set is closed and chosen at start-up: the Codex adapter in code ([`codex`],
//! [`codex_events`]), whose login handling and event stream need it, and declarative
//! [`profile`]s for every other CLI: the built-in `claude` and `gemini` ([`builtin`]) and any
//! number mounted by the operator. The run engine asks the adapter for the command of a run
//! ([`prepare`] for profiles), feeds every output line to an [`OutputReader`] ([`output`] for
//! profiles), and takes the run's outcome from the reader's [`Verdict`]. [`health`] tells
//! whether a profile adapter could run now.

pub mod builtin;
pub mod codex;
pub mod codex_events;
pub mod health;
pub mod output;
pub mod prepare;
pub mod profile;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::Arc;

use serde_json::{Value, json};

use self::codex::RunDirs;
use self::codex_events::{Terminal, Transcript};
use self::health::ProbeCache;
use self::output::GenericOutput;
use self::profile::Profile;
use crate::run::{ReasonCode, Usage};

/// The Codex adapter's name.
pub const CODEX: &str = "codex";

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
        ("TMPDIR".into(), dirs.tmp.clone().into()),
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
            Self::Codex => OutputReader::Codex(Box::default()),
            Self::Profile(profile) => {
                OutputReader::Generic(Box::new(GenericOutput::new(profile.output.clone())))
            }
        }
    }
}

/// The adapters this bridge offers, by name.
#[derive(Debug, Clone, Default)]
pub struct Adapters {
    profiles: BTreeMap<String, Arc<Profile>>,
    probes: ProbeCache,
}

impl Adapters {
    /// Codex plus these profiles (the built-in ones and the operator's).
    pub fn new(profiles: BTreeMap<String, Profile>) -> Self {
        Self {
            profiles: profiles
                .into_iter()
                .map(|(name, p)| (name, Arc::new(p)))
                .collect(),
            probes: ProbeCache::default(),
        }
    }

    /// The cache of health probes, shared by every caller.
    pub fn probes(&self) -> &ProbeCache {
        &self.probes
    }

    /// The profile adapters, by name.
    pub fn profiles(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.profiles.values()
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
            let kind = if p.origin.starts_with("built-in") { "builtin" } else { "profile" };
            json!({"name": p.name, "kind": kind, "description": p.description, "executable": p.executable})
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
    /// Boxed, as both are: the transcript carries its account, a profile's reader its whole
    /// output spec.
    Codex(Box<Transcript>),
    Generic(Box<GenericOutput>),
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
            Self::Codex(transcript) => transcript.account.lines(),
            Self::Generic(output) => output.account.iter().cloned().collect(),
        }
    }

    /// Takes one stderr line.
    pub fn observe_stderr(&mut self, line: &str) {
        if let Self::Generic(output) = self {
            output.observe_stderr(line);
        }
    }

    /// Token usage, where the CLI reports it.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Self::Codex(transcript) => transcript.usage.clone(),
            Self::Generic(output) => output.usage(),
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
