//! A run's own directory tree under the data directory, removed when the run is over, and the
//! disk limits that keep one run from filling the bridge's disk.
//!
//! ```text
//! workspaces/<run id>/      0700
//!   work/                   the repository clone, or an empty directory; the CLI's cwd
//!   bin/                    verified tools, first on PATH
//!   tools/<name>/           unpacked tool archives; bin/<name> links into them
//!   home/                   a private HOME, with shell profiles that keep bin/ on PATH
//!   codex-home/             a private CODEX_HOME with a copy of the login
//!   tmp/                    the run's TMPDIR
//!   out/                    files the CLI writes for the bridge (its last message)
//!   secrets/                0700: the git token or ssh key (0600) during the clone only
//! ```
//!
//! The limits are checked, not enforced by the kernel: free space before a clone, and the
//! tree's size while git writes it (see [`SizeWatch`]) and once the tools are in. Filling the
//! tree for a run is [`prepare`]'s.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod prepare;
mod spares;

pub(crate) use spares::{attached, passed_on};

use crate::adapter::codex::RunDirs;

/// How often a [`SizeWatch`] measures. A clone writes at most a few hundred MB/s, so a limit
/// is overshot by at most that much in this time.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Disk limits of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceLimits {
    /// The most a workspace's tree may take on disk while it is prepared.
    pub max_bytes: u64,
    /// The free space the data directory's file system must have before a clone starts.
    pub min_free_bytes: u64,
    /// The largest file a run may declare as an artifact.
    pub artifact_max_bytes: u64,
}

impl Default for WorkspaceLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 30,
            min_free_bytes: 1 << 30,
            artifact_max_bytes: 16 << 20,
        }
    }
}

/// A run's directory tree.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    pub dirs: RunDirs,
}

impl Workspace {
    /// Creates the tree for `id` (a run's or a session's) under `workspaces_dir`, from a spare
    /// tree when there is one.
    pub fn create(workspaces_dir: &Path, id: impl std::fmt::Display) -> io::Result<Self> {
        let root = workspaces_dir.join(id.to_string());
        let dirs = RunDirs {
            work: root.join("work"),
            bin: root.join("bin"),
            home: root.join("home"),
            codex_home: root.join("codex-home"),
            tmp: root.join("tmp"),
            last_message: root.join("out").join("last-message.txt"),
        };
        if spares::take(workspaces_dir, &root) {
            return Ok(Self { root, dirs });
        }
        fs::create_dir_all(workspaces_dir)?;
        fs::create_dir(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
        // The work directory is left for `git clone` to create when there is a repository.
        let mut builder = fs::DirBuilder::new();
        builder.mode(spares::SKELETON_MODE);
        for name in spares::SKELETON {
            builder.create(root.join(name))?;
        }
        Ok(Self { root, dirs })
    }

    /// The workspace's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory an archive tool `name` is unpacked into (not yet created).
    pub fn tool_dir(&self, name: &str) -> PathBuf {
        self.root.join("tools").join(name)
    }

    /// A private directory (0700) for files that hold secrets, outside the CLI's work tree.
    pub fn secrets_dir(&self) -> io::Result<PathBuf> {
        let dir = self.root.join("secrets");
        if !dir.exists() {
            fs::create_dir(&dir)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(dir)
    }

    /// Removes the tree: whatever the run put in it goes, and the empty skeleton is kept as a
    /// spare for a later run when it is exactly as [`Workspace::create`] made it.
    pub fn remove(self) -> io::Result<()> {
        if spares::recycle(&self.root) {
            return Ok(());
        }
        remove_tree(&self.root)
    }
}

/// Removes the tree at `path`, links not followed, even where a run took the owner's write or
/// search permission off directories in it: those of the bridge's get it back first. (A run
/// that made its workspace unremovable would otherwise leave its login and prompt on disk.)
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            give_directories_back(path);
            fs::remove_dir_all(path)
        }
        other => other,
    }
}

fn give_directories_back(root: &Path) {
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mode = (meta.mode() & 0o7777) | 0o700;
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode));
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
}

/// The bytes free to an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let stats = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(stats.blocks_available() * stats.fragment_size())
}

/// The space a tree takes on disk (allocated blocks, so sparse files count as what they use).
/// Entries that vanish while it walks are skipped: git renames files as it writes.
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = fs::read_dir(path).into_iter().flatten().flatten();
    own + children.map(|entry| disk_usage(&entry.path())).sum::<u64>()
}

/// Watches a tree while something writes it, and tells when it passes a limit.
#[derive(Debug, Clone)]
pub struct SizeWatch {
    pub dir: PathBuf,
    pub limit: u64,
    /// How often it measures; every 200 ms unless set.
    pub interval: Option<Duration>,
}

impl SizeWatch {
    /// A watch that measures `dir` every `interval`.
    pub fn every(dir: PathBuf, limit: u64, interval: Duration) -> Self {
        Self {
            dir,
            limit,
            interval: Some(interval),
        }
    }

    /// Resolves with the measured size once the tree is larger than the limit; never resolves
    /// otherwise. Measuring runs on the blocking pool: a large tree takes a while to walk.
    pub async fn exceeded(&self) -> u64 {
        let mut ticks = tokio::time::interval(self.interval.unwrap_or(WATCH_INTERVAL));
        loop {
            ticks.tick().await;
            let dir = self.dir.clone();
            let used = tokio::task::spawn_blocking(move || disk_usage(&dir))
                .await
                .unwrap_or(0);
            if used > self.limit {
                return used;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_whose_directories_lost_their_owners_permissions_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/auth.json"), "{}").unwrap();
        for (path, mode) in [("a/b", 0o000), ("a", 0o500)] {
            fs::set_permissions(root.join(path), fs::Permissions::from_mode(mode)).unwrap();
        }
        // Root removes it regardless; the bridge's own user needs the permissions back.
        give_directories_back(&root);
        for path in ["a", "a/b"] {
            let mode = fs::metadata(root.join(path)).unwrap().mode();
            assert_eq!(mode & 0o700, 0o700, "{path}");
        }
        remove_tree(&root).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn disk_usage_counts_nested_files() {
        let dir = tempfile::tempdir().expect("a temp dir");
        fs::create_dir(dir.path().join("a")).expect("mkdir");
        fs::write(dir.path().join("a/big"), vec![1u8; 256 << 10]).expect("write");
        let used = disk_usage(dir.path());
        assert!(used >= 256 << 10, "{used}");
    }

    #[test]
    fn free_space_is_measured() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
    }

    #[tokio::test]
    async fn a_watch_fires_once_the_tree_passes_its_limit() {
        let dir = tempfile::tempdir().expect("a temp dir");
        fs::write(dir.path().join("f"), vec![1u8; 64 << 10]).expect("write");
        let watch = SizeWatch {
            dir: dir.path().to_owned(),
            limit: 4096,
            interval: None,
        };
        assert!(watch.exceeded().await > 4096);
    }
}
