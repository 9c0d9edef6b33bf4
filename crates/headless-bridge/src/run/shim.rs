//! The run shim: a small process between the bridge and a run's CLI that guarantees no process
//! of the run outlives it.
//!
//! The bridge starts `headless-bridge shim -- <cli> <args>` instead of the CLI. The shim makes
//! itself a child subreaper (see prctl(2), PR_SET_CHILD_SUBREAPER), so every process the CLI
//! starts stays its descendant even after a double fork, `setsid`, or a cleared environment:
//! orphans are re-parented to the shim, not to init. When the CLI exits, or the shim is asked
//! to stop, it kills whatever is left below it and reaps it, then exits with the CLI's status
//! (a signal N as 128 + N, as shells report it). If the bridge itself dies, the kernel sends
//! the shim SIGTERM (PR_SET_PDEATHSIG), and the run is cleaned up all the same.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// How long the CLI has to exit after the shim is asked to stop, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the shim keeps killing stragglers before it gives up on them.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(5);

/// How the shim runs its CLI.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The CLI runs on a terminal: the shim is then in the terminal's foreground process group
    /// with the CLI, so the keys that send SIGINT, SIGQUIT and SIGTSTP (Ctrl-C, Ctrl-\,
    /// Ctrl-Z) reach the shim too. They are meant for the CLI, so the shim ignores them; a
    /// hangup (SIGHUP, the terminal closed) stops the CLI like SIGTERM does.
    pub tty: bool,
    /// The user and group to start the CLI as.
    pub run_as: Option<(u32, u32)>,
}

/// Runs `program` under the shim and returns the exit code the shim should exit with.
pub fn main(program: OsString, args: Vec<OsString>, options: Options) -> i32 {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("headless-bridge shim: failed to become a subreaper: {e}");
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts");
    let code = runtime.block_on(supervise(program, args, options));
    kill_descendants();
    code
}

async fn supervise(program: OsString, args: Vec<OsString>, options: Options) -> i32 {
    let mut command = tokio::process::Command::new(&program);
    command.args(&args);
    if let Some((uid, gid)) = options.run_as {
        // The standard library sets the group before the user and drops root's supplementary
        // groups when it switches users.
        command.gid(gid).uid(uid);
    }
    // Handlers are installed before the CLI starts, so no signal finds the default action.
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler installs");
    let mut hangup = signal(SignalKind::hangup()).expect("a SIGHUP handler installs");
    if options.tty {
        // A handler that nobody reads swallows the signal; tokio keeps it for the process's life.
        for kind in [SignalKind::quit(), SignalKind::from_raw(libc::SIGTSTP)] {
            drop(signal(kind).expect("a job-control handler installs"));
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "headless-bridge shim: failed to start {}: {e}",
                program.to_string_lossy()
            );
            // 127 is what shells report for a command that could not be run.
            return 127;
        }
    };

    let status = tokio::select! {
        status = child.wait() => status,
        _ = term.recv() => stop(&mut child).await,
        _ = interrupt.recv(), if !options.tty => stop(&mut child).await,
        _ = hangup.recv() => stop(&mut child).await,
    };
    match status {
        Ok(status) => exit_code(status),
        Err(_) => 1,
    }
}

/// Passes the stop on to the CLI, then kills it if it has not exited within the grace period.
async fn stop(child: &mut tokio::process::Child) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Kills and reaps every process below the shim. Orphans keep arriving as their parents die,
/// so it looks again until none is left.
fn kill_descendants() {
    let give_up = Instant::now() + CLEANUP_PATIENCE;
    loop {
        let children = own_children();
        if children.is_empty() || Instant::now() > give_up {
            return;
        }
        for pid in &children {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        for pid in children {
            // Blocking is fine: SIGKILL cannot be ignored, so each exits promptly.
            while let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::__WALL)) {
                if !matches!(status, WaitStatus::StillAlive) {
                    break;
                }
            }
        }
    }
}

/// The shim's direct children, from every thread's `children` file (see proc(5)).
fn own_children() -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}
