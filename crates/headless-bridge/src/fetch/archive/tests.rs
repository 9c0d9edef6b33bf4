//! Archives crafted the way an attacker would, written byte by byte where the builders
//! themselves refuse bad paths.

use std::io::Write as _;

use rstest::rstest;

use super::*;

/// A tar entry of this crate's making: (kind, path, contents or link target).
enum Entry {
    File(&'static str, &'static [u8]),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Fifo(&'static str),
}

fn raw_header(kind: tar::EntryType, path: &str, link: &str, size: u64) -> tar::Header {
    let mut header = tar::Header::new_old();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(0o755);
    // Written directly: the builder's own setters refuse `..` and absolute paths.
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_cksum();
    header
}

fn tar_gz(dir: &Path, entries: &[Entry]) -> PathBuf {
    let path = dir.join("tool.tar.gz");
    let gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), Default::default());
    let mut builder = tar::Builder::new(gz);
    for entry in entries {
        let (header, data): (tar::Header, &[u8]) = match entry {
            Entry::File(p, data) => (
                raw_header(tar::EntryType::Regular, p, "", data.len() as u64),
                data,
            ),
            Entry::Symlink(p, t) => (raw_header(tar::EntryType::Symlink, p, t, 0), &[]),
            Entry::Hardlink(p, t) => (raw_header(tar::EntryType::Link, p, t, 0), &[]),
            Entry::Fifo(p) => (raw_header(tar::EntryType::Fifo, p, "", 0), &[]),
        };
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    path
}

fn zip_file(dir: &Path, files: &[(&str, &[u8])], links: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("tool.zip");
    let mut writer = zip::ZipWriter::new(File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    for (name, data) in files {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    for (name, target) in links {
        writer.add_symlink(*name, *target, options).unwrap();
    }
    writer.finish().unwrap();
    path
}

const TOOL: &[u8] = b"#!/bin/sh\necho ok\n";

#[test]
fn a_well_formed_tar_gz_unpacks_with_its_links_inside() {
    let dir = tempfile::tempdir().unwrap();
    let archive = tar_gz(
        dir.path(),
        &[
            Entry::File("ak-1.0/bin/ak-real", TOOL),
            Entry::File("ak-1.0/lib/data.txt", b"data"),
            Entry::Symlink("ak-1.0/bin/ak", "ak-real"),
            Entry::Symlink("ak-1.0/bin/lib", "../lib"),
            Entry::Hardlink("ak-1.0/bin/ak-copy", "ak-1.0/bin/ak-real"),
        ],
    );
    let dest = dir.path().join("out");
    let exe = unpack(&archive, &dest, "ak-1.0/bin/ak", 1 << 20).expect("unpacks");
    assert_eq!(fs::read(&exe).unwrap(), TOOL);
    let mode = fs::metadata(&exe).unwrap().permissions().mode();
    assert_eq!(mode & 0o755, 0o755);
    assert_eq!(
        fs::read(dest.join("ak-1.0/bin/lib/data.txt")).unwrap(),
        b"data"
    );
}

#[rstest]
#[case::dot_dot(&[Entry::File("../evil", TOOL)], "path")]
#[case::nested_dot_dot(&[Entry::File("a/../../evil", TOOL)], "path")]
#[case::absolute(&[Entry::File("/tmp/evil", TOOL)], "path")]
#[case::symlink_absolute(&[Entry::Symlink("ak", "/etc/passwd")], "link")]
#[case::symlink_up(&[Entry::Symlink("ak", "../../outside")], "link")]
#[case::symlink_chain(&[Entry::Symlink("d/y", ".."), Entry::Symlink("d/x", "y/..")], "link")]
#[case::hardlink_up(&[Entry::Hardlink("ak", "../outside")], "path")]
#[case::hardlink_to_nothing(&[Entry::Hardlink("ak", "missing")], "link")]
#[case::fifo(&[Entry::Fifo("ak")], "unsupported")]
fn a_hostile_tar_gz_is_refused_and_leaves_nothing(#[case] entries: &[Entry], #[case] why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let archive = tar_gz(dir.path(), entries);
    let dest = dir.path().join("out");
    let err = unpack(&archive, &dest, "ak", 1 << 20).expect_err("refused");
    let matched = match why {
        "path" => matches!(err, ArchiveError::PathEscapes(_)),
        "link" => matches!(err, ArchiveError::LinkEscapes(_)),
        _ => matches!(err, ArchiveError::Unsupported { .. }),
    };
    assert!(matched, "{err:?}");
    assert!(!dest.exists(), "the partial directory must be removed");
    assert!(!dir.path().join("evil").exists() && !Path::new("/tmp/evil").exists());
}

#[test]
fn an_archive_bomb_stops_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let big: &'static [u8] = Box::leak(vec![0u8; 4096].into_boxed_slice());
    let archive = tar_gz(dir.path(), &[Entry::File("ak", big)]);
    let err = unpack(&archive, &dir.path().join("out"), "ak", 1000).expect_err("too big");
    assert!(
        matches!(err, ArchiveError::TooLarge { limit: 1000 }),
        "{err:?}"
    );
}

#[rstest]
#[case::missing("bin/other")]
#[case::a_directory("bin")]
#[case::escaping("../ak")]
fn the_named_executable_must_be_a_file_inside(#[case] executable: &str) {
    let dir = tempfile::tempdir().unwrap();
    let archive = tar_gz(dir.path(), &[Entry::File("bin/ak", TOOL)]);
    let err = unpack(&archive, &dir.path().join("out"), executable, 1 << 20).expect_err("refused");
    assert!(
        matches!(
            err,
            ArchiveError::NoExecutable(_) | ArchiveError::PathEscapes(_)
        ),
        "{err:?}"
    );
}

#[test]
fn a_zip_unpacks_and_its_escaping_links_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = zip_file(dir.path(), &[("bin/ak", TOOL)], &[("ak", "bin/ak")]);
    let exe = unpack(&good, &dir.path().join("good"), "ak", 1 << 20).expect("unpacks");
    assert_eq!(fs::read(exe).unwrap(), TOOL);

    let bad_link = zip_file(
        dir.path(),
        &[("bin/ak", TOOL)],
        &[("ak", "../../etc/passwd")],
    );
    let err = unpack(&bad_link, &dir.path().join("bad"), "bin/ak", 1 << 20).expect_err("refused");
    assert!(matches!(err, ArchiveError::LinkEscapes(_)), "{err:?}");

    let bad_path = zip_file(dir.path(), &[("../evil", TOOL)], &[]);
    let err = unpack(&bad_path, &dir.path().join("bad2"), "evil", 1 << 20).expect_err("refused");
    assert!(matches!(err, ArchiveError::PathEscapes(_)), "{err:?}");
}

#[test]
fn a_plain_file_is_no_archive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ak");
    fs::write(&path, TOOL).unwrap();
    let err = unpack(&path, &dir.path().join("out"), "ak", 1 << 20).expect_err("refused");
    assert!(matches!(err, ArchiveError::UnknownFormat), "{err:?}");
}
