//! Artifacts: files a run declares for its caller (a patch, a report), kept after the run's
//! workspace is gone and served by `GET /v1/runs/{id}/artifacts/{path}`.
//!
//! A request declares relative paths inside the work tree. When the CLI has finished, each one
//! that exists is resolved, and kept only if it resolves to a regular file inside the work tree
//! (a symlink out of it is refused) and is no larger than the cap. It is copied, with the run's
//! secrets redacted, under `<data_dir>/artifacts/<run id>/`, and the run's record lists it with
//! its size and digest. Serving reads only what the record lists. Deciding what a run may
//! declare is this module's too ([`check_declared`]); routing is the API's.

use std::fs;
use std::io::{self, Read as _};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::redact::Redactor;

/// The most artifacts a run may declare: a patch and a few reports, not a file tree; each is
/// held in memory once while it is redacted.
pub const MAX_DECLARED: usize = 16;
/// The longest declared path; real ones are short, and a path is part of a URL.
const MAX_PATH: usize = 512;

/// A file a run left for its caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Artifact {
    /// The declared path, relative to the work tree.
    pub path: String,
    pub size: u64,
    /// The digest of the served bytes (after redaction).
    pub sha256: String,
}

/// Checks a declared path: relative, plain components only, no `..`.
pub fn check_declared(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.len() > MAX_PATH {
        return Err("must have 1 to 512 characters");
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let plain = Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err("must be a relative path inside the work tree, without '.' or '..' parts");
    }
    Ok(())
}

/// Collects the declared artifacts of a finished run from `work` into `store`. What could not
/// be collected is explained in the returned notes; it never fails the run.
pub fn collect(
    work: &Path,
    declared: &[String],
    store: &Path,
    max_bytes: u64,
    redactor: &Redactor,
) -> (Vec<Artifact>, Vec<String>) {
    let (mut kept, mut notes) = (Vec::new(), Vec::new());
    for path in declared {
        match collect_one(work, path, store, max_bytes, redactor) {
            Ok(artifact) => kept.push(artifact),
            Err(why) => notes.push(format!("artifact `{path}` not kept: {why}")),
        }
    }
    (kept, notes)
}

fn collect_one(
    work: &Path,
    path: &str,
    store: &Path,
    max_bytes: u64,
    redactor: &Redactor,
) -> Result<Artifact, String> {
    check_declared(path).map_err(str::to_owned)?;
    let root = fs::canonicalize(work).map_err(|e| format!("the work tree is gone ({e})"))?;
    let declared = work.join(path);
    fs::symlink_metadata(&declared).map_err(|_| "the run did not write it")?;
    let real = fs::canonicalize(&declared).map_err(|_| "it is a link that leads nowhere")?;
    if !real.starts_with(&root) {
        return Err("it resolves outside the work tree".into());
    }
    let meta = fs::metadata(&real).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.len() > max_bytes {
        return Err(format!(
            "{} bytes, more than the limit of {max_bytes}",
            meta.len()
        ));
    }

    let mut bytes = Vec::new();
    let file = fs::File::open(&real).map_err(|e| e.to_string())?;
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let bytes = redactor.redact_bytes(&bytes);
    let dest = store.join(path);
    write_private(&dest, &bytes).map_err(|e| format!("failed to keep it: {e}"))?;
    Ok(Artifact {
        path: path.to_owned(),
        size: bytes.len() as u64,
        sha256: Sha256Digest::of(&bytes).to_string(),
    })
}

/// Keeps `bytes` as the artifact `path` in `store`: what a run in a Kubernetes Job collected
/// and its worker sent back, already capped and redacted there.
pub fn keep(store: &Path, path: &str, bytes: &[u8]) -> io::Result<()> {
    check_declared(path).map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
    write_private(&store.join(path), bytes)
}

/// Checks that `store` holds `artifact` exactly as described (size and digest); says why not.
pub fn check_kept(store: &Path, artifact: &Artifact) -> Result<(), String> {
    let bytes =
        read(store, &artifact.path).map_err(|_| "the bridge never received it".to_owned())?;
    let digest = Sha256Digest::of(&bytes).to_string();
    if bytes.len() as u64 != artifact.size || digest != artifact.sha256 {
        return Err(format!(
            "the bridge received {} bytes with sha256 {digest}, not {} with {}",
            bytes.len(),
            artifact.size,
            artifact.sha256
        ));
    }
    Ok(())
}

/// Reads a kept artifact named in a run's record.
pub fn read(store: &Path, path: &str) -> io::Result<Vec<u8>> {
    check_declared(path).map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))?;
    fs::read(store.join(path))
}

/// Where a run's artifacts are kept.
pub fn store_dir(data_dir: &Path, run_id: &str) -> PathBuf {
    data_dir.join("artifacts").join(run_id)
}

fn write_private(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dest)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::plain("fix.patch", true)]
    #[case::nested("reports/summary.md", true)]
    #[case::parent("../secrets/git-token", false)]
    #[case::inner_parent("a/../../b", false)]
    #[case::absolute("/etc/passwd", false)]
    #[case::dot("./a", false)]
    #[case::empty("", false)]
    #[case::newline("a\nb", false)]
    fn declared_paths_stay_in_the_work_tree(#[case] path: &str, #[case] ok: bool) {
        assert_eq!(check_declared(path).is_ok(), ok, "{path}");
    }

    #[test]
    fn collects_files_and_refuses_links_out_large_files_and_directories() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let work = dir.path().join("work");
        fs::create_dir_all(work.join("reports")).expect("mkdir");
        fs::write(work.join("fix.patch"), "diff with sk-secret-1 inside").expect("write");
        fs::write(work.join("big.bin"), vec![0u8; 2048]).expect("write");
        fs::write(dir.path().join("outside"), "secret").expect("write");
        std::os::unix::fs::symlink("../outside", work.join("link")).expect("symlink");
        let declared: Vec<String> = ["fix.patch", "big.bin", "link", "reports", "missing"]
            .map(String::from)
            .into();
        let store = dir.path().join("store");
        let redactor = Redactor::new(["sk-secret-1"]);

        let (kept, notes) = collect(&work, &declared, &store, 1024, &redactor);

        assert_eq!(kept.len(), 1, "{notes:?}");
        assert_eq!(kept[0].path, "fix.patch");
        let served = read(&store, "fix.patch").expect("kept");
        assert!(!String::from_utf8_lossy(&served).contains("sk-secret-1"));
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("outside the work tree")),
            "{notes:?}"
        );
    }
}
