//! Keys for `ssh://` repositories on hosts the operator allowed, handed to git's ssh without
//! any of the user's or the system's ssh configuration.
//!
//! The operator keeps, in `HB_GIT_CREDENTIALS_DIR`, a private key per host in `<host>.ssh`
//! and the hosts' public keys in `known_hosts`. For a run, the key is copied into the
//! workspace's private `secrets/` directory (0600, which ssh insists on) and git runs ssh
//! through a fixed wrapper script shared by all runs (`GIT_SSH`, so no shell ever parses a
//! path): batch mode,
//! that one key only, no config file, and strict host key checking against that
//! `known_hosts` alone. Without a `known_hosts` no host key is trusted and the clone fails.

use std::io;
use std::path::{Path, PathBuf};

use url::Url;

use super::auth::{helper, write_private};

/// The ssh git runs; its arguments are git's (`[-p port] [-o SendEnv=GIT_PROTOCOL] host
/// command`, see `GIT_SSH_VARIANT` in git(1)).
const SSH_WRAPPER: &str = r#"#!/bin/sh
exec ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
  -o GlobalKnownHostsFile=/dev/null -o UserKnownHostsFile="$HB_GIT_KNOWN_HOSTS" \
  -o ProxyCommand=none -o ProxyJump=none -i "$HB_GIT_SSH_KEY" "$@"
"#;

/// A key ready for git's ssh.
#[derive(Clone)]
pub struct SshAuth {
    pub wrapper: PathBuf,
    pub key_file: PathBuf,
    pub known_hosts: PathBuf,
    /// The key itself, for the redactor; never shown by `Debug`.
    key: String,
}

impl std::fmt::Debug for SshAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshAuth")
            .field("known_hosts", &self.known_hosts)
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl SshAuth {
    /// The private key, to be redacted from everything a run reports.
    pub fn secret(&self) -> &str {
        &self.key
    }

    /// The environment git needs to use this key.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("GIT_SSH", self.wrapper.display().to_string()),
            ("GIT_SSH_VARIANT", "ssh".to_owned()),
            ("HB_GIT_SSH_KEY", self.key_file.display().to_string()),
            ("HB_GIT_KNOWN_HOSTS", self.known_hosts.display().to_string()),
        ]
    }
}

/// Prepares the operator's key for an `ssh://` `url`, if `credentials_dir` holds one for its
/// host; other URLs get `None`.
pub fn for_url(
    credentials_dir: Option<&Path>,
    url: &Url,
    helpers_dir: &Path,
    secrets_dir: impl FnOnce() -> io::Result<PathBuf>,
) -> io::Result<Option<SshAuth>> {
    let Some(dir) = credentials_dir else {
        return Ok(None);
    };
    let Some(key) = find_key(dir, url)? else {
        return Ok(None);
    };
    install(helpers_dir, &secrets_dir()?, key, &dir.join(KNOWN_HOSTS)).map(Some)
}

/// The operator's private key for an `ssh://` `url`'s host (`<host>.ssh` in
/// `credentials_dir`), if there is one; other URLs get `None`.
pub fn find_key(credentials_dir: &Path, url: &Url) -> io::Result<Option<String>> {
    let Some(host) = url.host_str() else {
        return Ok(None);
    };
    if url.scheme() != "ssh" || host.starts_with('.') || host.contains('/') {
        return Ok(None);
    }
    match std::fs::read_to_string(credentials_dir.join(key_file_name(host))) {
        Ok(key) => Ok(Some(key)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file in `HB_GIT_CREDENTIALS_DIR` holding the key for `host`.
pub fn key_file_name(host: &str) -> String {
    format!("{host}.ssh")
}

/// The file in `HB_GIT_CREDENTIALS_DIR` holding the hosts' public keys.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// Writes a 0600 copy of `key` into `secrets_dir` and makes sure the wrapper is in
/// `helpers_dir`.
pub fn install(
    helpers_dir: &Path,
    secrets_dir: &Path,
    key: String,
    known_hosts: &Path,
) -> io::Result<SshAuth> {
    let key_file = secrets_dir.join("git-ssh-key");
    // ssh wants a key file to end with a newline; a Secret's value often does not.
    let text = if key.ends_with('\n') {
        key.clone()
    } else {
        format!("{key}\n")
    };
    write_private(&key_file, text.as_bytes(), 0o600)?;
    let wrapper = helper(helpers_dir, "git-ssh", SSH_WRAPPER)?;
    Ok(SshAuth {
        wrapper,
        key_file,
        known_hosts: known_hosts.to_owned(),
        key: key.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::Command;

    use super::*;

    const KEY: &str =
        "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-canary-41\n-----END OPENSSH PRIVATE KEY-----";

    #[test]
    fn the_wrapper_runs_ssh_with_only_the_operators_key_and_known_hosts() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let known_hosts = dir.path().join("known_hosts");
        let helpers = dir.path().join("helpers");
        let auth = install(&helpers, dir.path(), KEY.into(), &known_hosts).expect("installs");
        // A stand-in `ssh` first on PATH prints the arguments it was given.
        let fake_bin = dir.path().join("bin");
        std::fs::create_dir(&fake_bin).expect("mkdir");
        let fake = fake_bin.join("ssh");
        std::fs::write(&fake, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");

        // Through sh: executing a file this thread has just written races other tests' forks.
        // The stand-in was just written; a fork in another test may hold it open for a
        // moment, and sh then reports 126 (ETXTBSY). Only that is tried again.
        let run = || {
            Command::new("/bin/sh")
                .arg(&auth.wrapper)
                .args(["-p", "2222", "git.internal", "git-upload-pack '/r.git'"])
                .env_clear()
                .envs(auth.env())
                .env("PATH", format!("{}:/usr/bin:/bin", fake_bin.display()))
                .output()
                .expect("the wrapper runs")
        };
        let output = (0..5)
            .map(|_| run())
            .find(|o| o.status.code() != Some(126))
            .expect("the stand-in ran");
        let args = String::from_utf8_lossy(&output.stdout);

        for expected in [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            &format!("UserKnownHostsFile={}", known_hosts.display()),
            &auth.key_file.display().to_string(),
            "git.internal",
        ] {
            assert!(
                args.lines().any(|l| l == expected),
                "{expected} missing: {args}"
            );
        }
        assert!(!args.contains("key-canary-41"));
        let mode = std::fs::metadata(&auth.key_file)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{auth:?}").contains("key-canary-41"));
    }

    #[test]
    fn only_ssh_urls_with_a_key_get_one() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("git.internal.ssh"), KEY).expect("write");
        let secrets = tempfile::tempdir().expect("a temp dir");
        let get = |raw: &str| {
            let url: Url = raw.parse().expect("a URL");
            let helpers = secrets.path().join("helpers");
            for_url(Some(dir.path()), &url, &helpers, || {
                Ok(secrets.path().to_owned())
            })
            .expect("reads")
        };
        assert!(get("ssh://git@git.internal/r.git").is_some());
        assert!(get("https://git.internal/r.git").is_none());
        assert!(get("ssh://git@other.internal/r.git").is_none());
    }
}
