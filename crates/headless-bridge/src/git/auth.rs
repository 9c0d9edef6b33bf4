//! Tokens for private repositories, handed to git so that they appear in no URL, argv, log or
//! environment variable.
//!
//! The operator keeps one file per git host in `HB_GIT_CREDENTIALS_DIR`, named after the host
//! (`github.com`, or `host:port` for a non-default port), holding the token. A request never
//! carries a token: it names a repository, and the bridge uses the token the operator gave
//! for that host. For a run, the token is copied into the workspace's private `secrets/`
//! directory (0600), and git learns it from an askpass helper: a fixed script, shared by all
//! runs in `<data_dir>/helpers/`, that reads the file and answers only prompts for that very
//! host, so a submodule or redirect elsewhere never gets it. The script's text holds no user string; what varies reaches it through
//! environment variables.

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use url::Url;

/// The user name sent with a token; code hosts ignore it or expect this one.
pub const TOKEN_USER: &str = "x-access-token";

/// The askpass helper. git runs it with its prompt as the only argument, for example
/// `Username for 'https://host': ` or `Password for 'https://user@host': ` (see
/// gitcredentials(7)), and reads the answer from its stdout.
const ASKPASS_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  *"://$HB_GIT_HOST'"* | *"@$HB_GIT_HOST'"*) ;;
  *) exit 1 ;;
esac
case "$1" in
  Username*) printf '%s\n' "$HB_GIT_USER" ;;
  Password*) cat -- "$HB_GIT_TOKEN_FILE" ;;
  *) exit 1 ;;
esac
"#;

/// A token ready for git: where the helper and the token are, and the host they serve.
#[derive(Clone)]
pub struct GitAuth {
    pub askpass: PathBuf,
    pub token_file: PathBuf,
    /// `host` or `host:port`, as git writes it in its prompts.
    pub host: String,
    /// The token itself, for the redactor; never shown by `Debug`.
    token: String,
}

impl std::fmt::Debug for GitAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitAuth")
            .field("host", &self.host)
            .field("token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl GitAuth {
    /// The token, to be redacted from everything a run reports.
    pub fn secret(&self) -> &str {
        &self.token
    }

    /// The environment git needs to use this token.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("GIT_ASKPASS", self.askpass.display().to_string()),
            ("HB_GIT_HOST", self.host.clone()),
            ("HB_GIT_USER", TOKEN_USER.to_owned()),
            ("HB_GIT_TOKEN_FILE", self.token_file.display().to_string()),
        ]
    }
}

