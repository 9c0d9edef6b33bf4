//! Getting a run ready for a profile adapter: secrets read, files placed, ownership handed
//! over, and the command line built.
//!
//! Secrets are read from their files at every run, so a rotated Secret is used by the next run
//! without a restart. Their values reach the CLI only through its environment or files in its
//! private HOME (owner-only), never its argv; each value is handed back for redaction. When the
//! profile names a `run_as` user and the bridge runs as root, the run's directories are given
//! to that user and the CLI is started as it (some CLIs refuse to run as root).

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::codex::RunDirs;
use super::profile::{Profile, RunAs, expand};
use crate::run::ReasonCode;

/// Why a profile run could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("the {adapter} login is missing: {path} does not exist; mount the Secret there")]
    SecretMissing { adapter: String, path: PathBuf },
    #[error(
        "the {adapter} login is missing: none of {paths} exists; mount one of them (an API key or a token)"
    )]
    NoAlternative { adapter: String, paths: String },
    #[error("failed to read the secret {path}: {source}")]
    SecretUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret {path} is empty")]
    SecretEmpty { path: PathBuf },
    #[error(
        "the CLI runs as uid {uid} but cannot pass through {dir}: make the data directory's parents traversable (chmod o+x) or move HB_DATA_DIR"
    )]
    Unreachable { dir: PathBuf, uid: u32 },
    #[error(
        "the CLI runs as uid {uid} but cannot pass through the data directory {dir}: make it traversable (chmod o+x; 0711 keeps it unlistable) or move HB_DATA_DIR"
    )]
    DataDirUnreachable { dir: PathBuf, uid: u32 },
    #[error("failed to prepare {path} in the run's workspace: {source}")]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PrepareError {
    /// The reason code a run ends with.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::SecretMissing { .. } | Self::NoAlternative { .. } | Self::SecretEmpty { .. } => {
                ReasonCode::CredentialsMissing
            }
            Self::SecretUnreadable { .. } => ReasonCode::CredentialsInvalid,
            Self::Workspace { .. } | Self::Unreachable { .. } | Self::DataDirUnreachable { .. } => {
                ReasonCode::WorkspaceError
            }
        }
    }
}

/// What a prepared run starts with.
#[derive(Debug)]
pub struct Prepared {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to the run's base environment.
    pub env: Vec<(OsString, OsString)>,
    /// Secret values, to redact from everything the run reports.
    pub secrets: Vec<String>,
    /// The user to start the CLI as, if any.
    pub run_as: Option<RunAs>,
}

/// Reads the profile's secrets, places its files in the run's HOME, and builds its command.
pub fn prepare(profile: &Profile, dirs: &RunDirs, prompt: &str) -> Result<Prepared, PrepareError> {
    let work_dir = dirs.work.display().to_string();
    let home = dirs.home.display().to_string();
    let tmp_dir = dirs.tmp.display().to_string();
    let paths = [
        ("{work_dir}", work_dir.as_str()),
        ("{home}", home.as_str()),
        ("{tmp_dir}", tmp_dir.as_str()),
    ];

    let mut secrets = Vec::new();
    let mut env: Vec<(OsString, OsString)> = profile
        .env
        .iter()
        .map(|(k, v)| (k.into(), expand(v, &paths).into()))
        .collect();
    env.extend(secret_env(profile, &mut secrets)?);
    place_files(profile, dirs, &paths, &mut secrets)?;
    check_alternatives(profile)?;

    let run_as = effective_run_as(profile.run_as);
    if let Some(user) = run_as {
        hand_over(dirs, user)?;
    }
    let mut arg_values = paths.to_vec();
    arg_values.push(("{prompt}", prompt));
    let args = profile
        .args
        .iter()
        .map(|arg| expand(arg, &arg_values).into())
        .collect();
    Ok(Prepared {
        program: profile.executable.clone(),
        args,
        env,
        secrets,
        run_as,
    })
}

