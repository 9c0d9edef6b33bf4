//! The tool cache on disk: verified downloads keyed by their sha256, partial downloads waiting
//! to be resumed, and the last URL that worked for each tool name.
//!
//! ```text
//! <cache>/                 0700
//!   sha256/<64 hex>        verified files only; a file here is never rewritten
//!   partial/<key>.part     downloads in progress, resumable
//!   last-good.json         {"<tool name>": "<url>"}
//! ```
//!
//! A file reaches `sha256/` only by [`Cache::commit`], after its digest matched, so a lookup
//! trusts what it finds and touches no network. Runs get a copy, never a link: a CLI that
//! wrote to its tool must not change what the next run gets. The copy is hashed as it is made
//! ([`copy_verified`]), so a cache file changed behind the bridge's back is never installed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use url::Url;

use super::FetchError;
use crate::digest::Sha256Digest;

/// The cache directory and the remembered URLs.
#[derive(Debug)]
pub struct Cache {
    root: PathBuf,
    /// Serialises writers of `last-good.json` within this process.
    last_good: Mutex<()>,
}

impl Cache {
    /// The cache under `root`; its directories are made by the first download.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            last_good: Mutex::new(()),
        }
    }

    /// Creates the cache's directories if they are missing.
    pub fn ensure_dirs(&self) -> Result<(), FetchError> {
        let root = &self.root;
        for dir in [root.to_owned(), root.join("sha256"), root.join("partial")] {
            fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|source| io_error(root, source))
    }

    /// The verified file for `digest` and its size, if the cache holds it: one `stat`.
    pub fn lookup(&self, digest: &Sha256Digest) -> Option<(PathBuf, u64)> {
        let path = self.verified_path(digest);
        let meta = fs::metadata(&path).ok().filter(fs::Metadata::is_file)?;
        Some((path, meta.len()))
    }

    /// Where a download of `url` for `digest` is kept while in progress. The key holds both,
    /// so a partial file is only ever resumed from the server that started it.
    pub fn partial_path(&self, digest: Option<&Sha256Digest>, url: &Url) -> PathBuf {
        let url_key = hex::encode(&Sha256::digest(url.as_str().as_bytes())[..8]);
        let name = match digest {
            Some(digest) => format!("{}-{url_key}.part", digest.hex()),
            // Without an expected digest there is nothing to resume against safely.
            None => format!("unverified-{url_key}-{}.part", uuid::Uuid::now_v7()),
        };
        self.root.join("partial").join(name)
    }

    /// Moves a verified, synced partial file into the cache under `digest`.
    pub fn commit(&self, partial: &Path, digest: &Sha256Digest) -> Result<PathBuf, FetchError> {
        let dest = self.verified_path(digest);
        fs::set_permissions(partial, fs::Permissions::from_mode(0o755))
            .map_err(|source| io_error(partial, source))?;
        fs::rename(partial, &dest).map_err(|source| io_error(&dest, source))?;
        // The rename is only durable once the directory entry is.
        let dir = self.root.join("sha256");
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_error(&dir, source))?;
        Ok(dest)
    }

    /// Drops the cached file for `digest`, which no longer has that digest.
    pub fn evict(&self, digest: &Sha256Digest) {
        let _ = fs::remove_file(self.verified_path(digest));
    }

    /// The URL that last worked for tool `name`.
    pub fn last_good(&self, name: &str) -> Option<String> {
        self.read_last_good().remove(name)
    }

    /// Remembers that `url` worked for tool `name`. A failure to remember costs only the
    /// ordering of the next fetch, so it is logged, not returned.
    pub fn remember(&self, name: &str, url: &Url) {
        let _guard = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.read_last_good();
        if map.get(name).map(String::as_str) == Some(url.as_str()) {
            return;
        }
        map.insert(name.to_owned(), url.to_string());
        if let Err(e) = self.write_last_good(&map) {
            tracing::warn!(error = %e, "failed to remember the last good tool URL");
        }
    }

    fn verified_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    fn read_last_good(&self) -> BTreeMap<String, String> {
        fs::read(self.root.join("last-good.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write_last_good(&self, map: &BTreeMap<String, String>) -> io::Result<()> {
        let path = self.root.join("last-good.json");
        let temp = self.root.join("last-good.json.tmp");
        fs::write(&temp, serde_json::to_vec_pretty(map)?)?;
        fs::rename(&temp, &path)
    }
}

/// Copies the cached file `source` to `dest` with `mode`, through a temporary name, hashing
/// what it copies. Answers whether the copy has `digest`; when it has not, `dest` is left
/// alone. The cache was verified when it was filled, but anything running as the bridge's
/// user can write to it since; copying reads every byte anyway, so checking costs little.
pub fn copy_verified(
    source: &Path,
    dest: &Path,
    digest: &Sha256Digest,
    mode: u32,
) -> Result<bool, FetchError> {
    use std::io::{Read as _, Write as _};
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
    let temp = dest.with_file_name(format!(".{}.installing", file_name.unwrap_or_default()));
    let io = |e| io_error(&temp, e);
    let mut input = fs::File::open(source).map_err(|e| io_error(source, e))?;
    let mut output = fs::File::create(&temp).map_err(io)?;
    let (mut hasher, mut buf) = (Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        let n = input.read(&mut buf).map_err(|e| io_error(source, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io)?;
    }
    drop(output);
    if Sha256Digest::from_hasher(hasher) != *digest {
        let _ = fs::remove_file(&temp);
        return Ok(false);
    }
    fs::set_permissions(&temp, fs::Permissions::from_mode(mode)).map_err(io)?;
    fs::rename(&temp, dest).map_err(|e| io_error(dest, e))?;
    Ok(true)
}

pub(super) fn io_error(path: &Path, source: io::Error) -> FetchError {
    FetchError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_good_url_per_name() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path());
        cache.ensure_dirs().expect("creates");
        let url: Url = "https://h.example/ak".parse().expect("a URL");
        assert_eq!(cache.last_good("ak"), None);
        cache.remember("ak", &url);
        let reopened = Cache::new(dir.path());
        assert_eq!(reopened.last_good("ak").as_deref(), Some(url.as_str()));
        assert_eq!(reopened.last_good("other"), None);
    }

    #[test]
    fn a_copy_is_made_only_of_bytes_that_still_match() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let source = dir.path().join("cached");
        fs::write(&source, b"tool").expect("write");
        let dest = dir.path().join("ak");
        let digest = Sha256Digest::of(b"tool");
        assert!(copy_verified(&source, &dest, &digest, 0o755).expect("copies"));
        assert_eq!(fs::read(&dest).expect("read"), b"tool");

        fs::write(&source, b"tampered").expect("write");
        let other = dir.path().join("ak2");
        assert!(!copy_verified(&source, &other, &digest, 0o755).expect("copies"));
        assert!(!other.exists());
        assert_eq!(
            fs::read_dir(dir.path()).expect("list").count(),
            2,
            "no temp file left"
        );
    }

    #[test]
    fn partial_files_are_kept_apart_per_url() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cache = Cache::new(dir.path());
        let digest = Sha256Digest::of(b"x");
        let a = cache.partial_path(Some(&digest), &"https://a.example/t".parse().unwrap());
        let b = cache.partial_path(Some(&digest), &"https://b.example/t".parse().unwrap());
        assert_ne!(a, b);
    }
}
