//! Declarative adapters: any CLI described by a TOML profile, with no code change.
//!
//! A profile is data: the executable; an argument list with typed placeholders (never a shell
//! line: each element becomes one argument); a static environment and one read from secret
//! files; credential and state files to place in the run's private HOME, with their modes; the
//! user to run as; how to read the output and what counts as success ([`OutputSpec`]); a
//! health probe ([`HealthSpec`]); and the lines that mean the tool waits for a person. The
//! built-in `claude` and `gemini` adapters are profiles shipped inside the binary
//! ([`super::builtin`]); operators add theirs by mounting `*.toml` files in `HB_ADAPTERS_DIR`.
//! An invalid profile stops start-up with its file and line.
//!
//! This module owns parsing and checking. Placing files and reading secrets for a run is
//! [`super::prepare`]'s; reading output is [`super::output`]'s; probing health is
//! [`super::health`]'s.
//!
//! ```toml
//! description = "Terraform plan, headless"
//! executable = "/usr/bin/terraform"
//! args = ["plan", "-input=false", "-no-color"]
//! env = { TF_INPUT = "0", TF_IN_AUTOMATION = "1" }
//! secrets_dir = "/var/run/secrets/terraform"
//! secret_env = { TF_TOKEN_app_terraform_io = { file = "token" } }
//! prompt_patterns = ["Enter a value:"]
//!
//! [output]
//! format = "text"   # or "json" / "jsonl", with terminal_type, error_field, message_field...
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run::ReasonCode;

/// Placeholders an argument may contain, replaced for each run.
pub const ARG_PLACEHOLDERS: &[&str] = &["{prompt}", "{work_dir}", "{home}", "{tmp_dir}"];
/// Placeholders an environment value or a file's content may contain: the run's directories.
/// The prompt is only ever an argument.
pub const PATH_PLACEHOLDERS: &[&str] = &["{work_dir}", "{home}", "{tmp_dir}"];
/// Names of the adapters built into the bridge, which a mounted profile may not take.
pub const RESERVED_NAMES: &[&str] = &["codex", "claude", "gemini"];

/// A CLI described by a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The adapter's name: the file name without `.toml`.
    #[serde(skip)]
    pub name: String,
    /// Where the profile came from, for messages (a path, or `built-in`).
    #[serde(skip)]
    pub origin: String,
    #[serde(default)]
    pub description: String,
    /// The program: an absolute path, or a name looked up on the bridge's PATH.
    pub executable: PathBuf,
    /// Arguments; the placeholders of [`ARG_PLACEHOLDERS`] are replaced inside each element.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment added to the run's minimal one (`PATH`, `HOME`, `TMPDIR`, `CI=1`,
    /// `NO_COLOR=1`, `TERM=dumb`); values may use [`PATH_PLACEHOLDERS`].
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The directory relative secret paths are read from (in a pod, a mounted Secret).
    pub secrets_dir: Option<PathBuf>,
    /// Environment variables whose values are read from secret files at each run.
    #[serde(default)]
    pub secret_env: BTreeMap<String, SecretSource>,
    /// Files placed in the run's private HOME before the CLI starts.
    #[serde(default)]
    pub files: Vec<HomeFile>,
    /// The user the CLI runs as, when the bridge runs as root.
    pub run_as: Option<RunAs>,
    /// Substrings of an output line that mean the tool is asking a person something.
    #[serde(default)]
    pub prompt_patterns: Vec<String>,
    #[serde(default)]
    pub output: OutputSpec,
    /// Not carried into a run's pod (see [`crate::k8s::carry`]): only the bridge probes.
    #[serde(skip_serializing)]
    pub health: Option<HealthSpec>,
    /// How the CLI runs in an interactive session (see [`crate::session::spec`]); sessions
    /// run in the bridge only, so this is not carried into a run's pod either.
    #[serde(skip_serializing)]
    pub session: Option<crate::session::spec::SessionSpec>,
}

/// A secret read from a file: relative to the profile's `secrets_dir`, or absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    pub file: PathBuf,
    /// An optional secret may be absent. Optional secrets are alternatives: when a profile has
    /// any, at least one of them must be present (an API key or an OAuth token, say).
    #[serde(default)]
    pub optional: bool,
}