/// `run_as` applies only when the bridge can switch users, that is when it runs as root; a
/// bridge running as an ordinary user already runs its CLIs as one.
pub fn effective_run_as(run_as: Option<RunAs>) -> Option<RunAs> {
    run_as.filter(|_| nix::unistd::geteuid().is_root())
}

fn secret_env(
    profile: &Profile,
    secrets: &mut Vec<String>,
) -> Result<Vec<(OsString, OsString)>, PrepareError> {
    let mut env = Vec::new();
    for (name, source) in &profile.secret_env {
        let path = profile.secret_path(&source.file);
        let Some(bytes) = read_secret(&profile.name, &path, source.optional)? else {
            continue;
        };
        let value = String::from_utf8_lossy(&bytes).trim().to_owned();
        if value.is_empty() {
            return Err(PrepareError::SecretEmpty { path });
        }
        secrets.push(value.clone());
        env.push((name.into(), value.into()));
    }
    Ok(env)
}

/// The secret's bytes; `None` when it is optional and absent.
pub(crate) fn read_secret(
    adapter: &str,
    path: &Path,
    optional: bool,
) -> Result<Option<Vec<u8>>, PrepareError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && optional => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PrepareError::SecretMissing {
            adapter: adapter.to_owned(),
            path: path.to_owned(),
        }),
        Err(source) => Err(PrepareError::SecretUnreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

fn place_files(
    profile: &Profile,
    dirs: &RunDirs,
    paths: &[(&str, &str)],
    secrets: &mut Vec<String>,
) -> Result<(), PrepareError> {
    for file in &profile.files {
        let content = match (&file.source, &file.content) {
            (Some(source), _) => {
                let path = profile.secret_path(source);
                let Some(bytes) = read_secret(&profile.name, &path, file.optional)? else {
                    continue;
                };
                // A credential file is a secret as a whole, and so are its long string values.
                secrets.extend(secret_strings(&bytes));
                bytes
            }
            (None, Some(content)) => expand(content, paths).into_bytes(),
            (None, None) => unreachable!("profiles are checked to have a source or content"),
        };
        write_private(&dirs.home.join(&file.path), &content, file.mode_bits())?;
    }
    Ok(())
}

/// The string values of a JSON credential file long enough to be tokens, or the whole text.
pub(crate) fn secret_strings(bytes: &[u8]) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) if s.len() >= 16 => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    match serde_json::from_slice(bytes) {
        Ok(value) => walk(&value, &mut out),
        Err(_) => out.push(String::from_utf8_lossy(bytes).trim().to_owned()),
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Optional sources are alternatives: at least one must have been present.
pub(crate) fn check_alternatives(profile: &Profile) -> Result<(), PrepareError> {
    let mut optional: Vec<PathBuf> = profile
        .secret_env
        .values()
        .filter(|s| s.optional)
        .map(|s| profile.secret_path(&s.file))
        .collect();
    optional.extend(
        profile
            .files
            .iter()
            .filter(|f| f.optional)
            .filter_map(|f| f.source.as_ref().map(|s| profile.secret_path(s))),
    );
    if optional.is_empty() || optional.iter().any(|p| p.exists()) {
        return Ok(());
    }
    let paths: Vec<String> = optional.iter().map(|p| p.display().to_string()).collect();
    Err(PrepareError::NoAlternative {
        adapter: profile.name.clone(),
        paths: paths.join(", "),
    })
}

/// Writes `content` to `path` with `mode` from the start, creating owner-only parents.
fn write_private(path: &Path, content: &[u8], mode: u32) -> Result<(), PrepareError> {
    let failed = |source| PrepareError::Workspace {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(failed)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(failed)?;
    file.write_all(content).map_err(failed)?;
    // The umask may have narrowed the mode; the profile's mode is what it asked for.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(failed)
}

/// Gives the run's directories to `user`: the CLI must write its HOME, work and temp
/// directories, and reach them through the workspace root.
fn hand_over(dirs: &RunDirs, user: RunAs) -> Result<(), PrepareError> {
    let root = dirs
        .home
        .parent()
        .expect("HOME is inside the workspace root");
    check_reachable(root, user)?;
    let owner = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)).map_err(|source| {
            PrepareError::Workspace {
                path: path.to_owned(),
                source,
            }
        })
    };
    owner(root)?;
    for dir in [&dirs.work, &dirs.home, &dirs.bin, &dirs.tmp] {
        chown_tree(dir, &owner)?;
    }
    Ok(())
}

