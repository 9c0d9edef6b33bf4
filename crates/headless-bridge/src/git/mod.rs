//! The git CLI, driven safely: cloning a run's repository (with its submodules on request)
//! and reading back what it changed.
//!
//! git runs with a cleared environment, no system or global configuration, a private HOME, and
//! every way it could ask a person for something turned off, so an unreachable or private
//! repository fails at once instead of waiting for a terminal. User strings are only ever
//! arguments after `--` or values of options that take one, never options themselves. A token
//! for a private repository reaches git only through the askpass helper of [`auth`], an ssh
//! key only through the wrapper of [`ssh`]. While a clone writes, a [`SizeWatch`] measures
//! the tree and stops git when it passes the workspace's limit. Submodule URLs are checked by the URL policy before any is fetched
//! ([`submodule`]); ref names are checked by [`refname`].

pub mod auth;
pub mod refname;
pub mod ssh;
pub mod submodule;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use url::Url;

pub use self::auth::GitAuth;
pub use self::refname::check_ref_name;
pub use self::ssh::SshAuth;
use crate::policy::UrlPolicy;
use crate::workspace::SizeWatch;

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
    /// ssh met a host key that `known_hosts` does not hold for that host: unknown, or
    /// changed (a replaced server, or someone in between). Fixed by the operator, not by
    /// trying again.
    #[error(
        "the ssh server's host key is not the one known_hosts in HB_GIT_CREDENTIALS_DIR \
         trusts: {stderr}"
    )]
    HostKeyRejected { stderr: String },
    #[error("the workspace ran out of room: {0}")]
    DiskFull(String),
    #[error("submodule URL `{url}` is not allowed: it {reason}")]
    SubmoduleUrl { url: String, reason: String },
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

/// What to clone, and how.
#[derive(Debug, Clone, Default)]
pub struct CloneOptions<'a> {
    /// A branch or tag; the remote's default branch when absent.
    pub git_ref: Option<&'a str>,
    /// Also check out the submodules (one level), each URL checked by `policy`.
    pub submodules: Option<&'a UrlPolicy>,
    /// Stop the clone when the tree passes this size.
    pub size_watch: Option<SizeWatch>,
}

/// A checked-out repository in a workspace.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub dir: PathBuf,
    /// The commit the clone started at; diffs are taken against it.
    pub base_commit: String,
    /// Submodules checked out, and those that needed a full fetch.
    pub submodules: Vec<submodule::Submodule>,
}

/// Runs git with a private HOME.
#[derive(Debug, Clone)]
pub struct Git {
    program: PathBuf,
    home: PathBuf,
    auth: Option<GitAuth>,
    ssh: Option<SshAuth>,
    /// `host:port:addr` entries git's HTTP client must use instead of resolving the name.
    pins: Vec<String>,
    allow_ssh: bool,
    size_watch: Option<SizeWatch>,
}

impl Git {
    /// git from PATH, with `home` as its HOME.
    pub fn new(home: &Path) -> Self {
        Self {
            program: PathBuf::from("git"),
            home: home.to_owned(),
            auth: None,
            ssh: None,
            pins: Vec::new(),
            allow_ssh: false,
            size_watch: None,
        }
    }

    /// Uses `auth` whenever the server asks for credentials.
    pub fn with_auth(mut self, auth: Option<GitAuth>) -> Self {
        self.auth = auth;
        self
    }

    /// Makes git connect to the addresses the URL policy checked (see
    /// [`UrlPolicy::pin`]) rather than resolving the host name again.
    pub fn with_pin(mut self, pin: Option<String>) -> Self {
        self.pins.extend(pin);
        self
    }

    /// Uses `ssh` for `ssh://` URLs.
    pub fn with_ssh(mut self, ssh: Option<SshAuth>) -> Self {
        self.ssh = ssh;
        self
    }

