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
//! What a run attaches to a directory rather than puts in it counts as unexpected too, since
//! emptying the directory leaves it: extended attributes (data the next run could read) and
//! ACLs (a default ACL decides the modes of the next run's files, and does not show in the
//! mode), and inode flags (`chattr`: synchronous writes, say) beyond those the directory got
//! from its parent. A kept profile with an attribute, or larger than the bridge writes one, is
//! removed instead. A directory grown past one block by the names a run made in it makes the
//! tree go.
//!
//! Spares live in `workspaces/.spare/`, which the bridge empties at start-up with the rest of
//! `workspaces/`.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use rustix::fs::IFlags;

/// The directories a fresh workspace has, below its root.
pub(super) const SKELETON: [&str; 5] = ["bin", "home", "codex-home", "tmp", "out"];
/// Their mode, and the root's.
pub(super) const SKELETON_MODE: u32 = 0o700;
/// Files of `home` that every run overwrites (the shell profiles), kept in a spare.
const KEPT_IN_HOME: [&str; 2] = [".bash_profile", ".profile"];
/// The largest profile kept: the bridge writes a few hundred bytes. One a run filled would
/// hold its disk space in the spare, outside any run, until a later run took the tree.
const MAX_KEPT_FILE_BYTES: u64 = 4096;
/// Spare trees kept at most; past that a finished tree is removed.
const MAX_SPARES: usize = 64;
/// The directory of spare trees, beside the workspaces.
const SPARES: &str = ".spare";
/// The largest a skeleton directory may be to be kept: one block, what ext4 gives a new one.
/// A directory that held many names keeps the blocks they took once they are gone (ext4 never
/// shrinks one), and the next run would inherit its size.
const MAX_DIR_BYTES: u64 = 4096;
/// Extended attributes that are not a run's: the labels security modules give every file.
const SECURITY_LABELS: [&[u8]; 3] = [
    b"security.selinux",
    b"security.apparmor",
    b"security.SMACK64",
];
/// Inode flags a run may set on its directories (chattr(1); the others need privileges the
/// bridge's runs do not have, or change nothing for the next run).
const RUN_SETTABLE_FLAGS: IFlags = IFlags::APPEND
    .union(IFlags::IMMUTABLE)
    .union(IFlags::SYNC)
    .union(IFlags::DIRSYNC)
    .union(IFlags::NOATIME)
    .union(IFlags::NODUMP)
    .union(IFlags::TOPDIR)
    .union(IFlags::PROJECT_INHERIT)
    .union(IFlags::JOURNALING)
    .union(IFlags::COMPRESSED)
    .union(IFlags::NOCOW);
/// Those of them a new directory takes from its parent (ext4's `EXT4_FL_INHERITED`, btrfs's
/// `NOCOW` and `COMPRESSED`), so a fresh skeleton has them when `workspaces/` has.
const INHERITED_FLAGS: IFlags = IFlags::SYNC
    .union(IFlags::DIRSYNC)
    .union(IFlags::NOATIME)
    .union(IFlags::NODUMP)
    .union(IFlags::PROJECT_INHERIT)
    .union(IFlags::JOURNALING)
    .union(IFlags::COMPRESSED)
    .union(IFlags::NOCOW);

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
    let parent = root.parent().unwrap_or(root);
    let inherited = flags(parent)? & INHERITED_FLAGS;
    let ours = |path: &Path, meta: &fs::Metadata| -> io::Result<bool> {
        Ok(meta.is_dir()
            && meta.uid() == owner
            && meta.mode() & 0o7777 == SKELETON_MODE
            && meta.len() <= MAX_DIR_BYTES
            && !has_attributes(path)?
            && flags(path)? & RUN_SETTABLE_FLAGS == inherited)
    };
    if !ours(root, &fs::symlink_metadata(root)?)? {
        return Ok(false);
    }
    let mut skeleton_left = 0;
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or_default();
        if SKELETON.contains(&name) && ours(&entry.path(), &meta)? {
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
            && meta.uid() == owner
            && meta.len() <= MAX_KEPT_FILE_BYTES
            && !has_attributes(&entry.path())?;
        if kept {
            // Readable by the bridge alone until the next run writes it again.
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
        } else {
            remove_any(entry.path(), &meta)?;
        }
    }
    Ok(())
}

/// Whether `path` (not followed if a link) carries an extended attribute a run may have set:
/// any but the labels a security module gives every file.
fn has_attributes(path: &Path) -> io::Result<bool> {
    let mut names = [0_u8; 1024];
    foreign_attributes(rustix::fs::llistxattr(path, &mut names[..]), &names)
}

