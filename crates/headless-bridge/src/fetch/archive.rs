//! Unpacking a verified tool archive (tar.gz or zip) into the tool's own directory, safely.
//!
//! The archive is trusted to be what its digest says, not to be well-behaved: an entry whose
//! path is absolute or climbs with `..` is refused, as are devices and fifos. Regular files and
//! directories are written first; links come last, so no file is ever written through a link
//! the archive made. Every symbolic link must then resolve inside the tool's directory, and a
//! hard link may only name a file already unpacked. The total unpacked size is capped, against
//! archive bombs. Any refusal removes the whole directory. Finding the archive in the cache is
//! left to the fetcher; the format is told by the file's first bytes, not by its URL.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

/// Why an archive could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the file is neither a tar.gz nor a zip archive")]
    UnknownFormat,
    #[error("entry `{0}` has a path that is absolute or leaves the tool's directory")]
    PathEscapes(String),
    #[error("entry `{0}` is a link that points outside the tool's directory")]
    LinkEscapes(String),
    #[error("entry `{entry}` is a {kind}, which a tool archive may not hold")]
    Unsupported { entry: String, kind: &'static str },
    #[error("the archive unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the archive holds no regular file at `{0}`")]
    NoExecutable(String),
    #[error("the archive is corrupt: {0}")]
    Corrupt(String),
    #[error("failed to unpack to {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Archive formats, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TarGz,
    Zip,
}

impl Format {
    /// The format of the file at `path`.
    pub fn sniff(path: &Path) -> Result<Self, ArchiveError> {
        let mut magic = [0u8; 4];
        let mut file = File::open(path).map_err(io_at(path))?;
        file.read_exact(&mut magic)
            .map_err(|_| ArchiveError::UnknownFormat)?;
        match magic {
            [0x1f, 0x8b, ..] => Ok(Self::TarGz),
            [b'P', b'K', 3, 4] => Ok(Self::Zip),
            _ => Err(ArchiveError::UnknownFormat),
        }
    }
}

/// A link to create once every file is in place.
struct PendingLink {
    path: PathBuf,
    target: PathBuf,
    hard: bool,
    entry: String,
}