/// A file in the run's HOME: a copy of a secret file, or fixed content (state that keeps a CLI
/// from asking first-run questions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeFile {
    /// Where, relative to the run's HOME.
    pub path: PathBuf,
    /// A secret file to copy, relative to `secrets_dir` or absolute.
    pub source: Option<PathBuf>,
    /// Fixed content; may use [`PATH_PLACEHOLDERS`].
    pub content: Option<String>,
    /// Octal permission bits, such as `"0600"` (the default).
    #[serde(default = "default_mode")]
    pub mode: String,
    /// A missing `source` is skipped instead of failing the run; as with secret variables,
    /// optional sources are alternatives of which one must be present.
    #[serde(default)]
    pub optional: bool,
}

fn default_mode() -> String {
    "0600".into()
}

impl HomeFile {
    /// The permission bits; checked when the profile was loaded.
    pub fn mode_bits(&self) -> u32 {
        u32::from_str_radix(&self.mode, 8).expect("modes are checked when the profile loads")
    }
}

/// A numeric user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// How to read what the CLI prints, and what counts as success.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub format: OutputFormat,
    /// jsonl: the value of the `type` field of the event that ends the run.
    pub terminal_type: Option<String>,
    /// json, jsonl: a boolean field of the result that is true on failure. Fields are dotted
    /// paths (`error.message`).
    pub error_field: Option<String>,
    /// json, jsonl: a field that must hold one of `success_values` for the run to succeed.
    pub status_field: Option<String>,
    #[serde(default)]
    pub success_values: Vec<String>,
    /// json, jsonl: the field of the result holding the final message.
    pub message_field: Option<String>,
    /// json, jsonl: the field of the result holding the error message of a failure.
    pub error_message_field: Option<String>,
    /// jsonl: a field of the result holding token usage (`input_tokens`, `output_tokens`).
    pub usage_field: Option<String>,
    /// jsonl: events whose text, joined, is the final message when the result has none.
    pub text_events: Option<TextEvents>,
    /// Exit codes that say why a run failed, such as `41 = "credentials_invalid"`.
    #[serde(default)]
    pub exit_codes: BTreeMap<String, ReasonCode>,
    /// Substrings of a failure message or a stderr line that say why a run failed.
    #[serde(default)]
    pub reasons: BTreeMap<String, ReasonCode>,
}

/// Which events carry the final message's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEvents {
    /// The `type` of those events.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The field holding the text.
    pub field: String,
    /// Other fields they must have, with these string values (`role = "assistant"`).
    #[serde(default, rename = "match")]
    pub matching: BTreeMap<String, String>,
}

/// Output formats a profile can declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Plain text: exit code 0 is success, the end of stdout is the output.
    #[default]
    Text,
    /// One JSON document on stdout (possibly pretty-printed), read when the CLI exits.
    Json,
    /// JSON Lines: a named terminal event decides the outcome.
    Jsonl,
}

/// How to tell whether the adapter could run now.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// Arguments of a probe run of the executable (`["--version"]`); exit 0 is healthy.
    pub command: Option<Vec<String>>,
    /// Seconds the probe may take.
    #[serde(default = "default_probe_timeout")]
    pub timeout_s: u64,
    /// Seconds a probe's result is reused.
    #[serde(default = "default_probe_cache")]
    pub cache_s: u64,
    /// A JSON credential file, relative to `secrets_dir` or absolute, whose expiry is read.
    pub credential_file: Option<PathBuf>,
    /// The dotted path of the expiry in that file: epoch seconds or milliseconds, or RFC 3339.
    pub expiry_field: Option<String>,
    /// A dotted path that, when it holds a non-empty value, lets the CLI refresh an expired
    /// login by itself, so expiry alone is not unhealthy.
    pub refresh_field: Option<String>,
}

/// A probe answers in well under a second when the binary is sound.
fn default_probe_timeout() -> u64 {
    10
}

/// Five minutes: probes cost a process start, and a binary rarely breaks between them.
fn default_probe_cache() -> u64 {
    300
}

/// Why a profile was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("failed to read adapter profiles in {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid adapter profile {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A check that failed, and text near where the problem is, to find its line.
struct Problem {
    message: String,
    near: Option<String>,
}

