//! Reaping orphans when the bridge is PID 1 in a container.
//!
//! A process whose parent dies is handed to PID 1, which must wait for it or it stays a zombie
//! forever. When the bridge is PID 1 (a container started without an init such as tini), the
//! processes that runs leave behind and the sweep kills end up as its children. The reaper
//! waits for them, on every SIGCHLD and every few seconds.
//!
//! It must not wait for the bridge's own children, whose exit status tokio is waiting for.
//! So every spawn goes through [`spawn`], which registers the child's pid under a read lock;
//! the reaper scans and reaps under the write lock, and leaves registered pids alone. A child
//! therefore cannot exit and be reaped by mistake between its spawn and its registration.

use std::collections::HashSet;
use std::io;
use std::sync::{LazyLock, Mutex, RwLock};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// How often the reaper looks even without a SIGCHLD (signals coalesce).
const SCAN_INTERVAL: Duration = Duration::from_secs(5);

static SPAWN_LOCK: RwLock<()> = RwLock::new(());
static OURS: LazyLock<Mutex<HashSet<i32>>> = LazyLock::new(Default::default);

/// Spawns a child through `command` and registers it as the bridge's own.
pub fn spawn(command: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    spawn_with(|| command.spawn(), tokio::process::Child::id)
}

/// Spawns a child with `spawn` (a pseudo-terminal's, say) and registers the pid `pid` finds.
pub fn spawn_with<T>(
    spawn: impl FnOnce() -> io::Result<T>,
    pid: impl FnOnce(&T) -> Option<u32>,
) -> io::Result<T> {
    let _guard = SPAWN_LOCK
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let child = spawn()?;
    if let Some(pid) = pid(&child) {
        lock_ours().insert(pid as i32);
    }
    Ok(child)
}

/// Forgets a child the bridge has waited for, so its pid may be reaped if it is reused.
pub fn forget(pid: Option<u32>) {
    if let Some(pid) = pid {
        lock_ours().remove(&(pid as i32));
    }
}

/// Starts the reaper if this process is PID 1; returns whether it did.
pub fn start_if_init() -> bool {
    if std::process::id() != 1 {
        return false;
    }
    tokio::spawn(async {
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .expect("a SIGCHLD handler installs");
        let mut interval = tokio::time::interval(SCAN_INTERVAL);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = interval.tick() => {}
            }
            let reaped = tokio::task::spawn_blocking(reap_orphans).await.unwrap_or(0);
            if reaped > 0 {
                tracing::debug!(reaped, "reaped orphaned processes");
            }
        }
    });
    true
}

/// Waits for every zombie child of this process that is not one of its own spawns.
fn reap_orphans() -> usize {
    let _guard = SPAWN_LOCK
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let me = std::process::id() as i32;
    let ours = lock_ours().clone();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let zombies = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| matches!(parent_and_state(*pid), Some((parent, 'Z')) if parent == me));
    zombies
        .filter(|pid| waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)).is_ok())
        .count()
}

/// The parent pid and state letter from `/proc/<pid>/stat`. The command name may hold spaces
/// and parentheses, so fields are counted from the last ')'.
fn parent_and_state(pid: i32) -> Option<(i32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((parent, state))
}

fn lock_ours() -> std::sync::MutexGuard<'static, HashSet<i32>> {
    OURS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parent_and_state_from_proc() {
        let (parent, state) = parent_and_state(std::process::id() as i32).expect("our own stat");
        assert_eq!(parent, nix::unistd::getppid().as_raw());
        assert!(matches!(state, 'R' | 'S'), "{state}");
    }
}
