//! The Codex CLI adapter: the command line, environment and prompt of a headless run.
//!
//! `codex exec --json` is the non-interactive mode. Around it the adapter adds what a pod
//! needs, each for an observed reason (codex-cli 0.171.0):
//! - stdin is closed by the supervisor, or exec waits for more prompt on an open pipe;
//! - `--skip-git-repo-check`, since a run without a repository works in a plain directory;
//! - the approvals-and-sandbox bypass by default: bubblewrap cannot create user namespaces in
//!   a typical pod, and the pod is the sandbox (a setting turns this off);
//! - analytics and plugin sync off, which are the only calls it makes beyond the model
//!   provider;
//! - `unbounded_connection_retries` off, or an unreachable provider is retried forever;
//! - `--` before the prompt, so a prompt that begins with '-' is never read as an option.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::CodexConfig;

/// The directories of one run that the CLI is told about.
#[derive(Debug, Clone)]
pub struct RunDirs {
    /// Where the CLI works: the repository clone, or an empty directory.
    pub work: PathBuf,
    /// Verified tools, first on PATH.
    pub bin: PathBuf,
    /// The run's private HOME.
    pub home: PathBuf,
    /// The run's private CODEX_HOME with its copy of the login.
    pub codex_home: PathBuf,
    /// The run's TMPDIR: CLIs write scratch and error reports there, not in the shared /tmp.
    pub tmp: PathBuf,
    /// Where the CLI writes its last message.
    pub last_message: PathBuf,
}

/// The program, arguments and environment of a `codex exec` run.
pub fn command(
    config: &CodexConfig,
    dirs: &RunDirs,
    prompt: &str,
) -> (PathBuf, Vec<OsString>, Vec<(OsString, OsString)>) {
    let mut args: Vec<OsString> = vec![
        "exec".into(),
        "--json".into(),
        "--skip-git-repo-check".into(),
    ];
    args.extend(["--cd".into(), dirs.work.clone().into_os_string()]);
    args.extend([
        "--output-last-message".into(),
        dirs.last_message.clone().into_os_string(),
    ]);
    args.extend(settings(config));
    args.extend(["--".into(), prompt.into()]);

    (config.bin.clone(), args, environment(dirs))
}

/// The options every `codex exec` of the bridge's gets, whatever its subcommand: the sandbox
/// as configured, analytics and plugin sync off, and no endless retries.
pub fn settings(config: &CodexConfig) -> Vec<OsString> {
    let mut args: Vec<OsString> = if config.bypass_sandbox {
        vec!["--dangerously-bypass-approvals-and-sandbox".into()]
    } else {
        vec!["--sandbox".into(), "workspace-write".into()]
    };
    args.extend(["--config".into(), "analytics.enabled=false".into()]);
    for feature in ["plugins", "unbounded_connection_retries"] {
        args.extend(["--disable".into(), feature.into()]);
    }
    args
}

/// The environment of a run in `dirs`, CODEX_HOME included.
pub fn environment(dirs: &RunDirs) -> Vec<(OsString, OsString)> {
    let mut env = super::run_environment(dirs);
    env.push(("CODEX_HOME".into(), dirs.codex_home.clone().into()));
    // The CLI's own setting for where ChatGPT tokens are refreshed (codex-rs reads it), for
    // operators whose token endpoint sits behind a gateway, and for tests.
    if let Some(url) = std::env::var_os(REFRESH_URL_OVERRIDE) {
        env.push((REFRESH_URL_OVERRIDE.into(), url));
    }
    env
}

/// The Codex CLI's variable that moves its token refresh endpoint.
pub const REFRESH_URL_OVERRIDE: &str = "CODEX_REFRESH_TOKEN_URL_OVERRIDE";

/// Shell start-up files for the run's HOME that put the tool directory first on PATH.
/// Codex runs commands in a login shell (`bash -lc`), and a login shell's /etc/profile may
/// reset PATH, so the environment alone would not keep the tools callable by name.
pub fn shell_profile(bin: &Path) -> String {
    let quoted = bin.display().to_string().replace('\'', r"'\''");
    format!(
        "# written by headless-bridge: the run's verified tools come first\nPATH='{quoted}':\"$PATH\"\nexport PATH\n"
    )
}

/// stderr lines codex-cli prints on every healthy run, which would only clutter the account.
const STDERR_NOISE: &[&str] = &["Reading additional input from stdin..."];

/// The CLI's stderr without the lines it prints on every run.
pub fn meaningful_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !STDERR_NOISE.contains(&l.trim()))
        .collect();
    lines.join("\n").trim().to_owned()
}

/// The prompt of the original `/run_codex_session` API, built from its request.
pub fn legacy_prompt(
    repo_url: &str,
    tool_url: &str,
    tool_digest: &str,
    failure_details: &str,
) -> String {
    format!(
        "You are working in a clone of the repository {repo_url}; the current directory is its \
         root.\n\n\
         A helper tool is installed and callable as `ak` from your shell commands. It was \
         downloaded from {tool_url} and verified against {tool_digest}; do not download it \
         again.\n\n\
         Fix the following failure in this repository:\n\n{failure_details}\n\n\
         Make the change in the working tree, check it with the tool or the project's tests where \
         you can, and finish with a short summary of what you changed and why."
    )
}

/// A `/v1/runs` prompt, with a note of the tools on PATH when the run has any.
pub fn run_prompt(prompt: &str, tool_names: &[&str]) -> String {
    if tool_names.is_empty() {
        return prompt.to_owned();
    }
    let tools = tool_names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{prompt}\n\n(Verified tools on PATH for your shell commands: {tools}.)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> RunDirs {
        RunDirs {
            work: "/w/repo".into(),
            bin: "/w/bin".into(),
            home: "/w/home".into(),
            codex_home: "/w/codex".into(),
            tmp: "/w/tmp".into(),
            last_message: "/w/out/last.txt".into(),
        }
    }

    fn config(bypass_sandbox: bool) -> CodexConfig {
        CodexConfig {
            bin: "codex".into(),
            dir: None,
            auth_file: None,
            bypass_sandbox,
        }
    }

    #[test]
    fn the_prompt_comes_last_after_a_double_dash() {
        let (_, args, _) = command(&config(true), &dirs(), "--version");
        let n = args.len();
        assert_eq!(args[n - 2], "--");
        assert_eq!(args[n - 1], "--version");
        assert!(args.contains(&"--dangerously-bypass-approvals-and-sandbox".into()));
    }

    #[test]
    fn the_sandbox_can_be_kept() {
        let (_, args, _) = command(&config(false), &dirs(), "p");
        assert!(!args.contains(&"--dangerously-bypass-approvals-and-sandbox".into()));
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--sandbox" && w[1] == "workspace-write")
        );
    }

    #[test]
    fn the_environment_puts_tools_first_and_carries_no_bridge_secrets() {
        let (_, _, env) = command(&config(true), &dirs(), "p");
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .unwrap()
            .1
            .to_str()
            .unwrap()
            .to_owned();
        assert!(path.starts_with("/w/bin:"), "{path}");
        assert!(
            env.iter()
                .all(|(k, _)| !k.to_string_lossy().starts_with("HB_"))
        );
    }

    #[test]
    fn routine_stderr_is_dropped() {
        let stderr = "Reading additional input from stdin...\nERROR: config broken\n";
        assert_eq!(meaningful_stderr(stderr), "ERROR: config broken");
    }

    #[test]
    fn the_profile_quotes_the_directory() {
        assert!(shell_profile(Path::new("/a b/it's")).contains(r"PATH='/a b/it'\''s':"));
    }
}
