//! Git smart HTTP on loopback, standing in for a code host. [`GitServer`] owns a temporary
//! directory of bare repositories, creates them with real `git`, and serves them with real
//! `git http-backend` (run as CGI by the `cgi` module), so clients speak the same protocol as
//! to a real host, v2 and shallow clones included. Pushing is not offered: the backend refuses
//! it without an authenticated user, as a real host would.

mod cgi;

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
}

impl GitServer {
    /// Starts a server with no repositories, kept in a temporary directory it owns.
    pub async fn start() -> GitServer {
        let root = TempDir::new().expect("the temp dir is writable");
        let project_root = Arc::new(root.path().to_owned());

        let router = Router::new().fallback(serve).with_state(project_root);
        let server = Loopback::serve(router, CancellationToken::new()).await;
        GitServer { server, root }
    }

    /// Creates the bare repository `<name>.git` holding one commit of `files`, given as
    /// (relative path, contents), on branch `main`, and returns its clone URL.
    ///
    /// Panics if `name` or a path is not a plain relative name, the repository exists, or git
    /// fails: each is a mistake in the test.
    pub fn create_repo(&self, name: &str, files: &[(&str, &str)]) -> String {
        assert_plain_name(name);
        let bare = self.root.path().join(format!("{name}.git"));
        assert!(!bare.exists(), "repository {name} already exists");
        let work = TempDir::new().expect("the temp dir is writable");

        write_files(work.path(), files);
        run(git(work.path()).args(["init", "-q", "-b", "main"]));
        run(git(work.path()).args(["add", "--all"]));
        run(git(work.path()).args(["commit", "-q", "-m", "Initial commit"]));

        run(git(self.root.path())
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&bare));
        run(git(work.path()).args(["push", "-q"]).arg(&bare).arg("main"));
        format!("{}/{name}.git", self.server.origin())
    }
}

async fn serve(
    State(project_root): State<Arc<PathBuf>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match cgi::run(&project_root, &method, &uri, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), %uri, "git http-backend failed");
            let message = format!("failed to run git http-backend: {error:#}\n");
            (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }
    }
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
