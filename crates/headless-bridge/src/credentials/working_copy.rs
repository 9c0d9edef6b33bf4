//! The working copy of a login: the bridge's own private auth.json, shared by every run of the
//! login and kept across runs, so that tokens the CLI refreshes are not lost.
//!
//! ChatGPT refresh tokens are single-use and rotate. A run that gets a fresh copy of the
//! mounted Secret each time burns the login on its first refresh: the token endpoint rotates
//! the refresh token, the run's copy is thrown away with its workspace, and the next run
//! presents the old one ("refresh token was already used"). So:
//! - a run starts from the working copy, and whatever auth.json the CLI leaves behind becomes
//!   the new working copy (check-in), written atomically;
//! - the source is imported again only when its content changes (the operator rotated the
//!   Secret: the kubelet swaps its `..data` symlink), which a digest of it tells;
//! - one writer: runs of a ChatGPT login never overlap, so two runs can never refresh the same
//!   token. Runs of an API-key login, which never refreshes, run side by side.
//!
//! A login a person completes through the bridge (the login relay) is adopted the same way:
//! it becomes the working copy and stays in use until the source changes, even when there is
//! no source at all.
//!
//! With a [`WriteBack`], a refresh is also written into the Secret. When the kubelet then
//! swaps in that new content, the source has changed, but to a login the working copy has
//! already had (and may have refreshed again since): importing it would roll the working
//! copy back to a spent refresh token. So a source whose digest is one the bridge wrote is
//! taken as already imported.
//!
//! Layout, under `<data dir>/credentials/codex/` (0700): `auth.json` (0600),
//! `source.sha256`, the digest of the source content last imported or present at adoption
//! (`none` when a login was adopted without a source), and `written.sha256`, the digests of
//! the logins the bridge itself wrote back into the Secret.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::MutexGuard;

use super::home_template::{CopyError, HomeTemplate};
use super::write_back::WriteBack;
use super::{AuthMode, CredentialError, LoadedAuth};
use crate::config::CodexConfig;
use crate::digest::Sha256Digest;
use crate::run::ReasonCode;

/// How many hex characters of a digest health shows: enough to tell versions apart.
const DIGEST_PREFIX: usize = 12;
/// How many written-back digests are remembered: the kubelet shows a Secret's newest content
/// within a minute or two, long before this many refreshes happen.
const WRITTEN_KEPT: usize = 16;
/// What `source.sha256` holds for a login adopted while there was no source.
const NO_SOURCE: &str = "none";

/// The source auth.json as read.
struct Source {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// A login's private working copy and what happened to it.
pub struct WorkingCopy {
    dir: PathBuf,
    config: CodexConfig,
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Serialises the file work of concurrent runs (imports and check-ins).
    files: Mutex<()>,
    history: Mutex<History>,
    write_back: Option<WriteBack>,
    /// What each run's CODEX_HOME starts from, when templates are on.
    home_template: Option<HomeTemplate>,
}

/// What the bridge saw of the login; never holds a secret.
#[derive(Debug, Default, Clone)]
struct History {
    last_import: Option<OffsetDateTime>,
    last_refresh: Option<OffsetDateTime>,
    /// The latest run's verdict on the login: `None` when it authenticated.
    last_run: Option<(OffsetDateTime, Option<ReasonCode>)>,
}

/// Held by a run while it may refresh the login; dropping it lets the next run in.
pub struct WriterGuard<'a>(
    #[allow(dead_code, reason = "held for its Drop")] Option<MutexGuard<'a, ()>>,
);

impl WorkingCopy {
    /// The working copy of the login `config` names, kept under `data_dir`.
    pub fn new(data_dir: &Path, config: CodexConfig) -> Self {
        Self::at(data_dir.join("credentials").join("codex"), config)
    }

    /// The working copy of the login `config` names, kept in `dir`.
    pub fn at(dir: PathBuf, config: CodexConfig) -> Self {
        Self {
            dir,
            config,
            writer: Default::default(),
            files: Mutex::new(()),
            history: Mutex::new(History::default()),
            write_back: None,
            home_template: None,
        }
    }

    /// Where the login's source is, and how its runs call the CLI.
    pub fn config(&self) -> &CodexConfig {
        &self.config
    }

    /// Also writes each refresh back into a Kubernetes Secret.
    pub fn with_write_back(mut self, write_back: WriteBack) -> Self {
        self.write_back = Some(write_back);
        self
    }

