//! A run's own directory tree under the data directory, removed when the run is over.
//!
//! ```text
//! workspaces/<run id>/      0700
//!   work/                   the repository clone, or an empty directory; the CLI's cwd
//!   bin/                    verified tools, first on PATH
//!   home/                   a private HOME, with shell profiles that keep bin/ on PATH
//!   codex-home/             a private CODEX_HOME with a copy of the login
//!   tmp/                    the run's TMPDIR
//!   out/                    files the CLI writes for the bridge (its last message)
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::adapter::codex::RunDirs;
use crate::run::RunId;

/// A run's directory tree.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    pub dirs: RunDirs,
}

impl Workspace {
    /// Creates the tree for `id` under `workspaces_dir`.
    pub fn create(workspaces_dir: &Path, id: RunId) -> io::Result<Self> {
        let root = workspaces_dir.join(id.to_string());
        fs::create_dir_all(workspaces_dir)?;
        fs::create_dir(&root)?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;

        let dirs = RunDirs {
            work: root.join("work"),
            bin: root.join("bin"),
            home: root.join("home"),
            codex_home: root.join("codex-home"),
            tmp: root.join("tmp"),
            last_message: root.join("out").join("last-message.txt"),
        };
        // The work directory is left for `git clone` to create when there is a repository.
        for dir in [
            &dirs.bin,
            &dirs.home,
            &dirs.codex_home,
            &dirs.tmp,
            &root.join("out"),
        ] {
            fs::create_dir(dir)?;
        }
        Ok(Self { root, dirs })
    }

    /// The workspace's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Removes the whole tree.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_dir_all(&self.root)
    }
}