    /// Clones `url` into `dest`: shallow, single branch, then submodules if asked.
    pub async fn clone(
        mut self,
        url: &Url,
        options: CloneOptions<'_>,
        dest: &Path,
    ) -> Result<Checkout, GitError> {
        self.allow_ssh = url.scheme() == "ssh";
        self.size_watch = options.size_watch.clone();
        match options.git_ref {
            Some(commit) if is_commit_id(commit) => self.fetch_commit(url, commit, dest).await?,
            git_ref => self.clone_branch(url, git_ref, dest).await?,
        }

        let submodules = match options.submodules {
            Some(policy) => submodule::update(&self, policy, dest).await?,
            None => Vec::new(),
        };
        // A clone that finished between two measurements is measured once more.
        if let Some(watch) = &self.size_watch {
            let used = crate::workspace::disk_usage(&watch.dir);
            if used > watch.limit {
                let limit = watch.limit;
                let detail = format!("{used} bytes used, more than the limit of {limit}");
                return Err(GitError::DiskFull(detail));
            }
        }
        let head = self.run_in(dest, &["rev-parse", "HEAD"]).await?;
        Ok(Checkout {
            dir: dest.to_owned(),
            base_commit: String::from_utf8_lossy(&head).trim().to_owned(),
            submodules,
        })
    }

    /// `git clone --depth 1` of a branch or tag, or of the default branch.
    async fn clone_branch(
        &self,
        url: &Url,
        git_ref: Option<&str>,
        dest: &Path,
    ) -> Result<(), GitError> {
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
        Ok(())
    }

    /// Checks out one commit: fetched alone and shallow where the server serves any
    /// reachable commit (protocol v2), else with the whole history, which a server that only
    /// serves branch tips (v0) answers too.
    async fn fetch_commit(&self, url: &Url, commit: &str, dest: &Path) -> Result<(), GitError> {
        std::fs::create_dir_all(dest).map_err(GitError::Spawn)?;
        self.run_in(dest, &["init", "-q"]).await?;
        self.run_in(dest, &["remote", "add", "origin", url.as_str()])
            .await?;
        let shallow = ["fetch", "--depth", "1", "--no-tags", "origin", commit];
        if let Err(err) = self.network_in(dest, &shallow).await {
            let GitError::Failed { stderr, .. } = &err else {
                return Err(err);
            };
            tracing::info!(
                stderr,
                "a shallow fetch of the commit failed; fetching the history"
            );
            self.network_in(dest, &["fetch", "--no-tags", "origin"])
                .await?;
        }
        self.run_in(dest, &["checkout", "-q", "--detach", commit])
            .await?;
        Ok(())
    }

    /// A command in `dir` that talks to the server: the clone's time limit and its errors.
    async fn network_in(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let command = static_name(args[0]);
        let args = args.iter().map(OsString::from).collect();
        self.output(command, args, Some(dir), CLONE_TIMEOUT)
            .await
            .map_err(classify_clone_error)
    }

    /// Everything that differs from the clone's starting commit, untracked files included, as
    /// a patch. Cut at a size limit with a trailing note.
    pub async fn diff(&self, checkout: &Checkout) -> Result<String, GitError> {
        let dir = &checkout.dir;
        self.run_in(dir, &["add", "--all", "--intent-to-add"])
            .await?;
        let args = [
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--binary",
            &checkout.base_commit,
            "--",
        ];
        let patch = self.run_in(dir, &args).await?;
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

    /// A local command in `dir`, named by its first argument. The repository's own
    /// configuration is the run's to write, so nothing in it may make the bridge's git run a
    /// program (`core.fsmonitor`); and a CLI run as another user (a profile's `run_as`) owns
    /// the clone by then, which git refuses unless the directory is named safe.
    async fn run_in(&self, dir: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let command = static_name(args[0]);
        let mut safe = OsString::from("safe.directory=");
        safe.push(dir);
        let mut args: Vec<OsString> = args.iter().map(OsString::from).collect();
        args.splice(
            0..0,
            [
                "-c".into(),
                safe,
                "-c".into(),
                "core.fsmonitor=false".into(),
            ],
        );
        self.output(command, args, Some(dir), LOCAL_TIMEOUT).await
    }

    async fn output(
        &self,
        command: &'static str,
        args: Vec<OsString>,
        cwd: Option<&Path>,
        timeout: Duration,
    ) -> Result<Vec<u8>, GitError> {
        let mut cmd = self.command(args);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let child = crate::reaper::spawn(&mut cmd).map_err(GitError::Spawn)?;
        let pid = child.id();
        let group = pid.map(|id| Pid::from_raw(id as i32));
        let kill_group = || {
            if let Some(group) = group {
                let _ = killpg(group, Signal::SIGKILL);
            }
        };
        let watch = self.size_watch.clone();
        let over_limit = async move {
            match watch {
                Some(watch) => (watch.exceeded().await, watch.limit),
                None => std::future::pending().await,
            }
        };

        let finished = tokio::select! {
            result = tokio::time::timeout(timeout, child.wait_with_output()) => match result {
                Ok(result) => result.map_err(GitError::Spawn),
                Err(_) => {
                    kill_group();
                    Err(GitError::TimedOut { command, timeout })
                }
            },
            (used, limit) = over_limit => {
                kill_group();
                let detail = format!("{used} bytes used, more than the limit of {limit}");
                Err(GitError::DiskFull(detail))
            }
        };
        crate::reaper::forget(pid);
        let output = finished?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            return Err(GitError::Failed { command, stderr });
        }
        Ok(output.stdout)
    }

