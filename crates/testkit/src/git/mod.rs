//! Git smart HTTP on loopback, standing in for a code host. [`GitServer`] owns a temporary
//! directory of bare repositories, creates them with real `git`, and serves them with real
//! `git http-backend` (run as CGI by the `cgi` module), so clients speak the same protocol as
//! to a real host, v2 and shallow clones included. Pushing is not offered: the backend refuses
//! it without an authenticated user, as a real host would.
//!
//! [`SshGitServer`] serves the same kind of repositories over ssh, through a real OpenSSH
//! `sshd` of its own.

mod cgi;
mod ssh;

use std::fs;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub use self::ssh::SshGitServer;
use crate::loopback::Loopback;

/// Who authored the commits [`GitServer::create_repo`] makes; with the fixed date this makes
/// the same files give the same commit id on every machine.
const AUTHOR: (&str, &str) = ("Testkit", "testkit@example.invalid");
const COMMIT_DATE: &str = "2026-01-01T00:00:00Z";

/// A running git smart HTTP server on 127.0.0.1; dropping it shuts the server down and
/// deletes its repositories.
#[derive(Debug)]
pub struct GitServer {
    // Declared before `root` so the server stops before its repositories are deleted.
    server: Loopback,
    root: TempDir,
    shared: Arc<Shared>,
}

/// What every request handler sees.
#[derive(Debug)]
struct Shared {
    project_root: PathBuf,
    /// The password basic authentication demands (any user name); `None` serves everyone.
    password: Option<String>,
    /// Requests refused for missing or wrong credentials.
    refused: std::sync::atomic::AtomicUsize,
    /// Speak only protocol v0, like an older host: fetching a commit that no ref advertises
    /// is refused there, while v2 serves any reachable commit.
    v0_only: bool,
}

impl GitServer {
    /// Starts a server with no repositories, kept in a temporary directory it owns.
    pub async fn start() -> GitServer {
        Self::start_inner(None, false).await
    }

    /// Starts a server that speaks only git protocol v0, which refuses requests for commits
    /// no branch or tag points at, as older hosts do.
    pub async fn start_protocol_v0() -> GitServer {
        Self::start_inner(None, true).await
    }

    /// Starts a server that answers only requests with HTTP basic credentials whose password
    /// is `password`, and 401 to any other.
    pub async fn start_with_password(password: &str) -> GitServer {
        Self::start_inner(Some(password.to_owned()), false).await
    }

    async fn start_inner(password: Option<String>, v0_only: bool) -> GitServer {
        let root = TempDir::new().expect("the temp dir is writable");
        let shared = Arc::new(Shared {
            project_root: root.path().to_owned(),
            password,
            refused: Default::default(),
            v0_only,
        });

        let router = Router::new()
            .fallback(serve)
            .with_state(Arc::clone(&shared));
        let server = Loopback::serve(router, CancellationToken::new()).await;
        GitServer {
            server,
            root,
            shared,
        }
    }

