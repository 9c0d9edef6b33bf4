//! Where the run shim is found.
//!
//! The shim (the `run_shim` crate, built as the `headless-bridge-shim` executable) stands
//! between the bridge and each CLI it starts, as a child subreaper, so that no process of a
//! run outlives the run. It is a separate, small executable because it is started once per
//! run: the bridge's own binary takes milliseconds to load, the shim a fraction of one.
//!
//! Its command line is `headless-bridge-shim [--tty] [--run-as UID:GID] -- CLI [ARGS...]`.

use std::path::PathBuf;

/// The shim's file name, installed beside the bridge's.
pub const EXECUTABLE: &str = "headless-bridge-shim";

/// The shim installed beside the running executable, if there is one.
pub fn beside_current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let shim = exe.parent()?.join(EXECUTABLE);
    shim.is_file().then_some(shim)
}