    fn command(&self, args: Vec<OsString>) -> Command {
        let mut cmd = Command::new(&self.program);
        for setting in HARDENING {
            cmd.arg("-c").arg(setting);
        }
        if self.allow_ssh {
            cmd.args(["-c", "protocol.ssh.allow=always"]);
        }
        for pin in &self.pins {
            cmd.arg("-c").arg(format!("http.curloptResolve={pin}"));
        }
        match &self.auth {
            Some(auth) => cmd
                .arg("-c")
                .arg(format!("core.askPass={}", auth.askpass.display())),
            None => cmd.args(["-c", "core.askPass="]),
        };
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
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(auth) = &self.auth {
            cmd.envs(auth.env());
        }
        // GIT_SSH_COMMAND would win over GIT_SSH, so only one of them is ever set.
        match &self.ssh {
            Some(ssh) => cmd.envs(ssh.env()),
            None => cmd.env("GIT_SSH_COMMAND", "ssh -oBatchMode=yes"),
        };
        cmd
    }
}

/// The command names `run_in` reports, as static strings for the error type.
fn static_name(command: &str) -> &'static str {
    match command {
        "add" => "add",
        "diff" => "diff",
        "rev-parse" => "rev-parse",
        "config" => "config",
        "submodule" => "submodule",
        "fetch" => "fetch",
        "init" => "init",
        "remote" => "remote",
        "checkout" => "checkout",
        _ => "command",
    }
}

