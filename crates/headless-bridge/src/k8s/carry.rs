//! What a run carries into its pod besides the run itself: the login and keys it needs, and
//! nothing else.
//!
//! Everything here travels as keys of the run's own Secret (`job.rs`: owned by the Job,
//! deleted with it, mounted read-only at [`super::job::RUN_DIR`]), never in the Job's spec, an
//! environment value or argv. The bridge decides what goes in; the worker puts each piece
//! where the local pipeline looks for it, so preparing the run is the same code either way:
//! - a Codex run: the bridge's working copy of the login (`auth.json`) and its optional
//!   `config.toml`; the Secret's mount is the worker's `HB_CODEX_DIR`;
//! - a profile run: the profile as the bridge has it (`adapter.json`: a built-in with the
//!   operator's settings applied, or a profile mounted only in the bridge), each secret source
//!   renamed to the key holding its bytes (`profile-secret-<n>`), which the worker reads from
//!   wherever the Secret is mounted. Only that profile's secrets
//!   are read. An optional secret that is absent stays absent; a required one that is missing
//!   fails the run on the bridge with the local run's reason code, before any Job exists. The
//!   worker's pipeline then fills the private HOME as a local run does. A profile's HOME files
//!   are fresh copies of its Secret at every run, locally too, so a CLI that rewrites one
//!   leaves nothing to bring back;
//! - a repository on a host the operator gave a credential for (`HB_GIT_CREDENTIALS_DIR`):
//!   that host's token (`git-token`), or its ssh key and `known_hosts` (`git-ssh-key`,
//!   `git-known-hosts`), and no other host's. The worker lays them out as a one-host
//!   credentials directory ([`lay_out_git`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use url::Url;

use crate::adapter::prepare::{PrepareError, check_alternatives, read_secret};
use crate::adapter::profile::Profile;
use crate::git::{auth, ssh};

/// The Codex login's key, and the key of its optional configuration.
pub const CODEX_AUTH_KEY: &str = "auth.json";
pub const CODEX_CONFIG_KEY: &str = "config.toml";
/// The profile a profile run uses, as JSON.
pub const ADAPTER_KEY: &str = "adapter.json";
/// The prefix of the keys holding a profile's secrets, numbered in the profile's order.
const PROFILE_SECRET_PREFIX: &str = "profile-secret-";
/// The keys of a repository host's credentials.
const GIT_TOKEN_KEY: &str = "git-token";
const GIT_SSH_KEY_KEY: &str = "git-ssh-key";
const GIT_KNOWN_HOSTS_KEY: &str = "git-known-hosts";

/// Secret keys and their bytes, for the run's Secret. `Debug` shows the keys only.
#[derive(Default)]
pub struct Carried {
    entries: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.entries.keys()).finish()
    }
}

impl Carried {
    /// The keys and their bytes.
    pub fn into_entries(self) -> BTreeMap<String, Vec<u8>> {
        self.entries
    }

    /// The secret values carried, for the bridge's redactor: a profile's secrets and the git
    /// credential, as a local run would mask them. The Codex login's are the login's own
    /// ([`crate::credentials::LoadedAuth::secrets`]); the profile and `config.toml` are no
    /// secrets, and neither are known hosts.
    pub fn secrets(&self) -> Vec<String> {
        const NOT_SECRETS: [&str; 4] = [
            ADAPTER_KEY,
            CODEX_AUTH_KEY,
            CODEX_CONFIG_KEY,
            GIT_KNOWN_HOSTS_KEY,
        ];
        self.entries
            .iter()
            .filter(|(key, _)| !NOT_SECRETS.contains(&key.as_str()))
            .flat_map(|(_, bytes)| crate::adapter::prepare::secret_strings(bytes))
            .collect()
    }

    /// The keys carried, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Carries the Codex login as the bridge's working copy holds it.
    pub fn codex_login(&mut self, auth: &[u8], config_toml: Option<Vec<u8>>) {
        self.entries
            .insert(CODEX_AUTH_KEY.to_owned(), auth.to_vec());
        if let Some(config_toml) = config_toml {
            self.entries
                .insert(CODEX_CONFIG_KEY.to_owned(), config_toml);
        }
    }

