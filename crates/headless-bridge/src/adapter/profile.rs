//! Declarative adapters: any CLI described by a TOML profile, with no code change.
//!
//! An operator mounts profiles in `HB_ADAPTERS_DIR`, one `*.toml` file each. A profile names
//! the executable, an argument list with typed placeholders (never a shell line: each element
//! becomes one argument), a static environment, how to read the output, and the lines that
//! mean the tool is waiting for a person. An invalid profile stops start-up with its file and
//! line.
//!
//! ```toml
//! description = "Terraform plan, headless"
//! executable = "/usr/bin/terraform"
//! args = ["plan", "-input=false", "-no-color"]
//! env = { TF_INPUT = "0", TF_IN_AUTOMATION = "1" }
//! prompt_patterns = ["Enter a value:"]
//!
//! [output]
//! format = "text"   # or "jsonl", with terminal_type, error_field and message_field
//! ```

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Placeholders an argument may contain.
const PLACEHOLDERS: &[&str] = &["{prompt}", "{work_dir}"];

/// A CLI described by a profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The adapter's name: the file name without `.toml`.
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The program: an absolute path, or a name looked up on the bridge's PATH.
    pub executable: PathBuf,
    /// Arguments; `{prompt}` and `{work_dir}` are replaced inside each element.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment added to the run's minimal one (`PATH`, `HOME`, `CI=1`, `NO_COLOR=1`, `TERM=dumb`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Substrings of an output line that mean the tool is asking a person something.
    #[serde(default)]
    pub prompt_patterns: Vec<String>,
    #[serde(default)]
    pub output: OutputSpec,
}

/// How to read what the CLI prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default)]
    pub format: OutputFormat,
    /// jsonl: the value of the `type` field of the event that ends the run.
    pub terminal_type: Option<String>,
    /// jsonl: a boolean field of the terminal event that is true on failure.
    pub error_field: Option<String>,
    /// jsonl: the field of the terminal event holding the final message.
    pub message_field: Option<String>,
}

/// Output formats a profile can declare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Plain text: exit code 0 is success, the end of stdout is the output.
    #[default]
    Text,
    /// JSON Lines: a named terminal event decides the outcome.
    Jsonl,
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
    #[error("invalid adapter profile {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Profile {
    /// Parses the profile in `path`; its name is the file stem.
    pub fn from_file(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| ProfileError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut profile: Profile =
            toml::from_str(&text).map_err(|e| invalid(located(&text, &e)))?;
        profile.name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        profile.check().map_err(invalid)?;
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

    /// The program, arguments and extra environment for a run.
    pub fn command(
        &self,
        prompt: &str,
        work_dir: &Path,
    ) -> (PathBuf, Vec<OsString>, Vec<(OsString, OsString)>) {
        let work_dir = work_dir.display().to_string();
        let args = self
            .args
            .iter()
            .map(|arg| {
                arg.replace("{work_dir}", &work_dir)
                    .replace("{prompt}", prompt)
                    .into()
            })
            .collect();
        let env = self.env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        (self.executable.clone(), args, env)
    }

    /// The pattern a line matches if it shows the tool waiting for a person.
    pub fn prompt_in<'a>(&'a self, line: &str) -> Option<&'a str> {
        self.prompt_patterns
            .iter()
            .map(String::as_str)
            .find(|p| line.contains(p))
    }

    fn check(&self) -> Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name || self.name == "codex" {
            return Err(format!(
                "the file name `{}` must be letters, digits, '-' or '_', and not a built-in adapter's",
                self.name
            ));
        }
        if self.executable.as_os_str().is_empty() {
            return Err("`executable` is empty".into());
        }
        for arg in &self.args {
            let mut rest = arg.as_str();
            while let Some(start) = rest.find('{') {
                let end = rest[start..]
                    .find('}')
                    .map(|e| start + e + 1)
                    .unwrap_or(rest.len());
                if !PLACEHOLDERS.contains(&&rest[start..end]) {
                    return Err(format!(
                        "argument `{arg}` uses `{}`; placeholders are {}",
                        &rest[start..end],
                        PLACEHOLDERS.join(", ")
                    ));
                }
                rest = &rest[end..];
            }
        }
        if self.output.format == OutputFormat::Jsonl && self.output.terminal_type.is_none() {
            return Err("`output.format = \"jsonl\"` needs `output.terminal_type`, the type of the event that ends a run".into());
        }
        Ok(())
    }
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
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_profile_builds_its_command_line_without_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "echo.toml",
            "executable = \"/bin/echo\"\nargs = [\"--\", \"{prompt}\", \"in {work_dir}\"]\nenv = { CI = \"1\" }\n",
        );
        let profile = Profile::from_file(&path).unwrap();
        let (program, args, env) = profile.command("a; rm -rf / $(x)", Path::new("/w"));
        assert_eq!(program, PathBuf::from("/bin/echo"));
        assert_eq!(args, ["--", "a; rm -rf / $(x)", "in /w"]);
        assert_eq!(env, [("CI".into(), "1".into())]);
        assert_eq!(profile.name, "echo");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "bad.toml",
            "executable = \"/bin/true\"\nargz = []\n",
        );
        let err = Profile::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_placeholders_and_incomplete_jsonl_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "p.toml",
            "executable = \"x\"\nargs = [\"{secret}\"]\n",
        );
        assert!(
            Profile::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("{secret}")
        );
        let path = write(
            dir.path(),
            "q.toml",
            "executable = \"x\"\n[output]\nformat = \"jsonl\"\n",
        );
        assert!(
            Profile::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("terminal_type")
        );
        let path = write(dir.path(), "codex.toml", "executable = \"x\"\n");
        assert!(
            Profile::from_file(&path).is_err(),
            "a profile cannot shadow a built-in adapter"
        );
    }

    #[test]
    fn prompt_patterns_match_inside_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "tf.toml",
            "executable = \"x\"\nprompt_patterns = [\"Enter a value:\"]\n",
        );
        let profile = Profile::from_file(&path).unwrap();
        assert_eq!(
            profile.prompt_in("  Enter a value: "),
            Some("Enter a value:")
        );
        assert_eq!(profile.prompt_in("Plan: 1 to add"), None);
    }
}