impl Problem {
    fn new(message: impl Into<String>, near: impl Into<Option<String>>) -> Self {
        Self {
            message: message.into(),
            near: near.into(),
        }
    }
}

impl Profile {
    /// Parses the profile in `path`; its name is the file stem.
    pub fn from_file(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let profile = Self::parse(name, &path.display().to_string(), &text)?;
        if RESERVED_NAMES.contains(&profile.name.as_str()) {
            return Err(ProfileError::Invalid {
                origin: profile.origin,
                message: format!(
                    "`{name}` is a built-in adapter's name; configure the built-in with its \
                     HB_* settings or give this profile another file name"
                ),
            });
        }
        Ok(profile)
    }

    /// Parses profile `text` named `name`; `origin` says where it came from in errors.
    pub fn parse(name: &str, origin: &str, text: &str) -> Result<Self, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            origin: origin.to_owned(),
            message,
        };
        let mut profile: Profile = toml::from_str(text).map_err(|e| invalid(located(text, &e)))?;
        profile.name = name.to_owned();
        profile.origin = origin.to_owned();
        profile.check().map_err(|problem| {
            let line = problem.near.as_deref().and_then(|near| line_of(text, near));
            match line {
                Some(line) => invalid(format!("line {line}: {}", problem.message)),
                None => invalid(problem.message),
            }
        })?;
        Ok(profile)
    }

    /// Every `*.toml` profile in `dir`, by name.
    pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Profile>, ProfileError> {
        let entries = std::fs::read_dir(dir).map_err(|source| ProfileError::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut profiles = BTreeMap::new();
        for path in paths {
            let profile = Self::from_file(&path)?;
            profiles.insert(profile.name.clone(), profile);
        }
        Ok(profiles)
    }

    /// A secret path: absolute, or under `secrets_dir`.
    pub fn secret_path(&self, file: &Path) -> PathBuf {
        match &self.secrets_dir {
            Some(dir) if file.is_relative() => dir.join(file),
            _ => file.to_owned(),
        }
    }

    /// The pattern a line matches if it shows the tool waiting for a person.
    pub fn prompt_in<'a>(&'a self, line: &str) -> Option<&'a str> {
        self.prompt_patterns
            .iter()
            .map(String::as_str)
            .find(|p| line.contains(p))
    }

    fn check(&self) -> Result<(), Problem> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(Problem::new(
                format!(
                    "the file name `{}` must be letters, digits, '-' or '_'",
                    self.name
                ),
                None,
            ));
        }
        if self.executable.as_os_str().is_empty() {
            return Err(Problem::new(
                "`executable` is empty",
                "executable".to_owned(),
            ));
        }
        for arg in &self.args {
            check_placeholders(arg, ARG_PLACEHOLDERS)?;
        }
        for value in self.env.values() {
            check_placeholders(value, PATH_PLACEHOLDERS)?;
        }
        self.check_secrets()?;
        self.check_files()?;
        self.check_output()?;
        self.check_health()?;
        if let Some(session) = &self.session {
            session
                .check()
                .map_err(|message| Problem::new(message, "[session".to_owned()))?;
        }
        Ok(())
    }

    fn check_secrets(&self) -> Result<(), Problem> {
        for (name, secret) in &self.secret_env {
            if self.env.contains_key(name) {
                return Err(Problem::new(
                    format!("`{name}` is in both `env` and `secret_env`"),
                    name.clone(),
                ));
            }
            self.check_secret_path(&secret.file)?;
        }
        Ok(())
    }

    fn check_secret_path(&self, file: &Path) -> Result<(), Problem> {
        if file.is_relative() && self.secrets_dir.is_none() {
            return Err(Problem::new(
                format!(
                    "secret file `{}` is relative but the profile has no `secrets_dir`",
                    file.display()
                ),
                file.display().to_string(),
            ));
        }
        Ok(())
    }

    fn check_files(&self) -> Result<(), Problem> {
        for file in &self.files {
            let shown = file.path.display().to_string();
            let inside_home = file.path.is_relative()
                && file
                    .path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside_home {
                return Err(Problem::new(
                    format!("file `{shown}` must be a relative path inside HOME, without `..`"),
                    shown,
                ));
            }
            let mode = u32::from_str_radix(&file.mode, 8)
                .ok()
                .filter(|m| *m <= 0o777);
            let Some(mode) = mode else {
                return Err(Problem::new(
                    format!(
                        "file `{shown}` has mode `{}`; use octal such as \"0600\"",
                        file.mode
                    ),
                    shown,
                ));
            };
            match (&file.source, &file.content) {
                (Some(source), None) => {
                    self.check_secret_path(source)?;
                    // A copy of a secret is readable by its owner alone.
                    if mode & 0o077 != 0 {
                        return Err(Problem::new(
                            format!(
                                "file `{shown}` copies a secret, so its mode must not give group or others access (got {})",
                                file.mode
                            ),
                            shown,
                        ));
                    }
                }
                (None, Some(content)) => check_placeholders(content, PATH_PLACEHOLDERS)?,
                _ => {
                    return Err(Problem::new(
                        format!("file `{shown}` needs exactly one of `source` and `content`"),
                        shown,
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_output(&self) -> Result<(), Problem> {
        let output = &self.output;
        if output.format == OutputFormat::Jsonl && output.terminal_type.is_none() {
            return Err(Problem::new(
                "`output.format = \"jsonl\"` needs `output.terminal_type`, the type of the event that ends a run",
                "jsonl".to_owned(),
            ));
        }
        if output.status_field.is_some() && output.success_values.is_empty() {
            return Err(Problem::new(
                "`output.status_field` needs `output.success_values`",
                "status_field".to_owned(),
            ));
        }
        if let Some(code) = output.exit_codes.keys().find(|c| c.parse::<i32>().is_err()) {
            return Err(Problem::new(
                format!("`output.exit_codes` key `{code}` is not an exit code"),
                code.clone(),
            ));
        }
        Ok(())
    }

    fn check_health(&self) -> Result<(), Problem> {
        let Some(health) = &self.health else {
            return Ok(());
        };
        if health.command.is_none() && health.credential_file.is_none() {
            return Err(Problem::new(
                "`[health]` needs a `command`, a `credential_file`, or both",
                "[health]".to_owned(),
            ));
        }
        if let Some(file) = &health.credential_file {
            self.check_secret_path(file)?;
            if health.expiry_field.is_none() {
                return Err(Problem::new(
                    "`health.credential_file` needs `health.expiry_field`",
                    "credential_file".to_owned(),
                ));
            }
        }
        if health.timeout_s == 0 {
            return Err(Problem::new(
                "`health.timeout_s` must be at least 1",
                "timeout_s".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Refuses `{...}` in `text` unless it is one of `allowed`.
fn check_placeholders(text: &str, allowed: &[&str]) -> Result<(), Problem> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .map(|e| start + e + 1)
            .unwrap_or(rest.len());
        let found = &rest[start..end];
        // JSON content has braces of its own: only `{word}` is a placeholder.
        let is_placeholder = found.len() > 2
            && found[1..found.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_');
        if is_placeholder && !allowed.contains(&found) {
            return Err(Problem::new(
                format!(
                    "`{found}` is not a placeholder here; these are: {}",
                    allowed.join(", ")
                ),
                found.to_owned(),
            ));
        }
        rest = &rest[start + 1..];
    }
    Ok(())
}

/// Replaces the placeholders `{name}` in `text` with their values.
pub fn expand(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (name, value) in values {
        out = out.replace(name, value);
    }
    out
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    let at = text.find(needle)?;
    Some(text[..at].matches('\n').count() + 1)
}

/// A TOML error with its line and column, as an operator needs to find it.
fn located(text: &str, err: &toml::de::Error) -> String {
    let message = err.message();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn parse(text: &str) -> Result<Profile, String> {
        Profile::parse("p", "p.toml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_profile_parses() {
        let profile = parse(
            r#"
executable = "/bin/echo"
args = ["--", "{prompt}", "in {work_dir}"]
env = { CI = "1", CACHE = "{tmp_dir}/cache" }
secrets_dir = "/secrets"
secret_env = { TOKEN = { file = "token" } }
run_as = { uid = 1000, gid = 1000 }
[[files]]
path = ".tool/credentials.json"
source = "credentials.json"
[[files]]
path = ".tool/state.json"
content = '{"trusted": ["{work_dir}"]}'
mode = "0644"
[output]
format = "jsonl"
terminal_type = "result"
exit_codes = { 41 = "credentials_invalid" }
reasons = { "Not logged in" = "credentials_missing" }
[health]
command = ["--version"]
credential_file = "credentials.json"
expiry_field = "oauth.expiresAt"
"#,
        )
        .unwrap();
        assert_eq!(
            profile.secret_path(Path::new("token")),
            Path::new("/secrets/token")
        );
        assert_eq!(profile.files[0].mode_bits(), 0o600);
        assert_eq!(
            profile.run_as,
            Some(RunAs {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            profile.output.exit_codes["41"],
            ReasonCode::CredentialsInvalid
        );
    }

    #[rstest]
    #[case::unknown_key("executable = \"x\"\nargz = []\n", "line 2")]
    #[case::unknown_placeholder(
        "executable = \"x\"\nargs = [\"{secret}\"]\n",
        "line 2: `{secret}`"
    )]
    #[case::prompt_in_env(
        "executable = \"x\"\nenv = { P = \"{prompt}\" }\n",
        "line 2: `{prompt}`"
    )]
    #[case::jsonl_without_terminal(
        "executable = \"x\"\n[output]\nformat = \"jsonl\"\n",
        "line 3: `output.format"
    )]
    #[case::relative_secret_without_dir(
        "executable = \"x\"\nsecret_env = { T = { file = \"t\" } }\n",
        "no `secrets_dir`"
    )]
    #[case::secret_copy_too_open(
        "executable = \"x\"\nsecrets_dir = \"/s\"\n[[files]]\npath = \"c\"\nsource = \"c\"\nmode = \"0644\"\n",
        "must not give group or others"
    )]
    #[case::file_outside_home(
        "executable = \"x\"\n[[files]]\npath = \"../x\"\ncontent = \"\"\n",
        "line 3: file `../x`"
    )]
    #[case::bad_mode(
        "executable = \"x\"\n[[files]]\npath = \"x\"\ncontent = \"\"\nmode = \"rw\"\n",
        "octal"
    )]
    #[case::no_source_nor_content("executable = \"x\"\n[[files]]\npath = \"x\"\n", "exactly one")]
    #[case::unknown_reason("executable = \"x\"\n[output]\nreasons = { a = \"oops\" }\n", "line 3")]
    #[case::bad_exit_code(
        "executable = \"x\"\n[output]\nexit_codes = { abc = \"cli_error\" }\n",
        "not an exit code"
    )]
    #[case::empty_health("executable = \"x\"\n[health]\ntimeout_s = 3\n", "needs a `command`")]
    #[case::expiry_without_field(
        "executable = \"x\"\n[health]\ncredential_file = \"/c\"\n",
        "expiry_field"
    )]
    fn invalid_profiles_are_refused_with_their_line(#[case] text: &str, #[case] expected: &str) {
        let err = parse(text).unwrap_err();
        assert!(err.contains("p.toml") && err.contains(expected), "{err}");
    }

    #[test]
    fn json_content_braces_are_not_placeholders() {
        let text =
            "executable = \"x\"\n[[files]]\npath = \"s.json\"\ncontent = '{\"a\": {\"b\": 1}}'\n";
        assert!(parse(text).is_ok());
    }

    #[test]
    fn a_mounted_profile_cannot_take_a_built_in_name() {
        let dir = tempfile::tempdir().unwrap();
        for name in RESERVED_NAMES {
            let path = dir.path().join(format!("{name}.toml"));
            std::fs::write(&path, "executable = \"x\"\n").unwrap();
            let err = Profile::from_file(&path).unwrap_err().to_string();
            assert!(err.contains("built-in"), "{err}");
        }
    }

    #[test]
    fn prompt_patterns_match_inside_lines() {
        let profile =
            parse("executable = \"x\"\nprompt_patterns = [\"Enter a value:\"]\n").unwrap();
        assert_eq!(
            profile.prompt_in("  Enter a value: "),
            Some("Enter a value:")
        );
        assert_eq!(profile.prompt_in("Plan: 1 to add"), None);
    }
}