/// Whether a ref names a commit by its full id (SHA-1 or SHA-256) rather than a branch or tag.
pub fn is_commit_id(git_ref: &str) -> bool {
    matches!(git_ref.len(), 40 | 64)
        && git_ref
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Tells an authentication problem, a host key ssh does not trust and a full disk from other
/// clone failures by git's and ssh's own messages.
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
        // OpenSSH's last word whether the host key is unknown or changed (sshconnect.c).
        GitError::Failed { stderr, .. } if stderr.contains("Host key verification failed") => {
            GitError::HostKeyRejected { stderr }
        }
        GitError::Failed { stderr, .. } if stderr.contains("No space left on device") => {
            GitError::DiskFull(stderr)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::prompt("fatal: could not read Username for 'https://x': terminal prompts disabled")]
    #[case::refused("remote: HTTP Basic: Access denied\nfatal: Authentication failed for 'x'")]
    #[case::status("fatal: unable to access 'x': The requested URL returned error: 401")]
    #[case::ssh_key("root@127.0.0.1: Permission denied (publickey).\nfatal: Could not read")]
    fn auth_messages_are_told_apart(#[case] stderr: &str) {
        let err = classify_clone_error(GitError::Failed {
            command: "clone",
            stderr: stderr.into(),
        });
        assert!(matches!(err, GitError::AuthFailed { .. }), "{err:?}");
    }

    #[test]
    fn a_token_is_in_no_argument_and_no_environment_variable_of_git() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url: Url = "http://127.0.0.1:8080/r.git".parse().expect("a URL");
        let helpers = dir.path().join("helpers");
        let auth =
            auth::install(&helpers, dir.path(), &url, "tok-canary-77".into()).expect("installs");
        let git = Git::new(dir.path()).with_auth(Some(auth));
        let cmd = git.command(vec!["clone".into(), "--".into(), url.as_str().into()]);

        let std = cmd.as_std();
        let args: Vec<_> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.iter().all(|a| !a.contains("tok-canary-77")),
            "{args:?}"
        );
        let envs = std
            .get_envs()
            .filter_map(|(_, v)| v)
            .map(|v| v.to_string_lossy().into_owned());
        assert!(envs.into_iter().all(|v| !v.contains("tok-canary-77")));
        assert!(
            args.iter().any(|a| a.starts_with("core.askPass=")),
            "{args:?}"
        );
    }

    /// git connects where the pin says, whatever the name resolves to (here: nothing).
    #[tokio::test]
    async fn a_pinned_address_is_where_git_connects() {
        let server = testkit::git::GitServer::start().await;
        let real = server.create_repo("widget", &[("README.md", "pinned\n")]);
        let port = real
            .split(':')
            .nth(2)
            .and_then(|p| p.split('/').next())
            .expect("a port");
        let url: Url = format!("http://git.pinned.invalid:{port}/widget.git")
            .parse()
            .expect("a URL");
        let dir = tempfile::tempdir().expect("a temp dir");

        let checkout = Git::new(dir.path())
            .with_pin(Some(format!("git.pinned.invalid:{port}:127.0.0.1")))
            .clone(&url, CloneOptions::default(), &dir.path().join("work"))
            .await
            .expect("cloned through the pin");

        let readme = std::fs::read_to_string(checkout.dir.join("README.md")).expect("read");
        assert_eq!(readme, "pinned\n");
    }

    /// The watch stops git mid-command: here git waits on a server that never answers, and
    /// the watched tree is already over its limit.
    #[tokio::test]
    async fn a_workspace_over_its_limit_stops_a_running_git() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url: Url = format!("http://{}/r.git", listener.local_addr().expect("addr"))
            .parse()
            .expect("a URL");
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("filler"), vec![1u8; 64 << 10]).expect("write");
        let options = CloneOptions {
            size_watch: Some(SizeWatch {
                dir: dir.path().to_owned(),
                limit: 4096,
                interval: None,
            }),
            ..CloneOptions::default()
        };

        let started = std::time::Instant::now();
        let err = Git::new(dir.path())
            .clone(&url, options, &dir.path().join("work"))
            .await
            .expect_err("stopped");

        assert!(matches!(err, GitError::DiskFull(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(listener);
    }

    #[rstest]
    #[case::sha1("0123456789abcdef0123456789abcdef01234567", true)]
    #[case::sha256(&"ab".repeat(32), true)]
    #[case::upper("0123456789ABCDEF0123456789ABCDEF01234567", false)]
    #[case::short("0123456", false)]
    #[case::branch("main", false)]
    #[case::hexish_branch("deadbeef", false)]
    fn commit_ids_are_told_from_branch_names(#[case] git_ref: &str, #[case] commit: bool) {
        assert_eq!(is_commit_id(git_ref), commit);
    }

    /// What OpenSSH 9.2 and git print for an ssh server whose key `known_hosts` lacks, and
    /// for one whose key changed.
    #[rstest]
    #[case::unknown(
        "No ED25519 host key is known for [127.0.0.1]:35301 and you have requested strict \
         checking.\nHost key verification failed.\nfatal: Could not read from remote repository."
    )]
    #[case::changed(
        "Host key for [127.0.0.1]:35301 has changed and you have requested strict checking.\n\
         Host key verification failed.\nfatal: Could not read from remote repository."
    )]
    fn a_host_key_ssh_does_not_trust_is_told_apart(#[case] stderr: &str) {
        let err = classify_clone_error(GitError::Failed {
            command: "clone",
            stderr: stderr.into(),
        });
        assert!(matches!(err, GitError::HostKeyRejected { .. }), "{err:?}");
    }

    #[test]
    fn a_full_disk_is_told_apart() {
        let stderr = "fatal: write error: No space left on device".into();
        let err = classify_clone_error(GitError::Failed {
            command: "clone",
            stderr,
        });
        assert!(matches!(err, GitError::DiskFull(_)), "{err:?}");
    }
}
