//! Spare workspace trees: the empty skeleton of a finished run's workspace, kept for the next
//! run instead of being removed and made again.
//!
//! Why: every run would otherwise create and delete the same handful of directories. Creating
//! an inode is not free, and on ext4 without a journal it is expensive after many deletions:
//! the allocator reads the inode table to skip every inode freed in the last half minute, so
//! at a few hundred runs a second, making a workspace cost milliseconds of kernel time. A
//! recycled skeleton costs two renames.
//!
//! A tree is recycled only when it is exactly what [`super::Workspace::create`] makes once the
//! run's files are gone: the root and the skeleton's directories, real directories owned by
//! the bridge with their original modes, and nothing else. Anything unexpected (a run that
//! changed a mode, ran as another user, or left a file the bridge cannot remove) and the tree
//! is removed as before. The shell profiles in `home` are kept as files to be overwritten,
//! when they are plain files of the bridge's with one link, so no other file can be reached
//! through them.
//!
//! Spares live in `workspaces/.spare/`, which the bridge empties at start-up with the rest of
//! `workspaces/`.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The directories a fresh workspace has, below its root.
pub(super) const SKELETON: [&str; 5] = ["bin", "home", "codex-home", "tmp", "out"];
/// Their mode, and the root's.
pub(super) const SKELETON_MODE: u32 = 0o700;
/// Files of `home` that every run overwrites (the shell profiles), kept in a spare.
const KEPT_IN_HOME: [&str; 2] = [".bash_profile", ".profile"];
/// Spare trees kept at most; past that a finished tree is removed.
const MAX_SPARES: usize = 64;
/// The directory of spare trees, beside the workspaces.
const SPARES: &str = ".spare";

/// Moves a spare tree to `root`; false when there is none.
pub(super) fn take(workspaces_dir: &Path, root: &Path) -> bool {
    let Ok(entries) = fs::read_dir(workspaces_dir.join(SPARES)) else {
        return false;
    };
    // Another thread may take the same spare first: its rename wins, ours fails, try the next.
    entries
        .filter_map(Result::ok)
        .any(|entry| fs::rename(entry.path(), root).is_ok())
}

/// Empties the tree at `root` and keeps it as a spare; false when it cannot be (the caller
/// then removes it).
pub(super) fn recycle(root: &Path) -> bool {
    let Some(spares) = root.parent().map(|dir| dir.join(SPARES)) else {
        return false;
    };
    let Some(name) = root.file_name() else {
        return false;
    };
    let room = match fs::read_dir(&spares) {
        Ok(entries) => entries.count() < MAX_SPARES,
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&spares).is_ok(),
        Err(_) => false,
    };
    room && empty_to_skeleton(root).is_ok_and(|clean| clean)
        && fs::rename(root, spares.join(name)).is_ok()
}

/// Removes everything the run added to the tree at `root`; true when what is left is the
/// skeleton as it was made.
fn empty_to_skeleton(root: &Path) -> io::Result<bool> {
    let owner = nix::unistd::geteuid().as_raw();
    let ours = |meta: &fs::Metadata| {
        meta.is_dir() && meta.uid() == owner && meta.mode() & 0o7777 == SKELETON_MODE
    };
    if !ours(&fs::symlink_metadata(root)?) {
        return Ok(false);
    }
    let mut skeleton_left = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if SKELETON.contains(&name) && ours(&meta) {
            let keep: &[&str] = if name == "home" { &KEPT_IN_HOME } else { &[] };
            empty_dir(&entry.path(), keep, owner)?;
            skeleton_left += 1;
        } else {
            remove_any(entry.path(), &meta)?;
        }
    }
    Ok(skeleton_left == SKELETON.len())
}

/// Removes every entry of `dir` but the plain files named in `keep`.
fn empty_dir(dir: &Path, keep: &[&str], owner: u32) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        let kept = entry
            .file_name()
            .to_str()
            .is_some_and(|n| keep.contains(&n))
            && meta.is_file()
            && meta.nlink() == 1
            && meta.uid() == owner;
        if kept {
            // Readable by the bridge alone until the next run writes it again.
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
        } else {
            remove_any(entry.path(), &meta)?;
        }
    }
    Ok(())
}

fn remove_any(path: PathBuf, meta: &fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Workspace;
    use super::*;
    use std::os::unix::fs::symlink;

    fn spares(dir: &Path) -> usize {
        fs::read_dir(dir.join(SPARES)).map_or(0, Iterator::count)
    }

    #[test]
    fn a_finished_tree_is_emptied_and_reused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let first = Workspace::create(dir.path(), "one").expect("create");
        let first_home_inode = fs::metadata(&first.dirs.home).expect("home").ino();
        fs::create_dir(&first.dirs.work).expect("work");
        fs::write(first.dirs.work.join("file"), "x").expect("a file");
        fs::create_dir_all(first.dirs.tmp.join("a/b")).expect("nested");
        fs::write(first.dirs.home.join(".profile"), "profile").expect("profile");
        fs::write(first.dirs.home.join(".history"), "secret").expect("history");
        first.secrets_dir().expect("secrets");
        first.remove().expect("remove");
        assert!(!dir.path().join("one").exists());
        assert_eq!(spares(dir.path()), 1);

        let second = Workspace::create(dir.path(), "two").expect("create");
        assert_eq!(spares(dir.path()), 0);
        assert_eq!(
            fs::metadata(&second.dirs.home).expect("home").ino(),
            first_home_inode,
            "the spare was reused"
        );
        let mut left: Vec<String> = fs::read_dir(second.root())
            .expect("root")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, ["bin", "codex-home", "home", "out", "tmp"]);
        assert_eq!(fs::read_dir(&second.dirs.tmp).expect("tmp").count(), 0);
        let home: Vec<_> = fs::read_dir(&second.dirs.home)
            .expect("home")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(home, [".profile"], "only the profile, to be overwritten");
    }

    /// Something a run does to its tree.
    type Change = fn(&Workspace);

    #[test]
    fn a_tree_a_run_changed_is_removed_not_reused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let cases: [(&str, Change); 4] = [
            ("mode", |w| {
                fs::set_permissions(&w.dirs.tmp, fs::Permissions::from_mode(0o777)).expect("chmod")
            }),
            ("symlinked", |w| {
                fs::remove_dir(&w.dirs.bin).expect("rmdir");
                symlink("/", &w.dirs.bin).expect("symlink");
            }),
            ("missing", |w| {
                fs::remove_dir(&w.dirs.codex_home).expect("rmdir")
            }),
            ("root mode", |w| {
                fs::set_permissions(w.root(), fs::Permissions::from_mode(0o755)).expect("chmod")
            }),
        ];
        for (name, change) in cases {
            let workspace = Workspace::create(dir.path(), name).expect("create");
            change(&workspace);
            workspace.remove().expect("remove");
            assert!(!dir.path().join(name).exists(), "{name}");
            assert_eq!(spares(dir.path()), 0, "{name} was kept as a spare");
        }
    }

    #[test]
    fn a_linked_profile_is_not_kept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let outside = dir.path().join("outside");
        fs::write(&outside, "not the run's").expect("a file");
        let workspace = Workspace::create(dir.path(), "run").expect("create");
        fs::hard_link(&outside, workspace.dirs.home.join(".profile")).expect("link");
        workspace.remove().expect("remove");
        let next = Workspace::create(dir.path(), "next").expect("create");
        assert!(!next.dirs.home.join(".profile").exists());
        assert_eq!(fs::read_to_string(&outside).expect("read"), "not the run's");
    }
}
