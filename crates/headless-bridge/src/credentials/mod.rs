//! The Codex login: reading it from its source, judging it, and giving each run a private copy.
//!
//! The source is a directory the operator controls (in a pod, a mounted Secret) holding
//! `auth.json` and optionally `config.toml`. The bridge only reads it. Every run gets the files
//! copied into a CODEX_HOME of its own, owner-only, because the CLI insists on writing there
//! and must never see, or scribble on, the source. Judging a login never calls the network and
//! never shows a secret: facts come from the file and the access token's own claims.
//!
//! Between the source and the runs sits a [`WorkingCopy`]: the bridge's own private copy of
//! the login, which keeps the tokens the CLI refreshes during a run.

pub mod home_template;
pub mod logins;
pub mod relay;
mod working_copy;
pub mod write_back;

pub use home_template::HomeTemplate;
pub use logins::Logins;
pub use relay::LoginRelay;
pub use working_copy::{WorkingCopy, WriterGuard};

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::CodexConfig;
use crate::run::ReasonCode;

/// Why the configured login cannot be used. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(
        "no Codex credentials are configured: set HB_CODEX_DIR to the directory holding auth.json"
    )]
    NotConfigured,
    #[error(
        "{path} does not exist: log in with `codex login` and mount the resulting auth.json there"
    )]
    Missing { path: PathBuf },
    #[error(
        "{path} is a directory, not a file: mount the Secret as a directory and point HB_CODEX_DIR at it"
    )]
    IsDirectory { path: PathBuf },
    #[error(
        "failed to read {path} ({source}); it is owned by uid {owner} with mode {mode:o} and the \
         bridge runs as uid {uid}: set the pod's fsGroup or the Secret's defaultMode so it can read it"
    )]
    Unreadable {
        path: PathBuf,
        owner: u32,
        mode: u32,
        uid: u32,
        #[source]
        source: io::Error,
    },
    #[error("{path} is empty: copy the auth.json written by `codex login`")]
    Empty { path: PathBuf },
    #[error("{path} is not valid JSON ({reason}): copy the auth.json written by `codex login`")]
    NotJson { path: PathBuf, reason: String },
    #[error("{path} holds neither an API key nor ChatGPT tokens: log in again with `codex login`")]
    NoCredential { path: PathBuf },
    #[error(
        "failed to keep the working copy of the login in {dir} ({reason}): HB_DATA_DIR must be writable"
    )]
    WorkingCopy { dir: PathBuf, reason: String },
}

impl CredentialError {
    /// The reason code a run that needed this login ends with.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::WorkingCopy { .. } => ReasonCode::WorkspaceError,
            Self::NotConfigured | Self::Missing { .. } | Self::Empty { .. } => {
                ReasonCode::CredentialsMissing
            }
            _ => ReasonCode::CredentialsInvalid,
        }
    }
}

/// How the login authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    ApiKey,
    Chatgpt,
}

/// What can be told about a login without using it. Never holds a secret.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialFacts {
    pub auth_mode: AuthMode,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub access_token_expires_at: Option<OffsetDateTime>,
    pub refresh_token_present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<String>,
}

impl CredentialFacts {
    /// Whether a run could authenticate with this login now: an API key, or ChatGPT tokens whose
    /// access token is still valid or can be refreshed.
    pub fn usable_at(&self, now: OffsetDateTime) -> bool {
        match self.auth_mode {
            AuthMode::ApiKey => true,
            AuthMode::Chatgpt => {
                self.refresh_token_present
                    || self.access_token_expires_at.is_some_and(|exp| exp > now)
            }
        }
    }
}

/// A login read from its source.
#[derive(Clone)]
pub struct LoadedAuth {
    pub path: PathBuf,
    bytes: Vec<u8>,
    secrets: Vec<String>,
    pub facts: CredentialFacts,
}

impl std::fmt::Debug for LoadedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAuth")
            .field("path", &self.path)
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

impl LoadedAuth {
    /// The auth.json bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The secret values in this login, for redaction.
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }
}

