//! The git CLI, driven safely: cloning a run's repository and reading back what it changed.
//!
//! git runs with a cleared environment, no system or global configuration, a private HOME, and
//! every way it could ask a person for something turned off, so an unreachable or private
//! repository fails at once instead of waiting for a terminal. User strings are only ever
//! arguments after `--` or values of options that take one, never options themselves.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use url::Url;

/// Clones are shallow; a slow server still gets this long.
const CLONE_TIMEOUT: Duration = Duration::from_secs(300);
/// Local commands (rev-parse, diff) on a workspace.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Diffs past this size are cut, with a note saying so.
const MAX_DIFF_BYTES: usize = 4 << 20;

/// Configuration given to every git command: no helpers that prompt, only http(s) transports
/// (no `ext::` or `file://` through submodules), and no redirects the URL policy never saw.
const HARDENING: &[&str] = &[
    "credential.helper=",
    "core.askPass=",
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.http.allow=always",
    "http.followRedirects=false",
    "core.hooksPath=/dev/null",
    "advice.detachedHead=false",
];

/// Why a git command failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("the git server asked for credentials or refused them: {stderr}")]
    AuthFailed { stderr: String },
    #[error("git {command} failed: {stderr}")]
    Failed {
        command: &'static str,
        stderr: String,
    },
    #[error("git {command} did not finish within {}s", .timeout.as_secs())]
    TimedOut {
        command: &'static str,
        timeout: Duration,
    },
    #[error("failed to start git")]
    Spawn(#[source] std::io::Error),
}

/// A checked-out repository in a workspace.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub dir: PathBuf,
    /// The commit the clone started at; diffs are taken against it.
    pub base_commit: String,
}

/// Runs git with a private HOME.
#[derive(Debug, Clone)]
pub struct Git {
    program: PathBuf,
    home: PathBuf,
}

impl Git {
    /// git from PATH, with `home` as its HOME.
    pub fn new(home: &Path) -> Self {
        Self {
            program: PathBuf::from("git"),
            home: home.to_owned(),
        }
    }

    /// Shallow-clones `url` (at `git_ref` if given) into `dest`.
    pub async fn clone(
        &self,
        url: &Url,
        git_ref: Option<&str>,
        dest: &Path,
    ) -> Result<Checkout, GitError> {
        let mut args: Vec<OsString> = ["clone", "--depth", "1", "--single-branch", "--no-tags"]
            .map(OsString::from)
            .into();
        if let Some(git_ref) = git_ref {
            args.extend(["--branch".into(), git_ref.into()]);
        }
        args.extend(["--".into(), url.as_str().into(), dest.into()]);
        self.output("clone", args, None, CLONE_TIMEOUT)
            .await
            .map_err(classify_clone_error)?;

        let head = self
            .output(
                "rev-parse",
                ["rev-parse", "HEAD"].map(OsString::from).into(),
                Some(dest),
                LOCAL_TIMEOUT,
            )
            .await?;
        Ok(Checkout {
            dir: dest.to_owned(),
            base_commit: String::from_utf8_lossy(&head).trim().to_owned(),
        })
    }

    /// Everything that differs from the clone's starting commit, untracked files included, as
    /// a patch. Cut at a size limit with a trailing note.
    pub async fn diff(&self, checkout: &Checkout) -> Result<String, GitError> {
        let dir = Some(checkout.dir.as_path());
        // A CLI run as another user (a profile's `run_as`) owns the clone by then, and git
        // refuses a repository owned by someone else unless it is named safe.
        let mut safe = OsString::from("safe.directory=");
        safe.push(&checkout.dir);
        let mut add: Vec<OsString> = vec!["-c".into(), safe.clone()];
        add.extend(["add", "--all", "--intent-to-add"].map(OsString::from));
        self.output("add", add, dir, LOCAL_TIMEOUT).await?;

        let mut args: Vec<OsString> = vec!["-c".into(), safe];
        args.extend(
            [
                "diff",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--binary",
                &checkout.base_commit,
                "--",
            ]
            .map(OsString::from),
        );
        let patch = self.output("diff", args, dir, LOCAL_TIMEOUT).await?;
        let mut text = String::from_utf8_lossy(&patch).into_owned();
        if text.len() > MAX_DIFF_BYTES {
            let cut = text.floor_char_boundary(MAX_DIFF_BYTES);
            let dropped = text.len() - cut;
            text.truncate(cut);
            text.push_str(&format!(
                "\n[diff truncated: {dropped} more bytes not shown]\n"
            ));
        }
        Ok(text)
    }