    /// Carries `profile` with the secrets it names, each source renamed to its key.
    pub fn profile(&mut self, profile: &Profile) -> Result<(), PrepareError> {
        let mut carried = profile.clone();
        let mut next = 0;
        let mut carry = |file: &Path, optional: bool| -> Result<PathBuf, PrepareError> {
            let key = format!("{PROFILE_SECRET_PREFIX}{next}");
            next += 1;
            let path = profile.secret_path(file);
            if let Some(bytes) = read_secret(&profile.name, &path, optional)? {
                self.entries.insert(key.clone(), bytes);
            }
            Ok(PathBuf::from(key))
        };
        for source in carried.secret_env.values_mut() {
            source.file = carry(&source.file, source.optional)?;
        }
        for file in &mut carried.files {
            if let Some(source) = &mut file.source {
                *source = carry(source, file.optional)?;
            }
        }
        check_alternatives(profile)?;
        // The bridge's secrets directory means nothing in a pod; the worker sets its own.
        carried.secrets_dir = None;
        let json = serde_json::to_vec(&carried).expect("a profile serializes");
        self.entries.insert(ADAPTER_KEY.to_owned(), json);
        Ok(())
    }

    /// Carries the operator's credential for `url`'s host from `credentials_dir`, if any.
    pub fn git(&mut self, credentials_dir: &Path, url: &Url) -> io::Result<()> {
        if url.scheme() != "ssh" {
            if let Some(token) = auth::find_token(credentials_dir, url)? {
                self.entries
                    .insert(GIT_TOKEN_KEY.to_owned(), token.into_bytes());
            }
            return Ok(());
        }
        let Some(key) = ssh::find_key(credentials_dir, url)? else {
            return Ok(());
        };
        self.entries
            .insert(GIT_SSH_KEY_KEY.to_owned(), key.into_bytes());
        match std::fs::read(credentials_dir.join(ssh::KNOWN_HOSTS)) {
            Ok(known) => {
                self.entries.insert(GIT_KNOWN_HOSTS_KEY.to_owned(), known);
            }
            // Without one no host key is trusted, in the pod as in the bridge.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Why the worker could not take what its run carried.
#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the adapter profile in {path} does not parse")]
    Profile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to lay out the repository's credentials in {path}")]
    Git {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The profile named `name` that the run's Secret mounted at `run_dir` carries, if it carries
/// one, reading its secrets from there.
pub fn carried_profile(run_dir: &Path, name: &str) -> Result<Option<Profile>, CarryError> {
    let path = run_dir.join(ADAPTER_KEY);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CarryError::Read { path, source }),
    };
    let mut profile: Profile =
        serde_json::from_slice(&bytes).map_err(|source| CarryError::Profile { path, source })?;
    profile.name = name.to_owned();
    profile.origin = format!("the run's Secret ({ADAPTER_KEY})");
    profile.secrets_dir = Some(run_dir.to_owned());
    Ok(Some(profile))
}

/// Lays out the credential the run's Secret in `run_dir` carries for `url`'s host in `dest`,
/// as `HB_GIT_CREDENTIALS_DIR` would hold it; `None` when it carries none.
pub fn lay_out_git(run_dir: &Path, url: &Url, dest: &Path) -> Result<Option<PathBuf>, CarryError> {
    let read = |key: &str| {
        let path = run_dir.join(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CarryError::Read { path, source }),
        }
    };
    let host = url.host_str().unwrap_or_default();
    let mut files = Vec::new();
    if let (Some(token), Some(name)) = (read(GIT_TOKEN_KEY)?, auth::prompt_host(url)) {
        files.push((name, token));
    }
    if let Some(key) = read(GIT_SSH_KEY_KEY)? {
        files.push((ssh::key_file_name(host), key));
    }
    if let Some(known) = read(GIT_KNOWN_HOSTS_KEY)? {
        files.push((ssh::KNOWN_HOSTS.to_owned(), known));
    }
    if files.is_empty() {
        return Ok(None);
    }
    let failed = |source| CarryError::Git {
        path: dest.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)
        .map_err(failed)?;
    for (name, bytes) in files {
        write_private(&dest.join(name), &bytes).map_err(failed)?;
    }
    Ok(Some(dest.to_owned()))
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claude_like(secrets: &Path) -> Profile {
        let text = format!(
            "executable = \"tool\"\nsecrets_dir = \"{}\"\n\
             secret_env = {{ KEY = {{ file = \"api_key\", optional = true }}, \
             OAUTH = {{ file = \"oauth\", optional = true }} }}\n\
             [[files]]\npath = \".tool/creds.json\"\nsource = \"creds.json\"\noptional = true\n\
             [[files]]\npath = \".tool/state.json\"\ncontent = \"{{}}\"\n",
            secrets.display()
        );
        Profile::parse("tool", "tool.toml", &text).unwrap()
    }

    #[test]
    fn a_profile_carries_its_present_secrets_and_points_its_sources_at_the_mount() {
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("api_key"), "key-0123456789abcdef").unwrap();
        std::fs::write(secrets.path().join("unrelated"), "not this profile's").unwrap();
        let mut carried = Carried::default();
        carried.profile(&claude_like(secrets.path())).unwrap();

        let entries = carried.into_entries();
        let keys: Vec<&str> = entries.keys().map(String::as_str).collect();
        assert_eq!(keys, [ADAPTER_KEY, "profile-secret-0"]);
        assert_eq!(entries["profile-secret-0"], b"key-0123456789abcdef");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ADAPTER_KEY), &entries[ADAPTER_KEY]).unwrap();
        let profile = carried_profile(dir.path(), "tool").unwrap().unwrap();
        let at = |file: &Path| profile.secret_path(file);
        assert_eq!(
            at(&profile.secret_env["KEY"].file),
            dir.path().join("profile-secret-0")
        );
        assert_eq!(
            at(&profile.secret_env["OAUTH"].file),
            dir.path().join("profile-secret-1")
        );
        let source = profile.files[0].source.as_deref().unwrap();
        assert_eq!(at(source), dir.path().join("profile-secret-2"));
        assert_eq!(profile.files[1].content.as_deref(), Some("{}"));
    }

    #[test]
    fn the_secrets_carried_are_known_to_the_bridge_for_masking_and_nothing_else() {
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("api_key"), "key-0123456789abcdef\n").unwrap();
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("git.example"), "tok-this-host-0123").unwrap();
        let url = Url::parse("https://git.example/org/repo.git").unwrap();
        let mut carried = Carried::default();
        carried.profile(&claude_like(secrets.path())).unwrap();
        carried.git(creds.path(), &url).unwrap();
        carried.codex_login(b"{}", Some(b"model = \"a-model-name-long\"".to_vec()));

        let mut known = carried.secrets();
        known.sort();
        assert_eq!(known, ["key-0123456789abcdef", "tok-this-host-0123"]);
    }

    #[test]
    fn a_profile_without_any_of_its_alternatives_fails_on_the_bridge() {
        let secrets = tempfile::tempdir().unwrap();
        let err = Carried::default()
            .profile(&claude_like(secrets.path()))
            .unwrap_err();
        assert!(matches!(err, PrepareError::NoAlternative { .. }), "{err}");
    }

    #[test]
    fn only_the_repository_hosts_token_is_carried_and_laid_out_again() {
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("git.example:8443"), "tok-this-host\n").unwrap();
        std::fs::write(creds.path().join("other.example"), "tok-other").unwrap();
        let url = Url::parse("https://git.example:8443/org/repo.git").unwrap();
        let mut carried = Carried::default();
        carried.git(creds.path(), &url).unwrap();
        let entries = carried.into_entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[GIT_TOKEN_KEY], b"tok-this-host");

        let run = tempfile::tempdir().unwrap();
        std::fs::write(run.path().join(GIT_TOKEN_KEY), &entries[GIT_TOKEN_KEY]).unwrap();
        let dest = run.path().join("git");
        let laid = lay_out_git(run.path(), &url, &dest).unwrap().unwrap();
        assert_eq!(
            auth::find_token(&laid, &url).unwrap().as_deref(),
            Some("tok-this-host")
        );
    }

    #[test]
    fn an_ssh_repository_carries_its_hosts_key_and_known_hosts() {
        let creds = tempfile::tempdir().unwrap();
        std::fs::write(creds.path().join("git.example.ssh"), "KEY").unwrap();
        std::fs::write(
            creds.path().join("known_hosts"),
            "git.example ssh-ed25519 AAAA",
        )
        .unwrap();
        std::fs::write(creds.path().join("git.example"), "a token ssh never uses").unwrap();
        let url = Url::parse("ssh://git@git.example/org/repo.git").unwrap();
        let mut carried = Carried::default();
        carried.git(creds.path(), &url).unwrap();
        let keys: Vec<&str> = carried.keys().collect();
        assert_eq!(keys, [GIT_KNOWN_HOSTS_KEY, GIT_SSH_KEY_KEY]);
    }
}
