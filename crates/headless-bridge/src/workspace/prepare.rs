//! Filling a run's workspace before its CLI starts, and emptying it of artifacts afterwards.
//!
//! [`Preparer`] clones the repository (its host's addresses checked and pinned for git, so a
//! name cannot be re-pointed in between; free space checked first; the operator's token or ssh
//! key installed for that host and deleted when the clone is done; submodules on request; the
//! size watched), then fetches and installs each tool (mirrors, cache, archives), then checks
//! the workspace's size once more. When the CLI has finished it keeps the declared artifacts.
//! Every failure is a [`PrepareError`] carrying the reason code the run ends with. Running the
//! CLI and recording the run are the engine's.

use std::path::Path;

use super::{SizeWatch, Workspace, disk_usage, free_bytes};
use crate::config::Config;
use crate::fetch::{FetchError, Fetcher, ToolSource};
use crate::git::{Checkout, CloneOptions, Git, GitAuth, GitError, SshAuth};
use crate::policy::UrlPolicy;
use crate::redact::Redactor;
use crate::run::{ReasonCode, RepoSpec, RunRecord, ToolSpec};

/// Why a workspace could not be prepared.
#[derive(Debug)]
pub struct PrepareError {
    /// The reason code the run ends with.
    pub reason: ReasonCode,
    pub message: String,
    /// Facts for the run record's `details` (digests, what a server answered).
    pub details: Option<serde_json::Value>,
}

impl PrepareError {
    fn new(reason: ReasonCode, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            details: None,
        }
    }
}

impl From<GitError> for PrepareError {
    fn from(err: GitError) -> Self {
        let reason = match err {
            GitError::AuthFailed { .. } | GitError::HostKeyRejected { .. } => {
                ReasonCode::RepoAuthFailed
            }
            GitError::DiskFull(_) => ReasonCode::WorkspaceDiskFull,
            _ => ReasonCode::RepoCloneFailed,
        };
        Self::new(reason, format!("failed to clone the repository: {err}"))
    }
}

impl From<FetchError> for PrepareError {
    fn from(err: FetchError) -> Self {
        let reason = match err {
            FetchError::Mismatch { .. } => ReasonCode::ChecksumMismatch,
            _ if err.is_local() => ReasonCode::WorkspaceError,
            _ => ReasonCode::DownloadFailed,
        };
        Self {
            details: err.details(),
            ..Self::new(reason, err.to_string())
        }
    }
}

/// Refuses an `ssh://` clone without the operator's key for its host. Without one, git's
/// default ssh would run with the bridge user's own keys, ssh config and known hosts, none of
/// which the operator meant for runs.
fn require_ssh_key(url: &url::Url, ssh: Option<&SshAuth>) -> Result<(), PrepareError> {
    if url.scheme() != "ssh" || ssh.is_some() {
        return Ok(());
    }
    let host = url.host_str().unwrap_or_default();
    Err(PrepareError::new(
        ReasonCode::RepoAuthFailed,
        format!(
            "failed to clone the repository: HB_GIT_CREDENTIALS_DIR holds no ssh key for \
             `{host}` (a file `{host}.ssh`)"
        ),
    ))
}

/// What preparing a workspace needs from the bridge.
pub struct Preparer<'a> {
    pub config: &'a Config,
    pub policy: &'a UrlPolicy,
    pub fetcher: &'a Fetcher,
}