    /// Starts each run's CODEX_HOME from a template of the CLI's first start (see
    /// [`HomeTemplate`]), kept beside the working copy; the CLI is started under `shim`
    /// to make it.
    pub fn with_home_template(mut self, shim: Option<PathBuf>) -> Self {
        self.home_template = Some(HomeTemplate::new(self.dir.join("home-template"), shim));
        self
    }

    /// Removes the home templates an earlier bridge made for this login, when templates are
    /// now off: they would never be used or cleaned up otherwise.
    pub fn remove_home_templates(&self) {
        let dir = self.dir.join("home-template");
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, path = %dir.display(), "failed to remove old Codex home templates");
        }
    }

    /// Fills a run's `codex_home`: the home template when one is ready, then the login `auth`
    /// and the config.toml. A template that fails its check is thrown away and the run starts
    /// in an empty home, as it would without one.
    pub async fn install(&self, auth: &LoadedAuth, codex_home: &Path) -> io::Result<()> {
        let toml = super::read_config_toml(&self.config)?;
        let template = self.home_template.clone();
        let made = template
            .as_ref()
            .and_then(|template| template.ready(&self.config, toml.as_deref()));
        let (auth_bytes, home) = (auth.bytes().to_vec(), codex_home.to_owned());
        // Everything below finishes even if the run stops waiting for it, so a template that
        // failed its check is always thrown away.
        tokio::task::spawn_blocking(move || {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&home)?;
            if let (Some(made), Some(template)) = (&made, &template)
                && let Err(problem) = made.fill(&home)
            {
                if let CopyError::Changed(_) = problem {
                    tracing::warn!(%problem, "the Codex home template failed its check; the next run makes it again");
                    template.discard(made);
                } else {
                    tracing::warn!(%problem, "failed to copy the Codex home template; this run starts in an empty home");
                }
                // Start over in an empty home: half a template is worse than none.
                crate::workspace::remove_tree(&home)?;
                fs::DirBuilder::new().mode(0o700).create(&home)?;
            }
            super::install_files(&auth_bytes, toml.as_deref(), &home)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// The login a run should use: the working copy, after importing the source if it changed.
    pub fn checkout(&self) -> Result<LoadedAuth, CredentialError> {
        let working = self.dir.join("auth.json");
        let _files = self.lock_files();
        let source = match self.read_source() {
            Ok(source) => source,
            Err(e) => return self.adopted_without_source(e),
        };
        // Judge the source first: a broken Secret must say so, not hide behind an old copy.
        super::parse(source.path.clone(), source.bytes.clone())?;

        let digest = Sha256Digest::of(&source.bytes);
        if self.recorded_source().as_deref() != Some(digest.hex()) || !working.exists() {
            if working.exists() && self.wrote(&digest) {
                // The Secret now shows a login this bridge wrote back: nothing new to import.
                write_private_atomically(&self.dir.join("source.sha256"), digest.hex().as_bytes())
                    .map_err(|e| self.unwritable(e))?;
            } else {
                self.import(&source.bytes, &digest)
                    .map_err(|e| self.unwritable(e))?;
            }
        }
        let bytes = fs::read(&working).map_err(|e| self.unwritable(e))?;
        super::parse(working, bytes)
    }

    /// The login as a run would get it now, without importing or writing anything: the working
    /// copy while it is current with the source, else the source.
    pub fn current(&self) -> Result<LoadedAuth, CredentialError> {
        let working = self.dir.join("auth.json");
        let source = match self.read_source() {
            Ok(source) => source,
            Err(e) => return self.adopted_without_source(e),
        };
        let digest = Sha256Digest::of(&source.bytes);
        if (self.recorded_source().as_deref() == Some(digest.hex()) || self.wrote(&digest))
            && let Ok(bytes) = fs::read(&working)
        {
            return super::parse(working, bytes);
        }
        super::parse(source.path, source.bytes)
    }

    /// Makes `bytes`, a login a person has just completed through the bridge, the working
    /// copy. It is used until the source changes; with no source configured or mounted, until
    /// a source appears.
    pub fn adopt(&self, bytes: &[u8]) -> io::Result<()> {
        let _files = self.lock_files();
        let marker = match self.read_source() {
            Ok(source) => Sha256Digest::of(&source.bytes).hex().to_owned(),
            Err(_) => NO_SOURCE.to_owned(),
        };
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        write_private_atomically(&self.dir.join("auth.json"), bytes)?;
        write_private_atomically(&self.dir.join("source.sha256"), marker.as_bytes())?;
        let mut history = self.lock_history();
        history.last_import = Some(OffsetDateTime::now_utc());
        history.last_run = None;
        tracing::info!("adopted a login completed through the bridge as the working copy");
        Ok(())
    }

    /// The source as it is now.
    fn read_source(&self) -> Result<Source, CredentialError> {
        let path = self
            .config
            .auth_path()
            .ok_or(CredentialError::NotConfigured)?;
        let bytes = super::read_source(&path)?;
        Ok(Source { path, bytes })
    }

    /// What `source.sha256` holds, if anything.
    fn recorded_source(&self) -> Option<String> {
        fs::read_to_string(self.dir.join("source.sha256"))
            .ok()
            .map(|text| text.trim().to_owned())
    }

    /// The working copy when the source is absent (`err` says how) and the working copy was
    /// adopted without one; else `err`.
    fn adopted_without_source(&self, err: CredentialError) -> Result<LoadedAuth, CredentialError> {
        let absent = matches!(
            err,
            CredentialError::NotConfigured | CredentialError::Missing { .. }
        );
        let working = self.dir.join("auth.json");
        if absent
            && self.recorded_source().as_deref() == Some(NO_SOURCE)
            && let Ok(bytes) = fs::read(&working)
        {
            return super::parse(working, bytes);
        }
        Err(err)
    }

    /// Waits until this run may use `auth`: at once for an API key, after any other run of a
    /// ChatGPT login has finished otherwise.
    pub async fn writer(&self, auth: &LoadedAuth) -> WriterGuard<'_> {
        match auth.facts.auth_mode {
            AuthMode::ApiKey => WriterGuard(None),
            AuthMode::Chatgpt => WriterGuard(Some(self.writer.lock().await)),
        }
    }

    /// [`Self::writer`] for a holder that outlives a borrow of the working copy (a session's
    /// task): `None` for an API key, else the writer once every other holder is done.
    pub async fn writer_owned(
        &self,
        auth: &LoadedAuth,
    ) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match auth.facts.auth_mode {
            AuthMode::ApiKey => None,
            AuthMode::Chatgpt => Some(self.writer.clone().lock_owned().await),
        }
    }

    /// Keeps the auth.json a run's CLI left at `run_auth` as the new working copy if the CLI
    /// changed it (it refreshed its tokens). Returns whether it did.
    pub fn check_in(&self, run_auth: &Path, given: &LoadedAuth) -> io::Result<bool> {
        let Ok(left) = fs::read(run_auth) else {
            return Ok(false);
        };
        if left == given.bytes() {
            return Ok(false);
        }
        if super::parse(run_auth.to_owned(), left.clone()).is_err() {
            tracing::warn!(
                "the CLI left an auth.json that does not parse; keeping the previous working copy"
            );
            return Ok(false);
        }
        write_atomically(&self.dir.join("auth.json"), &left, &self.lock_files())?;
        self.lock_history().last_refresh = Some(OffsetDateTime::now_utc());
        tracing::info!("the CLI refreshed its login; the working copy now holds the new tokens");
        Ok(true)
    }

    /// Writes the working copy into the Secret, when write-back is configured. Call it after a
    /// check-in that took in a refresh; a failure is logged and shown by health, and the
    /// working copy keeps the tokens whatever happens.
    pub async fn write_back(&self) {
        let Some(write_back) = &self.write_back else {
            return;
        };
        let bytes = {
            let _files = self.lock_files();
            fs::read(self.dir.join("auth.json"))
        };
        let Ok(bytes) = bytes else {
            tracing::error!("failed to read the working copy for write-back");
            return;
        };
        if write_back.write(&bytes).await.is_ok() {
            let digest = Sha256Digest::of(&bytes);
            if let Err(e) = self.remember_written(&digest) {
                tracing::warn!(error = %e, "failed to note a written-back login; the next Secret update may be imported again");
            }
        }
    }

    /// The home template's state for health, if templates are on.
    pub fn home_template_status(&self) -> Option<Value> {
        self.home_template.as_ref().map(HomeTemplate::status)
    }

    /// The write-back's state for health, if write-back is configured.
    pub fn write_back_status(&self) -> Option<Value> {
        self.write_back.as_ref().map(WriteBack::status)
    }

    /// Records how the latest run fared with the login: `None` when it authenticated, else the
    /// credential reason it failed with.
    pub fn record_run(&self, reason: Option<ReasonCode>) {
        self.lock_history().last_run = Some((OffsetDateTime::now_utc(), reason));
    }

    /// Facts for the deep health check: versions by digest and time, never content.
    pub fn facts(&self) -> Value {
        let history = self.lock_history().clone();
        let version = |path: PathBuf| {
            let bytes = fs::read(&path).ok()?;
            let modified = fs::metadata(&path)
                .ok()?
                .modified()
                .ok()
                .map(OffsetDateTime::from);
            Some(json!({
                "sha256_prefix": &Sha256Digest::of(&bytes).hex()[..DIGEST_PREFIX],
                "modified_at": modified.map(rfc3339),
            }))
        };
        json!({
            "source": self.config.auth_path().and_then(version),
            "working_copy": version(self.dir.join("auth.json")),
            "last_import": history.last_import.map(rfc3339),
            "last_refresh": history.last_refresh.map(rfc3339),
            "last_run": history.last_run.map(|(at, reason)| json!({"at": rfc3339(at), "reason": reason})),
        })
    }

    /// The reason the latest run failed on this login, if it did: a login a run found dead
    /// stays dead until a person logs in again and the Secret changes.
    pub fn dead_reason(&self) -> Option<ReasonCode> {
        let reason = self
            .lock_history()
            .last_run
            .and_then(|(_, reason)| reason)?;
        // A changed Secret is a new login that no run has judged yet.
        let now = match self.config.auth_path().and_then(|p| fs::read(p).ok()) {
            Some(source) => Sha256Digest::of(&source),
            None => return (self.recorded_source()? == NO_SOURCE).then_some(reason),
        };
        (self.recorded_source()? == now.hex() || self.wrote(&now)).then_some(reason)
    }

    /// Whether `digest` is that of a login this bridge wrote back into the Secret.
    fn wrote(&self, digest: &Sha256Digest) -> bool {
        fs::read_to_string(self.dir.join("written.sha256"))
            .is_ok_and(|text| text.lines().any(|line| line.trim() == digest.hex()))
    }

    fn remember_written(&self, digest: &Sha256Digest) -> io::Result<()> {
        let files = self.lock_files();
        let path = self.dir.join("written.sha256");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines.push(digest.hex());
        let keep = &lines[lines.len().saturating_sub(WRITTEN_KEPT)..];
        write_atomically(&path, (keep.join("\n") + "\n").as_bytes(), &files)
    }

    fn import(&self, source: &[u8], digest: &Sha256Digest) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        write_private_atomically(&self.dir.join("auth.json"), source)?;
        write_private_atomically(&self.dir.join("source.sha256"), digest.hex().as_bytes())?;
        let mut history = self.lock_history();
        history.last_import = Some(OffsetDateTime::now_utc());
        // A new login deserves a new verdict.
        history.last_run = None;
        tracing::info!(
            sha256_prefix = &digest.hex()[..DIGEST_PREFIX],
            "imported the login from its source"
        );
        Ok(())
    }

    fn unwritable(&self, err: io::Error) -> CredentialError {
        CredentialError::WorkingCopy {
            dir: self.dir.clone(),
            reason: err.to_string(),
        }
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, ()> {
        self.files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// [`write_private_atomically`] for a caller that shows it holds the file lock.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    _files: &std::sync::MutexGuard<'_, ()>,
) -> io::Result<()> {
    write_private_atomically(path, bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`, so
/// a crash leaves either the old file or the new one, never half of either. Callers hold the
/// file lock, since the temporary name is fixed.
fn write_private_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const KEY_LOGIN: &str = r#"{"auth_mode":"apikey","OPENAI_API_KEY":"sk-test-0123456789"}"#;
    const CHATGPT_V1: &str =
        r#"{"auth_mode":"chatgpt","tokens":{"access_token":"a1","refresh_token":"rt_1"}}"#;
    const CHATGPT_V2: &str =
        r#"{"auth_mode":"chatgpt","tokens":{"access_token":"a2","refresh_token":"rt_2"}}"#;

    fn setup(login: &str) -> (tempfile::TempDir, WorkingCopy) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("secret")).unwrap();
        fs::write(dir.path().join("secret/auth.json"), login).unwrap();
        let config = CodexConfig {
            bin: "codex".into(),
            dir: Some(dir.path().join("secret")),
            auth_file: None,
            bypass_sandbox: true,
        };
        let copy = WorkingCopy::new(&dir.path().join("data"), config);
        (dir, copy)
    }

    #[test]
    fn a_refreshed_login_is_kept_for_the_next_run() {
        let (dir, copy) = setup(CHATGPT_V1);
        let first = copy.checkout().unwrap();
        let run_auth = dir.path().join("run-auth.json");
        fs::write(&run_auth, CHATGPT_V2).unwrap();

        assert!(copy.check_in(&run_auth, &first).unwrap());

        assert_eq!(
            copy.checkout().unwrap().bytes(),
            CHATGPT_V2.as_bytes(),
            "the next run gets the rotated tokens"
        );
        let mode = fs::metadata(dir.path().join("data/credentials/codex/auth.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(copy.facts()["last_refresh"].is_string());
    }

    #[test]
    fn an_unchanged_or_broken_run_copy_changes_nothing() {
        let (dir, copy) = setup(CHATGPT_V1);
        let first = copy.checkout().unwrap();
        let run_auth = dir.path().join("run-auth.json");
        fs::write(&run_auth, CHATGPT_V1).unwrap();
        assert!(!copy.check_in(&run_auth, &first).unwrap());
        fs::write(&run_auth, "{half a file").unwrap();
        assert!(!copy.check_in(&run_auth, &first).unwrap());
        assert_eq!(copy.checkout().unwrap().bytes(), CHATGPT_V1.as_bytes());
    }

    #[test]
    fn a_rotated_source_replaces_the_working_copy() {
        let (dir, copy) = setup(CHATGPT_V1);
        let first = copy.checkout().unwrap();
        let run_auth = dir.path().join("run-auth.json");
        fs::write(&run_auth, CHATGPT_V2).unwrap();
        copy.check_in(&run_auth, &first).unwrap();
        copy.record_run(Some(ReasonCode::CredentialsRefreshReused));

        // The kubelet replaces the Secret's files when the operator updates it.
        let rotated =
            r#"{"auth_mode":"chatgpt","tokens":{"access_token":"a9","refresh_token":"rt_9"}}"#;
        fs::write(dir.path().join("secret/auth.json"), rotated).unwrap();

        assert_eq!(copy.checkout().unwrap().bytes(), rotated.as_bytes());
        assert_eq!(copy.dead_reason(), None, "a new login gets a new verdict");
    }

    #[test]
    fn a_secret_showing_a_login_the_bridge_wrote_back_is_not_imported_again() {
        let (dir, copy) = setup(CHATGPT_V1);
        let first = copy.checkout().unwrap();
        let run_auth = dir.path().join("run-auth.json");
        fs::write(&run_auth, CHATGPT_V2).unwrap();
        copy.check_in(&run_auth, &first).unwrap();
        // V2 was written back to the Secret; a later run refreshed again to V3.
        copy.remember_written(&Sha256Digest::of(CHATGPT_V2.as_bytes()))
            .unwrap();
        let second = copy.checkout().unwrap();
        let v3 = r#"{"auth_mode":"chatgpt","tokens":{"access_token":"a3","refresh_token":"rt_3"}}"#;
        fs::write(&run_auth, v3).unwrap();
        copy.check_in(&run_auth, &second).unwrap();

        // Only now does the kubelet show the Secret's V2: importing it would bring back rt_2,
        // which the refresh to V3 has spent.
        fs::write(dir.path().join("secret/auth.json"), CHATGPT_V2).unwrap();
        assert_eq!(copy.checkout().unwrap().bytes(), v3.as_bytes());
        assert_eq!(copy.current().unwrap().bytes(), v3.as_bytes());
    }

    #[test]
    fn a_broken_source_is_reported_even_with_a_good_working_copy() {
        let (dir, copy) = setup(KEY_LOGIN);
        copy.checkout().unwrap();
        fs::write(dir.path().join("secret/auth.json"), "").unwrap();
        assert!(matches!(
            copy.checkout(),
            Err(CredentialError::Empty { .. })
        ));
    }

    #[tokio::test]
    async fn runs_of_a_chatgpt_login_never_overlap_and_api_key_runs_do() {
        let (_dir, copy) = setup(CHATGPT_V1);
        let copy = Arc::new(copy);
        let auth = copy.checkout().unwrap();
        let first = copy.writer(&auth).await;
        let second =
            tokio::time::timeout(std::time::Duration::from_millis(50), copy.writer(&auth)).await;
        assert!(
            second.is_err(),
            "a second ChatGPT run must wait for the first"
        );
        drop(first);
        let _second = copy.writer(&auth).await;

        let (_dir, keys) = setup(KEY_LOGIN);
        let key_auth = keys.checkout().unwrap();
        let _a = keys.writer(&key_auth).await;
        let _b = keys.writer(&key_auth).await;
    }
}