/// Unpacks `archive` into the new directory `dest` and returns the path of `executable`
/// inside it, made executable. On any error `dest` is removed.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    executable: &str,
    limit: u64,
) -> Result<PathBuf, ArchiveError> {
    let result = unpack_into(archive, dest, executable, limit);
    if result.is_err() {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_into(
    archive: &Path,
    dest: &Path,
    executable: &str,
    limit: u64,
) -> Result<PathBuf, ArchiveError> {
    let relative = safe_relative(executable)?;
    fs::create_dir_all(dest).map_err(io_at(dest))?;
    let mut unpacker = Unpacker {
        root: dest.to_owned(),
        limit,
        written: 0,
        links: Vec::new(),
    };
    match Format::sniff(archive)? {
        Format::TarGz => unpacker.tar_gz(archive)?,
        Format::Zip => unpacker.zip(archive)?,
    }
    unpacker.make_links()?;

    let exe = dest.join(relative);
    let inside = fs::canonicalize(&exe)
        .ok()
        .filter(|real| real.starts_with(canonical(dest)) && real.is_file());
    let real = inside.ok_or_else(|| ArchiveError::NoExecutable(executable.to_owned()))?;
    let mode = fs::metadata(&real)
        .map_err(io_at(&real))?
        .permissions()
        .mode();
    fs::set_permissions(&real, fs::Permissions::from_mode(mode | 0o755)).map_err(io_at(&real))?;
    Ok(exe)
}

struct Unpacker {
    root: PathBuf,
    limit: u64,
    written: u64,
    links: Vec<PendingLink>,
}

impl Unpacker {
    fn tar_gz(&mut self, path: &Path) -> Result<(), ArchiveError> {
        let file = File::open(path).map_err(io_at(path))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let entries = archive.entries().map_err(corrupt)?;
        for entry in entries {
            let mut entry = entry.map_err(corrupt)?;
            let name = entry.path().map_err(corrupt)?.display().to_string();
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644);
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    self.file(&name, &mut entry, mode)?
                }
                tar::EntryType::Directory => self.dir(&name)?,
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry.link_name().map_err(corrupt)?;
                    let target = target.ok_or_else(|| ArchiveError::Corrupt(name.clone()))?;
                    let hard = kind == tar::EntryType::Link;
                    self.link(&name, target.to_path_buf(), hard)?;
                }
                // Metadata of the archive itself, not a file.
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                _ => return Err(unsupported(name, kind_name(kind))),
            }
        }
        Ok(())
    }

    fn zip(&mut self, path: &Path) -> Result<(), ArchiveError> {
        let file = File::open(path).map_err(io_at(path))?;
        let mut archive = zip::ZipArchive::new(file).map_err(corrupt)?;
        for i in 0..archive.len() {
            let mut entry = archive.by_index(i).map_err(corrupt)?;
            let name = entry.name().map_err(corrupt)?.into_owned();
            if entry.is_dir() {
                self.dir(&name)?;
            } else if entry.is_symlink() {
                let mut target = String::new();
                entry.read_to_string(&mut target).map_err(corrupt)?;
                self.link(&name, PathBuf::from(target), false)?;
            } else if entry.is_file() {
                let mode = entry.unix_mode().unwrap_or(0o644);
                self.file(&name, &mut entry, mode)?;
            } else {
                return Err(unsupported(name, "special file"));
            }
        }
        Ok(())
    }

    fn file(&mut self, name: &str, reader: &mut dyn Read, mode: u32) -> Result<(), ArchiveError> {
        let path = self.root.join(safe_relative(name)?);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let mut out = File::create(&path).map_err(io_at(&path))?;
        let room = self.limit.saturating_sub(self.written);
        // One byte past the room tells "exactly full" from "too big".
        let copied = io::copy(&mut reader.take(room + 1), &mut out).map_err(io_at(&path))?;
        if copied > room {
            return Err(ArchiveError::TooLarge { limit: self.limit });
        }
        self.written += copied;
        // Only permission bits: no setuid, setgid or sticky bit from an archive.
        let mode = (mode & 0o777) | 0o600;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_at(&path))
    }

    fn dir(&mut self, name: &str) -> Result<(), ArchiveError> {
        let path = self.root.join(safe_relative(name)?);
        fs::create_dir_all(&path).map_err(io_at(&path))
    }

    fn link(&mut self, name: &str, target: PathBuf, hard: bool) -> Result<(), ArchiveError> {
        let path = self.root.join(safe_relative(name)?);
        if target.is_absolute() {
            return Err(ArchiveError::LinkEscapes(name.to_owned()));
        }
        self.links.push(PendingLink {
            path,
            target,
            hard,
            entry: name.to_owned(),
        });
        Ok(())
    }

    /// Creates the links, then checks that every symbolic one resolves inside the root: only
    /// the finished tree tells where a chain of links really leads.
    fn make_links(&mut self) -> Result<(), ArchiveError> {
        let root = canonical(&self.root);
        for link in &self.links {
            if let Some(parent) = link.path.parent() {
                fs::create_dir_all(parent).map_err(io_at(parent))?;
            }
            if link.hard {
                // A hard link's name is relative to the archive's root, like an entry's.
                let target = self
                    .root
                    .join(safe_relative(&link.target.to_string_lossy())?);
                let is_file = fs::symlink_metadata(&target).is_ok_and(|m| m.is_file());
                if !is_file {
                    return Err(ArchiveError::LinkEscapes(link.entry.clone()));
                }
                fs::hard_link(&target, &link.path).map_err(io_at(&link.path))?;
            } else {
                std::os::unix::fs::symlink(&link.target, &link.path).map_err(io_at(&link.path))?;
            }
        }
        for link in self.links.iter().filter(|l| !l.hard) {
            let resolved = fs::canonicalize(&link.path);
            if !resolved.is_ok_and(|real| real.starts_with(&root)) {
                return Err(ArchiveError::LinkEscapes(link.entry.clone()));
            }
        }
        Ok(())
    }
}

/// `name` as a relative path of plain components: no root, no `..`.
fn safe_relative(name: &str) -> Result<PathBuf, ArchiveError> {
    let path = Path::new(name);
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return Err(ArchiveError::PathEscapes(name.to_owned())),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(ArchiveError::PathEscapes(name.to_owned()));
    }
    Ok(clean)
}

fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn kind_name(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "fifo",
        _ => "special entry",
    }
}

fn unsupported(entry: String, kind: &'static str) -> ArchiveError {
    ArchiveError::Unsupported { entry, kind }
}

fn corrupt(err: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Corrupt(err.to_string())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