impl Preparer<'_> {
    /// Clones `repo` into the work directory, or creates an empty one when there is none.
    pub async fn clone_repo(
        &self,
        repo: Option<&RepoSpec>,
        workspace: &Workspace,
        redactor: &mut Redactor,
        report: &mut (dyn FnMut(String) + Send),
    ) -> Result<Option<Checkout>, PrepareError> {
        let dirs = &workspace.dirs;
        let Some(repo) = repo else {
            std::fs::create_dir(&dirs.work).map_err(|e| {
                let message = format!("failed to create the work directory: {e}");
                PrepareError::new(ReasonCode::WorkspaceError, message)
            })?;
            return Ok(None);
        };
        let url = self.policy.check_repo(&repo.url).await.map_err(|e| {
            PrepareError::new(
                ReasonCode::RepoCloneFailed,
                format!("the repository URL {e}"),
            )
        })?;
        let pin = self.policy.pin(&url).await.map_err(|e| {
            PrepareError::new(
                ReasonCode::RepoCloneFailed,
                format!("the repository URL {e}"),
            )
        })?;
        self.check_free_space(workspace)?;
        let (auth, ssh) = self.credentials(&url, workspace, redactor)?;
        let options = CloneOptions {
            git_ref: repo.git_ref.as_deref(),
            submodules: repo.submodules.then_some(self.policy),
            size_watch: Some(SizeWatch {
                dir: workspace.root().to_owned(),
                limit: self.config.workspace.max_bytes,
                interval: None,
            }),
        };
        let cloned = Git::new(&dirs.home)
            .with_pin(pin)
            .with_auth(auth)
            .with_ssh(ssh)
            .clone(&url, options, &dirs.work)
            .await;
        // The credentials serve the clone only: the CLI never gets to read them.
        let _ = std::fs::remove_dir_all(workspace.root().join("secrets"));
        if let Err(GitError::DiskFull(_)) = &cloned {
            let _ = std::fs::remove_dir_all(&dirs.work);
        }

        let checkout = cloned?;
        report(format!("cloned {} at {}", repo.url, checkout.base_commit));
        for sub in &checkout.submodules {
            let how = if sub.full_fetch {
                "fetched whole"
            } else {
                "shallow"
            };
            report(format!("checked out submodule {} ({how})", sub.path));
        }
        Ok(Some(checkout))
    }

    /// The operator's token or ssh key for `url`'s host, installed in the workspace and
    /// added to the redactor.
    fn credentials(
        &self,
        url: &url::Url,
        workspace: &Workspace,
        redactor: &mut Redactor,
    ) -> Result<(Option<GitAuth>, Option<SshAuth>), PrepareError> {
        let dir = self.config.git_credentials_dir.as_deref();
        let failed = |what: &str, e: std::io::Error| {
            PrepareError::new(
                ReasonCode::WorkspaceError,
                format!("failed to prepare the {what}: {e}"),
            )
        };
        let helpers = self.config.data_dir.join("helpers");
        let auth = crate::git::auth::for_url(dir, url, &helpers, || workspace.secrets_dir())
            .map_err(|e| failed("git token", e))?;
        let ssh = crate::git::ssh::for_url(dir, url, &helpers, || workspace.secrets_dir())
            .map_err(|e| failed("ssh key", e))?;
        require_ssh_key(url, ssh.as_ref())?;
        redactor.extend(auth.iter().map(|a| a.secret().to_owned()));
        redactor.extend(ssh.iter().map(|s| s.secret().to_owned()));
        Ok((auth, ssh))
    }

    /// Refuses to start a clone on a disk that is nearly full.
    fn check_free_space(&self, workspace: &Workspace) -> Result<(), PrepareError> {
        let needed = self.config.workspace.min_free_bytes;
        match free_bytes(workspace.root()) {
            Ok(free) if free < needed => Err(PrepareError::new(
                ReasonCode::WorkspaceDiskFull,
                format!(
                    "only {free} bytes are free for workspaces; a clone needs at least {needed} \
                     (HB_WORKSPACE_MIN_FREE_BYTES)"
                ),
            )),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "failed to measure free disk space");
                Ok(())
            }
        }
    }

    /// Fetches each tool (or finds it in the cache) and installs it in the workspace.
    pub async fn fetch_tools(
        &self,
        tools: &[ToolSpec],
        workspace: &Workspace,
        report: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), PrepareError> {
        for tool in tools {
            let source = self.tool_source(tool).await?;
            let tool_dir = workspace.tool_dir(&tool.name);
            let archive = tool
                .archive_path
                .as_deref()
                .map(|inner| (inner, tool_dir.as_path()));
            let dest = workspace.dirs.bin.join(&tool.name);
            let fetched = self.fetcher.install(&source, &dest, archive).await?;
            let from = fetched.from.as_deref().unwrap_or("the cache");
            report(format!(
                "fetched tool {} ({} bytes, {}) from {from}",
                tool.name, fetched.size, fetched.digest
            ));
        }
        self.check_size(workspace)
    }

    /// The tool's URLs, each checked by the policy again: the request was checked when it
    /// came, but a host's addresses may have changed since.
    async fn tool_source(&self, tool: &ToolSpec) -> Result<ToolSource, PrepareError> {
        let mut urls = Vec::with_capacity(1 + tool.mirrors.len());
        for raw in std::iter::once(&tool.url).chain(&tool.mirrors) {
            let url = self.policy.check(raw).await.map_err(|e| {
                let message = format!("a URL of tool `{}` {e}", tool.name);
                PrepareError::new(ReasonCode::DownloadFailed, message)
            })?;
            urls.push(url);
        }
        Ok(ToolSource {
            name: tool.name.clone(),
            urls,
            sha256: Some(tool.sha256.clone()),
        })
    }

    /// Refuses to go on with a workspace that the clone and the tools made too large.
    fn check_size(&self, workspace: &Workspace) -> Result<(), PrepareError> {
        let limit = self.config.workspace.max_bytes;
        let used = disk_usage(workspace.root());
        if used <= limit {
            return Ok(());
        }
        Err(PrepareError::new(
            ReasonCode::WorkspaceDiskFull,
            format!(
                "the workspace takes {used} bytes with its tools, more than the limit of \
                 {limit} (HB_WORKSPACE_MAX_BYTES)"
            ),
        ))
    }

    /// Keeps the files the run declared, once the CLI has finished with `work`.
    pub fn keep_artifacts(
        &self,
        record: &mut RunRecord,
        work: &Path,
        redactor: &Redactor,
        account: &mut Vec<String>,
    ) {
        if record.spec.artifacts.is_empty() {
            return;
        }
        let store = crate::artifacts::store_dir(&self.config.data_dir, &record.id.to_string());
        let (kept, notes) = crate::artifacts::collect(
            work,
            &record.spec.artifacts,
            &store,
            self.config.workspace.artifact_max_bytes,
            redactor,
        );
        record.artifacts = kept;
        account.extend(notes);
    }
}