/// Whether the names a listxattr(2) call `listed` into `names` hold one a run may have set.
fn foreign_attributes(listed: rustix::io::Result<usize>, names: &[u8]) -> io::Result<bool> {
    let len = match listed {
        Ok(len) => len,
        // More names than fit are more than a label.
        Err(rustix::io::Errno::RANGE) => return Ok(true),
        Err(rustix::io::Errno::NOTSUP) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(names[..len]
        .split(|b| *b == 0)
        .any(|name| !name.is_empty() && !SECURITY_LABELS.contains(&name)))
}

/// The inode flags (chattr(1)) of the directory at `path`, not followed if it is a link.
fn flags(path: &Path) -> io::Result<IFlags> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
        .open(path)?;
    match rustix::fs::ioctl_getflags(&dir) {
        Ok(flags) => Ok(flags),
        // A file system without inode flags: nothing to compare.
        Err(rustix::io::Errno::NOTTY | rustix::io::Errno::NOTSUP) => Ok(IFlags::empty()),
        Err(e) => Err(e.into()),
    }
}

/// The inode flags a directory made in `dir` takes from it, among those a run can set.
pub(crate) fn passed_on(dir: &Path) -> io::Result<IFlags> {
    Ok(flags(dir)? & INHERITED_FLAGS)
}

/// Whether the directory or regular file open as `fd` carries what a run can attach to it
/// rather than put in it: an extended attribute other than a security label (an ACL is one),
/// or an inode flag beyond `passed_on`.
pub(crate) fn attached(fd: std::os::fd::BorrowedFd<'_>, passed_on: IFlags) -> io::Result<bool> {
    let mut names = [0_u8; 1024];
    if foreign_attributes(rustix::fs::flistxattr(fd, &mut names[..]), &names)? {
        return Ok(true);
    }
    let flags = match rustix::fs::ioctl_getflags(fd) {
        Ok(flags) => flags,
        Err(rustix::io::Errno::NOTTY | rustix::io::Errno::NOTSUP) => IFlags::empty(),
        Err(e) => return Err(e.into()),
    };
    Ok(!(flags & RUN_SETTABLE_FLAGS & !passed_on).is_empty())
}

fn remove_any(path: PathBuf, meta: &fs::Metadata) -> io::Result<()> {
    if meta.is_dir() {
        super::remove_tree(&path)
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
        let cases: [(&str, Change); 8] = [
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
            ("attribute", |w| {
                set_attribute(&w.dirs.home, "user.left", b"data")
            }),
            ("grown", |w| {
                for n in 0..200 {
                    fs::write(w.dirs.tmp.join(format!("{n:0120}")), "").expect("a file");
                }
            }),
            ("default acl", |w| {
                // The mode stays 0700: only the ACL says what the next files get.
                set_attribute(&w.dirs.tmp, "system.posix_acl_default", &open_acl());
            }),
            ("synchronous", |w| {
                let tmp = fs::File::open(&w.dirs.tmp).expect("open tmp");
                let flags = rustix::fs::ioctl_getflags(&tmp).expect("flags");
                rustix::fs::ioctl_setflags(&tmp, flags | IFlags::SYNC).expect("chattr +S");
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

    fn set_attribute(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty())
            .expect("setxattr");
    }

    /// A default ACL (the kernel's xattr form, see acl(5)) giving owner, group and others all
    /// rights.
    fn open_acl() -> Vec<u8> {
        let mut acl = 2_u32.to_le_bytes().to_vec();
        for tag in [0x01_u16, 0x04, 0x20] {
            acl.extend(tag.to_le_bytes());
            acl.extend(7_u16.to_le_bytes());
            acl.extend(u32::MAX.to_le_bytes());
        }
        acl
    }

    #[test]
    fn a_profile_with_an_attribute_is_not_kept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let workspace = Workspace::create(dir.path(), "run").expect("create");
        let profile = workspace.dirs.home.join(".profile");
        fs::write(&profile, "profile").expect("profile");
        set_attribute(&profile, "user.left", b"data");
        workspace.remove().expect("remove");
        let next = Workspace::create(dir.path(), "next").expect("create");
        assert_eq!(spares(dir.path()), 0, "the tree was reused");
        assert!(!next.dirs.home.join(".profile").exists());
    }

    /// Regression: a profile a run filled was kept in the spare at its size, disk held
    /// outside any run (up to 64 spares) until a later run took the tree.
    #[test]
    fn a_filled_profile_is_not_kept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let workspace = Workspace::create(dir.path(), "run").expect("create");
        let profile = workspace.dirs.home.join(".profile");
        fs::write(&profile, vec![b'#'; 1 << 20]).expect("a large profile");
        workspace.remove().expect("remove");
        assert_eq!(spares(dir.path()), 1, "the tree is still reused");
        let next = Workspace::create(dir.path(), "next").expect("create");
        assert!(!next.dirs.home.join(".profile").exists());
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