#[derive(Deserialize)]
struct AuthJson {
    #[serde(default)]
    auth_mode: Option<String>,
    #[serde(default, rename = "OPENAI_API_KEY")]
    api_key: Option<String>,
    #[serde(default)]
    tokens: Option<Tokens>,
    #[serde(default)]
    last_refresh: Option<String>,
}

#[derive(Deserialize)]
struct Tokens {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

/// Reads and judges the configured auth.json.
pub fn load(config: &CodexConfig) -> Result<LoadedAuth, CredentialError> {
    let path = config.auth_path().ok_or(CredentialError::NotConfigured)?;
    let bytes = read_source(&path)?;
    parse(path, bytes)
}

/// Judges the auth.json `bytes` read from `path`.
pub fn parse(path: PathBuf, bytes: Vec<u8>) -> Result<LoadedAuth, CredentialError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(CredentialError::Empty { path });
    }
    let auth: AuthJson = serde_json::from_slice(&bytes).map_err(|e| CredentialError::NotJson {
        path: path.clone(),
        reason: e.to_string(),
    })?;

    let api_key = auth.api_key.filter(|k| !k.trim().is_empty());
    let tokens = auth.tokens.unwrap_or(Tokens {
        id_token: None,
        access_token: None,
        refresh_token: None,
    });
    let chatgpt = tokens.access_token.is_some() || tokens.refresh_token.is_some();
    let mode = match (auth.auth_mode.as_deref(), &api_key, chatgpt) {
        (Some("apikey"), Some(_), _) | (None, Some(_), false) => AuthMode::ApiKey,
        (Some("chatgpt") | None, _, true) => AuthMode::Chatgpt,
        _ => return Err(CredentialError::NoCredential { path }),
    };

    let facts = CredentialFacts {
        auth_mode: mode,
        access_token_expires_at: tokens.access_token.as_deref().and_then(jwt_expiry),
        refresh_token_present: tokens
            .refresh_token
            .as_deref()
            .is_some_and(|t| !t.is_empty()),
        last_refresh: auth.last_refresh,
    };
    let secrets = [
        api_key,
        tokens.id_token,
        tokens.access_token,
        tokens.refresh_token,
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(LoadedAuth {
        path,
        bytes,
        secrets,
        facts,
    })
}

/// The secret values in an auth.json at `path` (an API key, tokens), or none if it cannot be
/// read. Used on a run's private copy after the CLI may have refreshed it.
pub fn secrets_in(path: &Path) -> Vec<String> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    let Ok(auth) = serde_json::from_slice::<AuthJson>(&bytes) else {
        return Vec::new();
    };
    let tokens = auth.tokens.unwrap_or(Tokens {
        id_token: None,
        access_token: None,
        refresh_token: None,
    });
    [
        auth.api_key,
        tokens.id_token,
        tokens.access_token,
        tokens.refresh_token,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The login's config.toml, if it has one.
pub(crate) fn read_config_toml(config: &CodexConfig) -> io::Result<Option<Vec<u8>>> {
    match config.config_toml_path().filter(|p| p.is_file()) {
        Some(path) => fs::read(path).map(Some),
        None => Ok(None),
    }
}

/// Writes the login `auth` and the config.toml `toml` into `codex_home`, creating it 0700;
/// files 0600.
pub(crate) fn install_files(auth: &[u8], toml: Option<&[u8]>, codex_home: &Path) -> io::Result<()> {
    fs::create_dir_all(codex_home)?;
    fs::set_permissions(codex_home, fs::Permissions::from_mode(0o700))?;
    write_private(&codex_home.join("auth.json"), auth)?;
    if let Some(toml) = toml {
        write_private(&codex_home.join("config.toml"), toml)?;
    }
    Ok(())
}

/// Reads the source auth.json, with errors that say how to fix the pod spec.
pub fn read_source(path: &Path) -> Result<Vec<u8>, CredentialError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CredentialError::Missing {
                path: path.to_owned(),
            });
        }
        Err(source) => return Err(unreadable(path, source)),
    };
    if meta.is_dir() {
        return Err(CredentialError::IsDirectory {
            path: path.to_owned(),
        });
    }
    fs::read(path).map_err(|source| unreadable(path, source))
}