    /// How many requests were refused for missing or wrong credentials.
    pub fn refused(&self) -> usize {
        self.shared
            .refused
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Adds a commit of `files` on top of `main` of repository `name` and returns its id.
    pub fn commit(&self, name: &str, files: &[(&str, &str)], message: &str) -> String {
        let bare = self.bare(name);
        let work = TempDir::new().expect("the temp dir is writable");
        run(git(work.path()).args(["clone", "-q"]).arg(&bare).arg("."));
        write_files(work.path(), files);
        run(git(work.path()).args(["add", "--all"]));
        run(git(work.path()).args(["commit", "-q", "-m", message]));
        run(git(work.path()).args(["push", "-q", "origin", "main"]));
        self.head(name)
    }

    /// The commit `main` of repository `name` points at.
    pub fn head(&self, name: &str) -> String {
        let output = git(&self.bare(name))
            .args(["rev-parse", "main"])
            .output()
            .expect("git is installed");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Creates repository `name` holding `files` and a submodule at `path` whose URL is
    /// `url` (absolute, or relative to this repository), pinned to `commit`, which need not
    /// be the tip of any branch. Returns the clone URL.
    pub fn create_repo_with_submodule(
        &self,
        name: &str,
        files: &[(&str, &str)],
        (path, url, commit): (&str, &str, &str),
    ) -> String {
        assert_plain_name(name);
        let bare = self.bare(name);
        assert!(!bare.exists(), "repository {name} already exists");
        let work = TempDir::new().expect("the temp dir is writable");
        let gitmodules = format!("[submodule \"{path}\"]\n\tpath = {path}\n\turl = {url}\n");
        let mut all: Vec<(&str, &str)> = files.to_vec();
        all.push((".gitmodules", &gitmodules));

        write_files(work.path(), &all);
        run(git(work.path()).args(["init", "-q", "-b", "main"]));
        run(git(work.path()).args(["add", "--all"]));
        // A gitlink entry: the superproject records only the submodule's commit id.
        let cacheinfo = format!("160000,{commit},{path}");
        run(git(work.path()).args(["update-index", "--add", "--cacheinfo", &cacheinfo]));
        run(git(work.path()).args(["commit", "-q", "-m", "Add a submodule"]));
        run(git(self.root.path())
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare));
        run(git(work.path()).args(["push", "-q"]).arg(&bare).arg("main"));
        format!("{}/{name}.git", self.server.origin())
    }

    fn bare(&self, name: &str) -> PathBuf {
        assert_plain_name(name);
        self.root.path().join(format!("{name}.git"))
    }

    /// Creates the bare repository `<name>.git` holding one commit of `files`, given as
    /// (relative path, contents), on branch `main`, and returns its clone URL.
    ///
    /// Panics if `name` or a path is not a plain relative name, the repository exists, or git
    /// fails: each is a mistake in the test.
    pub fn create_repo(&self, name: &str, files: &[(&str, &str)]) -> String {
        create_bare_repo(self.root.path(), name, files);
        format!("{}/{name}.git", self.server.origin())
    }
}

/// Creates the bare repository `<root>/<name>.git` holding one commit of `files` on branch
/// `main`, and returns its path. Panics on a mistake in the test, as
/// [`GitServer::create_repo`] says.
fn create_bare_repo(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    assert_plain_name(name);
    let bare = root.join(format!("{name}.git"));
    assert!(!bare.exists(), "repository {name} already exists");
    let work = TempDir::new().expect("the temp dir is writable");

    write_files(work.path(), files);
    run(git(work.path()).args(["init", "-q", "-b", "main"]));
    run(git(work.path()).args(["add", "--all"]));
    run(git(work.path()).args(["commit", "-q", "-m", "Initial commit"]));

    run(git(root)
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare));
    run(git(work.path()).args(["push", "-q"]).arg(&bare).arg("main"));
    bare
}

async fn serve(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    mut headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.v0_only {
        headers.remove("git-protocol");
    }
    if let Some(password) = &shared.password
        && !has_password(&headers, password)
    {
        shared
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let challenge = [("www-authenticate", "Basic realm=\"testkit\"")];
        return (
            StatusCode::UNAUTHORIZED,
            challenge,
            "authentication required\n",
        )
            .into_response();
    }
    match cgi::run(&shared.project_root, &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), %uri, "git http-backend failed");
            let message = format!("failed to run git http-backend: {error:#}\n");
            (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }
    }
}

/// Whether `headers` carry basic credentials with `password`, whatever the user name.
fn has_password(headers: &HeaderMap, password: &str) -> bool {
    use base64::Engine as _;
    let Some(encoded) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let text = String::from_utf8_lossy(&decoded);
    text.split_once(':')
        .is_some_and(|(_, given)| given == password)
}

/// The environment every git process here gets instead of ours: no system or user config,
/// so a developer's `~/.gitconfig` (signing, hooks, default branch) cannot change results.
fn hermetic_env(home: &Path) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    vec![
        ("PATH".into(), path),
        ("HOME".into(), home.display().to_string()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
        ("GIT_AUTHOR_NAME".into(), AUTHOR.0.into()),
        ("GIT_AUTHOR_EMAIL".into(), AUTHOR.1.into()),
        ("GIT_AUTHOR_DATE".into(), COMMIT_DATE.into()),
        ("GIT_COMMITTER_NAME".into(), AUTHOR.0.into()),
        ("GIT_COMMITTER_EMAIL".into(), AUTHOR.1.into()),
        ("GIT_COMMITTER_DATE".into(), COMMIT_DATE.into()),
        // Fixtures clone from local bare repositories by path.
        ("GIT_ALLOW_PROTOCOL".into(), "file:http:https".into()),
    ]
}

/// A `git -C dir` command with the hermetic environment.
fn git(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .env_clear()
        .envs(hermetic_env(dir))
        .arg("-C")
        .arg(dir);
    command
}

/// Runs `command`, panicking with its stderr if it fails.
fn run(command: &mut Command) {
    let output = command.output().expect("git is installed and on PATH");
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `files` under `dir`, creating parent directories.
fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        assert!(
            is_relative_inside(Path::new(path)),
            "{path:?} must be relative and stay inside the repository"
        );
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("the work tree is writable");
        }
        fs::write(&path, contents).expect("the work tree is writable");
    }
}

fn is_relative_inside(path: &Path) -> bool {
    path.components()
        .all(|part| matches!(part, Component::Normal(_)))
}

/// A repository name that needs no escaping in a URL and cannot leave the root.
fn assert_plain_name(name: &str) {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    assert!(
        plain && !name.is_empty() && !name.starts_with('.'),
        "repository name {name:?} must be letters, digits, '-', '_' or '.', not starting with '.'"
    );
}
