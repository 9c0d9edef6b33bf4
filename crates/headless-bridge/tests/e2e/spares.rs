//! What a run can leave in its workspace tree for the run that gets the tree next, once the
//! bridge has emptied it to a spare skeleton: real runs of a Python profile through the bridge,
//! one after the other on the same recycled tree.

use std::path::Path;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{BridgeBuilder, TestBridge};

/// Leaves (`leave`) or looks for (`look`) what a run can attach to the directories of its tree
/// and to its kept shell profile, rather than put in them: extended attributes, a default ACL
/// that gives every file made in `TMPDIR` afterwards mode 0666 (umask ignored), and the inode
/// flag that makes every write in `TMPDIR` synchronous (`chattr +S`). Or grows `HOME` with
/// many names (`grow`), which ext4 never shrinks again.
/// Prints the inode of `HOME`, so the test knows the second run got the first one's tree.
const ATTACH: &str = r#"
import array, fcntl, json, os, stat, struct, subprocess, sys
tmp, home = os.environ["TMPDIR"], os.environ["HOME"]
places = [tmp, home, os.path.join(home, ".profile")]
if sys.argv[1] == "leave":
    for place in places:
        os.setxattr(place, "user.left", b"run-a-was-here", follow_symlinks=False)
    entry = lambda tag: struct.pack("<HHI", tag, 7, 0xFFFFFFFF)
    acl = struct.pack("<I", 2) + entry(0x01) + entry(0x04) + entry(0x20)
    os.setxattr(tmp, "system.posix_acl_default", acl)
    subprocess.run(["/usr/bin/chattr", "+S", tmp], check=True)
    seen = dict()
elif sys.argv[1] == "grow":
    for n in range(300):
        open(os.path.join(home, "%0120d" % n), "w").close()
    seen = dict()
else:
    seen = {place: os.listxattr(place, follow_symlinks=False) for place in places}
made = os.path.join(tmp, "made")
with open(made, "w"):
    pass
flags = array.array("l", [0])
tmp_dir = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
fcntl.ioctl(tmp_dir, 0x80086601, flags)  # FS_IOC_GETFLAGS
os.close(tmp_dir)
print(json.dumps({
    "tmp_sync": bool(flags[0] & 0x8),  # FS_SYNC_FL
    "home_size": os.stat(home).st_size,
    "home_inode": os.stat(home).st_ino,
    "xattrs": seen,
    "made_mode": oct(stat.S_IMODE(os.stat(made).st_mode)),
}))
"#;

/// A profile running the Python `script`; the prompt is its `sys.argv[1]`.
fn python_profile(dir: &Path, name: &str, script: &str) {
    let text = format!(
        "description = \"test CLI\"\nexecutable = \"/usr/bin/python3\"\n\
         args = [\"-c\", {script:?}, \"{{prompt}}\"]\n"
    );
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

/// A bridge with one run slot: a finished run holds it until its tree is a spare, so each run
/// starts on the tree of the run before.
async fn bridge_with(profiles: &TempDir) -> TestBridge {
    BridgeBuilder::new()
        .var("HB_ADAPTERS_DIR", profiles.path().display().to_string())
        .var("HB_MAX_CONCURRENT_RUNS", "1")
        .start()
        .await
}

/// Runs `prompt` with `adapter` and returns what the script printed, as JSON.
async fn run_printing(bridge: &TestBridge, adapter: &str, prompt: &str) -> Value {
    let run = bridge
        .run_to_end(&json!({"adapter": adapter, "prompt": prompt}))
        .await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    serde_json::from_str(run["output"].as_str().unwrap()).unwrap()
}

/// Regression: a recycled tree kept the extended attributes and the default ACL the previous
/// run had put on its directories and profile, so the next run read them and made its files
/// with the modes the previous run chose.
#[tokio::test]
async fn a_recycled_tree_carries_no_attribute_or_acl_of_the_run_before() {
    let profiles = tempfile::tempdir().unwrap();
    python_profile(profiles.path(), "attach", ATTACH);
    let bridge = bridge_with(&profiles).await;

    // A clean tree is recycled: the second run of a pair gets the first one's tree.
    let first = run_printing(&bridge, "attach", "look").await;
    let second = run_printing(&bridge, "attach", "look").await;
    assert_eq!(first["home_inode"], second["home_inode"], "not recycled");

    let leaving = run_printing(&bridge, "attach", "leave").await;
    assert_eq!(leaving["made_mode"], "0o666", "the ACL took: {leaving}");
    let after = run_printing(&bridge, "attach", "look").await;

    let xattrs = after["xattrs"].as_object().unwrap();
    assert!(
        xattrs.values().all(|names| names == &json!([])),
        "the run before left attributes: {after}"
    );
    assert_eq!(leaving["tmp_sync"], true, "chattr took: {leaving}");
    assert_eq!(
        after["tmp_sync"], false,
        "the run before made writes synchronous"
    );
    assert_eq!(
        after["made_mode"], first["made_mode"],
        "the run before chose the modes: {after}"
    );
}

/// Regression: a run that made many names in a directory of its tree left the next run a
/// directory as large as they had made it (ext4 never shrinks one), counted in its workspace's
/// size and read through at every listing.
#[tokio::test]
async fn a_directory_a_run_grew_is_not_handed_to_the_next_run() {
    let profiles = tempfile::tempdir().unwrap();
    python_profile(profiles.path(), "attach", ATTACH);
    let bridge = bridge_with(&profiles).await;

    let first = run_printing(&bridge, "attach", "look").await;
    let grown = run_printing(&bridge, "attach", "grow").await;
    assert_eq!(first["home_inode"], grown["home_inode"], "not recycled");
    assert!(
        grown["home_size"].as_u64() > first["home_size"].as_u64(),
        "the names grew HOME: {grown}"
    );
    let after = run_printing(&bridge, "attach", "look").await;

    assert_eq!(
        after["home_size"], first["home_size"],
        "HOME kept the size the run before gave it: {after}"
    );
}