/// Every directory above the workspace must let others pass, or the CLI cannot reach its
/// own directories; better to say so than to fail with a bare "permission denied". A
/// workspace lives in `<data_dir>/workspaces/<id>`, so the data directory, when it is the one
/// in the way, is named as such.
fn check_reachable(root: &Path, user: RunAs) -> Result<(), PrepareError> {
    use std::os::unix::fs::MetadataExt as _;
    let workspaces = root.parent();
    let data_dir = workspaces
        .filter(|dir| dir.file_name().is_some_and(|name| name == "workspaces"))
        .and_then(Path::parent);
    for dir in root.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|source| PrepareError::Workspace {
            path: dir.to_owned(),
            source,
        })?;
        let passable = meta.mode() & 0o001 != 0
            || (meta.uid() == user.uid && meta.mode() & 0o100 != 0)
            || (meta.gid() == user.gid && meta.mode() & 0o010 != 0);
        if passable {
            continue;
        }
        let (dir, uid) = (dir.to_owned(), user.uid);
        return Err(if data_dir == Some(dir.as_path()) {
            PrepareError::DataDirUnreachable { dir, uid }
        } else {
            PrepareError::Unreachable { dir, uid }
        });
    }
    Ok(())
}

fn chown_tree(
    path: &Path,
    owner: &impl Fn(&Path) -> Result<(), PrepareError>,
) -> Result<(), PrepareError> {
    owner(path)?;
    let meta = fs::symlink_metadata(path).map_err(|source| PrepareError::Workspace {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Ok(());
    }
    let entries = fs::read_dir(path).map_err(|source| PrepareError::Workspace {
        path: path.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        chown_tree(&entry.path(), owner)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn dirs(root: &Path) -> RunDirs {
        let dirs = RunDirs {
            work: root.join("work"),
            bin: root.join("bin"),
            home: root.join("home"),
            codex_home: root.join("codex-home"),
            tmp: root.join("tmp"),
            last_message: root.join("out/last"),
        };
        for d in [&dirs.work, &dirs.bin, &dirs.home, &dirs.tmp] {
            fs::create_dir_all(d).unwrap();
        }
        dirs
    }

    fn profile(secrets: &Path, extra: &str) -> Profile {
        let text = format!(
            "executable = \"tool\"\nargs = [\"--cwd\", \"{{work_dir}}\", \"--\", \"{{prompt}}\"]\n\
             env = {{ TMP_CACHE = \"{{tmp_dir}}/c\" }}\nsecrets_dir = \"{}\"\n{extra}",
            secrets.display()
        );
        Profile::parse("tool", "tool.toml", &text).unwrap()
    }

    /// Regression: a data directory of mode 0700 was reported as one of its parents, with
    /// advice about the parents only.
    #[test]
    fn the_data_directory_is_named_when_it_is_what_blocks_another_user() {
        use std::os::unix::fs::PermissionsExt as _;
        let chmod = |dir: &Path, mode| {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).expect("chmod")
        };
        let parent = tempfile::tempdir().unwrap();
        let data_dir = parent.path().join("data");
        let root = data_dir.join("workspaces/run-1");
        fs::create_dir_all(&root).unwrap();
        chmod(&data_dir.join("workspaces"), 0o711);
        chmod(&data_dir, 0o700);
        let nobody = RunAs {
            uid: 65534,
            gid: 65534,
        };

        let err = check_reachable(&root, nobody).unwrap_err();
        assert!(
            matches!(&err, PrepareError::DataDirUnreachable { dir, .. } if *dir == data_dir),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("through the data directory"),
            "{err}"
        );

        chmod(&data_dir, 0o711);
        chmod(parent.path(), 0o700);
        let err = check_reachable(&root, nobody).unwrap_err();
        assert!(
            matches!(&err, PrepareError::Unreachable { dir, .. } if dir == parent.path()),
            "{err:?}"
        );
    }

    #[test]
    fn secrets_go_to_the_environment_and_owner_only_files_never_argv() {
        let secrets = tempfile::tempdir().unwrap();
        fs::write(secrets.path().join("token"), "tok-0123456789abcdef\n").unwrap();
        fs::write(
            secrets.path().join("creds.json"),
            r#"{"a":{"accessToken":"at-0123456789abcdef"}}"#,
        )
        .unwrap();
        let run = tempfile::tempdir().unwrap();
        let dirs = dirs(run.path());
        let profile = profile(
            secrets.path(),
            "secret_env = { TOOL_TOKEN = { file = \"token\" } }\n\
             [[files]]\npath = \".tool/creds.json\"\nsource = \"creds.json\"\n\
             [[files]]\npath = \".tool/state.json\"\ncontent = '{\"trusted\":\"{work_dir}\"}'\nmode = \"0644\"\n",
        );

        let prepared = prepare(&profile, &dirs, "do; it").unwrap();
        let work = dirs.work.display().to_string();
        assert_eq!(prepared.args, ["--cwd", work.as_str(), "--", "do; it"]);
        assert!(
            prepared
                .env
                .contains(&("TOOL_TOKEN".into(), "tok-0123456789abcdef".into()))
        );
        let tmp_cache = format!("{}/c", dirs.tmp.display());
        assert!(
            prepared
                .env
                .contains(&("TMP_CACHE".into(), tmp_cache.into()))
        );
        assert!(prepared.secrets.contains(&"at-0123456789abcdef".to_owned()));

        let creds = fs::metadata(dirs.home.join(".tool/creds.json")).unwrap();
        assert_eq!(creds.mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dirs.home.join(".tool")).unwrap().mode() & 0o777,
            0o700
        );
        let state = fs::read_to_string(dirs.home.join(".tool/state.json")).unwrap();
        assert_eq!(state, format!("{{\"trusted\":\"{work}\"}}"));
    }

    #[test]
    fn placeholders_inside_the_prompt_stay_literal() {
        let secrets = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let prepared = prepare(
            &profile(secrets.path(), ""),
            &dirs(run.path()),
            "{home} {tmp_dir}",
        )
        .unwrap();
        assert_eq!(prepared.args[3], "{home} {tmp_dir}");
    }

    #[test]
    fn a_missing_secret_or_no_alternative_is_credentials_missing() {
        let secrets = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let required = profile(
            secrets.path(),
            "secret_env = { T = { file = \"token\" } }\n",
        );
        let err = prepare(&required, &dirs(run.path()), "x").unwrap_err();
        assert_eq!(err.reason(), ReasonCode::CredentialsMissing);
        assert!(err.to_string().contains("token"), "{err}");

        let run = tempfile::tempdir().unwrap();
        let either = profile(
            secrets.path(),
            "secret_env = { K = { file = \"api_key\", optional = true }, O = { file = \"oauth\", optional = true } }\n",
        );
        let err = prepare(&either, &dirs(run.path()), "x").unwrap_err();
        assert!(matches!(err, PrepareError::NoAlternative { .. }), "{err}");

        fs::write(secrets.path().join("oauth"), "oauth-token-value").unwrap();
        let run = tempfile::tempdir().unwrap();
        let prepared = prepare(&either, &dirs(run.path()), "x").unwrap();
        assert_eq!(prepared.env.iter().filter(|(k, _)| k == "O").count(), 1);
        assert!(!prepared.env.iter().any(|(k, _)| k == "K"));
    }
}