/// `host` or `host:port` of `url`, as git shows it in a credential prompt.
pub fn prompt_host(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// The operator's token for `url`'s host, if `credentials_dir` holds one: the file named
/// `host:port` first, then `host`.
pub fn find_token(credentials_dir: &Path, url: &Url) -> io::Result<Option<String>> {
    let Some(host) = url.host_str() else {
        return Ok(None);
    };
    let mut names = vec![host.to_owned()];
    if let Some(with_port) = prompt_host(url).filter(|h| h != host) {
        names.insert(0, with_port);
    }
    for name in names {
        // A host name has no '/', but a file name must not start a hidden or parent path.
        if name.starts_with('.') || name.contains('/') {
            continue;
        }
        match fs::read_to_string(credentials_dir.join(&name)) {
            Ok(text) if !text.trim().is_empty() => return Ok(Some(text.trim().to_owned())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Prepares the operator's token for `url`, if `credentials_dir` holds one for its host:
/// installs it into the directory `secrets_dir` gives, with the helper in `helpers_dir`. ssh
/// URLs use keys, not tokens.
pub fn for_url(
    credentials_dir: Option<&Path>,
    url: &Url,
    helpers_dir: &Path,
    secrets_dir: impl FnOnce() -> io::Result<PathBuf>,
) -> io::Result<Option<GitAuth>> {
    let Some(dir) = credentials_dir.filter(|_| url.scheme() != "ssh") else {
        return Ok(None);
    };
    match find_token(dir, url)? {
        Some(token) => install(helpers_dir, &secrets_dir()?, url, token).map(Some),
        None => Ok(None),
    }
}

/// Writes a 0600 copy of `token` into `secrets_dir`, for `url`'s host, and makes sure the
/// helper is in `helpers_dir`.
pub fn install(
    helpers_dir: &Path,
    secrets_dir: &Path,
    url: &Url,
    token: String,
) -> io::Result<GitAuth> {
    let host = prompt_host(url).ok_or_else(|| io::Error::other("the URL has no host"))?;
    let token_file = secrets_dir.join("git-token");
    write_private(&token_file, token.as_bytes(), 0o600)?;
    let askpass = helper(helpers_dir, "git-askpass", ASKPASS_SCRIPT)?;
    Ok(GitAuth {
        askpass,
        token_file,
        host,
        token,
    })
}

/// The helper script `name` in `dir`, written once and then reused. It holds no secret, and
/// a script written just before git runs it could still be open for writing in a child that
/// another thread is forking, which makes running it fail with ETXTBSY (see
/// rust-lang/rust#114554); written once, long before, it is not.
pub(super) fn helper(dir: &Path, name: &str, script: &str) -> io::Result<PathBuf> {
    let path = dir.join(name);
    if fs::read(&path).is_ok_and(|bytes| bytes == script.as_bytes()) {
        return Ok(path);
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let temp = dir.join(format!(".{name}.{}", uuid::Uuid::now_v7()));
    write_private(&temp, script.as_bytes(), 0o700)?;
    fs::rename(&temp, &path)?;
    Ok(path)
}

/// Creates `path` with `mode` from the start, so the bytes are never readable by others.
pub(super) fn write_private(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use rstest::rstest;

    use super::*;

    const TOKEN: &str = "tok-canary-123";

    fn installed() -> (tempfile::TempDir, GitAuth) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let url: Url = "http://127.0.0.1:8080/r.git".parse().expect("a URL");
        let helpers = dir.path().join("helpers");
        let auth = install(&helpers, dir.path(), &url, TOKEN.into()).expect("installs");
        (dir, auth)
    }

    /// Runs the helper through sh: the script's logic is under test here, and executing a
    /// file this thread has just written races other tests' forks (ETXTBSY).
    fn ask(auth: &GitAuth, prompt: &str) -> (bool, String) {
        let output = Command::new("/bin/sh")
            .arg(&auth.askpass)
            .arg(prompt)
            .env_clear()
            .envs(auth.env())
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("the helper runs");
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success(), text)
    }

    #[rstest]
    #[case::user("Username for 'http://127.0.0.1:8080': ", Some(TOKEN_USER))]
    #[case::password("Password for 'http://x-access-token@127.0.0.1:8080': ", Some(TOKEN))]
    #[case::other_host("Password for 'https://x-access-token@evil.example': ", None)]
    #[case::other_port("Password for 'http://x-access-token@127.0.0.1:9': ", None)]
    #[case::host_prefix("Password for 'http://127.0.0.1:80800': ", None)]
    #[case::not_a_prompt("Are you sure (yes/no)? ", None)]
    fn the_helper_answers_only_its_own_host(#[case] prompt: &str, #[case] answer: Option<&str>) {
        let (_dir, auth) = installed();
        let (ok, text) = ask(&auth, prompt);
        match answer {
            Some(expected) => assert!(ok && text == expected, "{prompt}: {ok} {text}"),
            None => assert!(!ok && text.is_empty(), "{prompt}: {ok} {text}"),
        }
    }

    #[test]
    fn the_token_file_is_private_and_debug_hides_it() {
        let (_dir, auth) = installed();
        let mode = fs::metadata(&auth.token_file)
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{auth:?}").contains(TOKEN));
        assert!(!auth.env().iter().any(|(_, v)| v.contains(TOKEN)));
    }

    #[test]
    fn a_token_is_found_by_host_and_port_first() {
        let dir = tempfile::tempdir().expect("a temp dir");
        fs::write(dir.path().join("127.0.0.1:8080"), "port-token\n").expect("write");
        fs::write(dir.path().join("127.0.0.1"), "host-token").expect("write");
        let find = |raw: &str| find_token(dir.path(), &raw.parse().expect("a URL")).expect("reads");
        assert_eq!(
            find("http://127.0.0.1:8080/r.git").as_deref(),
            Some("port-token")
        );
        assert_eq!(
            find("http://127.0.0.1:9/r.git").as_deref(),
            Some("host-token")
        );
        assert_eq!(find("https://elsewhere.example/r.git"), None);
    }
}