fn unreadable(path: &Path, source: io::Error) -> CredentialError {
    use std::os::unix::fs::MetadataExt as _;
    let (owner, mode) = fs::metadata(path)
        .map(|m| (m.uid(), m.mode() & 0o7777))
        .unwrap_or((u32::MAX, 0));
    CredentialError::Unreadable {
        path: path.to_owned(),
        owner,
        mode,
        uid: nix::unistd::getuid().as_raw(),
        source,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
}

/// The `exp` claim of a JWT, read without verifying the signature: enough to know when the
/// CLI will want to refresh, which is all the bridge needs it for.
fn jwt_expiry(token: &str) -> Option<OffsetDateTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    OffsetDateTime::from_unix_timestamp(claims.get("exp")?.as_i64()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: i64) -> String {
        let enc = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.sig",
            enc(serde_json::json!({"alg": "none"})),
            enc(serde_json::json!({"exp": exp}))
        )
    }

    fn codex_dir_with(auth: &str) -> (tempfile::TempDir, CodexConfig) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("auth.json"), auth).unwrap();
        let config = CodexConfig {
            bin: "codex".into(),
            dir: Some(dir.path().to_owned()),
            auth_file: None,
            bypass_sandbox: true,
        };
        (dir, config)
    }

    #[test]
    fn an_api_key_login_is_usable_and_its_key_is_a_secret() {
        let (_dir, config) =
            codex_dir_with(r#"{"auth_mode":"apikey","OPENAI_API_KEY":"sk-test-123456789"}"#);
        let auth = load(&config).unwrap();
        assert_eq!(auth.facts.auth_mode, AuthMode::ApiKey);
        assert!(auth.facts.usable_at(OffsetDateTime::now_utc()));
        assert_eq!(auth.secrets(), ["sk-test-123456789"]);
    }

    #[test]
    fn chatgpt_expiry_comes_from_the_access_token() {
        let exp = 2_000_000_000;
        let auth = format!(
            r#"{{"auth_mode":"chatgpt","tokens":{{"id_token":"{}","access_token":"{}","refresh_token":""}}}}"#,
            jwt(1),
            jwt(exp)
        );
        let (_dir, config) = codex_dir_with(&auth);
        let facts = load(&config).unwrap().facts;
        assert_eq!(facts.access_token_expires_at.unwrap().unix_timestamp(), exp);
        assert!(!facts.refresh_token_present);
        let after = OffsetDateTime::from_unix_timestamp(exp + 1).unwrap();
        assert!(!facts.usable_at(after), "expired and no refresh token");
    }

    #[test]
    fn bad_sources_say_what_is_wrong() {
        let (_dir, config) = codex_dir_with("");
        assert!(matches!(load(&config), Err(CredentialError::Empty { .. })));
        let (_dir, config) = codex_dir_with("{not json");
        assert!(matches!(
            load(&config),
            Err(CredentialError::NotJson { .. })
        ));
        let (_dir, config) = codex_dir_with(r#"{"auth_mode":"apikey"}"#);
        assert!(matches!(
            load(&config),
            Err(CredentialError::NoCredential { .. })
        ));
        let (dir, config) = codex_dir_with("{}");
        fs::remove_file(dir.path().join("auth.json")).unwrap();
        fs::create_dir(dir.path().join("auth.json")).unwrap();
        assert!(matches!(
            load(&config),
            Err(CredentialError::IsDirectory { .. })
        ));
    }

    #[test]
    fn installed_copies_are_owner_only() {
        let (dir, config) = codex_dir_with(r#"{"OPENAI_API_KEY":"sk-test-123456789"}"#);
        fs::write(dir.path().join("config.toml"), "model = \"x\"\n").unwrap();
        let home = tempfile::tempdir().unwrap();
        let codex_home = home.path().join("codex");
        let toml = read_config_toml(&config).unwrap();
        install_files(load(&config).unwrap().bytes(), toml.as_deref(), &codex_home).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&codex_home), 0o700);
        assert_eq!(mode(&codex_home.join("auth.json")), 0o600);
        assert_eq!(mode(&codex_home.join("config.toml")), 0o600);
    }
}