    async fn output(
        &self,
        command: &'static str,
        args: Vec<OsString>,
        cwd: Option<&Path>,
        timeout: Duration,
    ) -> Result<Vec<u8>, GitError> {
        let mut cmd = Command::new(&self.program);
        for setting in HARDENING {
            cmd.arg("-c").arg(setting);
        }
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &self.home)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_SSH_COMMAND", "ssh -oBatchMode=yes")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }

        let child = crate::reaper::spawn(&mut cmd).map_err(GitError::Spawn)?;
        let group = child.id().map(|id| Pid::from_raw(id as i32));
        let pid = child.id();
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(result) => result.map_err(GitError::Spawn)?,
            Err(_) => {
                if let Some(group) = group {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                crate::reaper::forget(pid);
                return Err(GitError::TimedOut { command, timeout });
            }
        };
        crate::reaper::forget(pid);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(GitError::Failed { command, stderr });
        }
        Ok(output.stdout)
    }
}

/// Tells an authentication problem from other clone failures by git's own messages.
fn classify_clone_error(err: GitError) -> GitError {
    const AUTH_SIGNS: &[&str] = &[
        "could not read Username",
        "could not read Password",
        "Authentication failed",
        "terminal prompts disabled",
        "HTTP Basic: Access denied",
        "The requested URL returned error: 401",
        "The requested URL returned error: 403",
        "Permission denied (publickey",
    ];
    match err {
        GitError::Failed { stderr, .. } if AUTH_SIGNS.iter().any(|s| stderr.contains(s)) => {
            GitError::AuthFailed { stderr }
        }
        other => other,
    }
}

/// Checks a branch or tag name the way `git check-ref-format --allow-onelevel` would, and
/// refuses names that begin with '-' so they can never be read as options.
pub fn check_ref_name(name: &str) -> Result<(), &'static str> {
    const FORBIDDEN: &[char] = &[' ', '~', '^', ':', '?', '*', '[', '\\'];
    if name.is_empty() || name.len() > 255 {
        return Err("must have 1 to 255 characters");
    }
    if name.starts_with('-') {
        return Err("must not begin with '-'");
    }
    if name
        .chars()
        .any(|c| c.is_control() || FORBIDDEN.contains(&c))
    {
        return Err("must not contain spaces, control characters or any of ~ ^ : ? * [ \\");
    }
    if name.contains("..") || name.contains("@{") || name.contains("//") || name == "@" {
        return Err("must not contain '..', '@{' or '//', nor be '@'");
    }
    if name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with('.')
        || name.ends_with(".lock")
    {
        return Err("must not begin or end with '/', nor end with '.' or '.lock'");
    }
    if name.split('/').any(|part| part.starts_with('.')) {
        return Err("no part between slashes may begin with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case("main")]
    #[case("release/v1.2")]
    #[case("v1.0.0")]
    #[case("feature_x-y")]
    fn accepts_ref_names_git_accepts(#[case] name: &str) {
        assert_eq!(check_ref_name(name), Ok(()));
    }

    #[rstest]
    #[case("")]
    #[case("-b")]
    #[case("--upload-pack=x")]
    #[case("a..b")]
    #[case("a b")]
    #[case("a~1")]
    #[case("a^")]
    #[case("a:b")]
    #[case("topic.lock")]
    #[case("topic/")]
    #[case("/topic")]
    #[case(".hidden")]
    #[case("a/.b")]
    #[case("a@{1}")]
    #[case("@")]
    #[case("a//b")]
    #[case("tab\there")]
    fn refuses_ref_names_git_refuses(#[case] name: &str) {
        assert!(check_ref_name(name).is_err(), "{name:?} should be refused");
    }

    #[test]
    fn auth_messages_are_told_apart() {
        let stderr =
            "fatal: could not read Username for 'https://x': terminal prompts disabled".to_owned();
        let err = classify_clone_error(GitError::Failed {
            command: "clone",
            stderr,
        });
        assert!(matches!(err, GitError::AuthFailed { .. }));
    }
}
