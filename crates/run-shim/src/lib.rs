//! The run shim: a small process between the bridge and a run's CLI that guarantees no process
//! of the run outlives it.
//!
//! The bridge starts `headless-bridge-shim -- <cli> <args>` instead of the CLI. The shim makes
//! itself a child subreaper (see prctl(2), PR_SET_CHILD_SUBREAPER), so every process the CLI
//! starts stays its descendant even after a double fork, `setsid`, or a cleared environment:
//! orphans are re-parented to the shim, not to init, and the shim reaps them as they die. When
//! the CLI exits, or the shim is asked to stop, it kills whatever is left below it and reaps
//! it, then exits with the CLI's status (a signal N as 128 + N, as shells report it). If the
//! bridge itself dies, the kernel sends the shim SIGTERM (PR_SET_PDEATHSIG), and the run is
//! cleaned up all the same.
//!
//! It is started once per run, so it is built to start fast: one thread, no async runtime.
//! Signal handlers only note a signal and wake the shim through a socket pair, which it polls
//! with a timeout while it waits: that is all the waiting it does.

use std::ffi::OsString;
use std::os::fd::AsFd as _;
use std::process::Command;
use std::time::{Duration, Instant};

use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook::consts::{
    SIGALRM, SIGCHLD, SIGCONT, SIGHUP, SIGINT, SIGIO, SIGPROF, SIGQUIT, SIGTERM, SIGTSTP, SIGTTIN,
    SIGTTOU, SIGURG, SIGUSR1, SIGUSR2, SIGVTALRM, SIGWINCH, SIGXCPU, SIGXFSZ,
};

/// How long the CLI has to exit after the shim is asked to stop, before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the shim keeps killing stragglers before it gives up on them.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(5);
/// The exit status of a shim that could not start its CLI: what shells report for a command
/// they could not run. A CLI may well exit with it itself, so it tells nothing alone: the shim
/// also prints a [`NotStarted`] line on stderr, which a CLI that ran would not have printed.
pub const NOT_STARTED: i32 = 127;
/// How the shim's line about a CLI it could not start begins; the errno follows.
const NOT_STARTED_PREFIX: &str = "headless-bridge shim: cli not started: errno ";

/// How the shim runs its CLI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// The CLI runs on a terminal: the shim is then in the terminal's foreground process group
    /// with the CLI, so the keys that send SIGINT, SIGQUIT and SIGTSTP (Ctrl-C, Ctrl-\,
    /// Ctrl-Z) reach the shim too. They are meant for the CLI, so the shim ignores them; a
    /// hangup (SIGHUP, the terminal closed) stops the CLI like SIGTERM does.
    pub tty: bool,
    /// The user and group to start the CLI as.
    pub run_as: Option<(u32, u32)>,
}

/// The shim could not start its CLI (exec failed, or the switch to the run's user did).
///
/// The shim says so on stderr as the last line it prints, in a form [`NotStarted::parse`]
/// reads back, and exits with [`NOT_STARTED`]:
///
/// `headless-bridge shim: cli not started: errno 2: failed to start codex: No such file or
/// directory (os error 2)`
///
/// That lets whoever started the shim report the failure as it would a CLI it failed to start
/// itself, with the OS error, instead of as a CLI that ran and failed.
#[derive(Debug, PartialEq, Eq)]
pub struct NotStarted {
    /// The OS error of the failed start (EINVAL for a command line the OS was never given,
    /// such as an argument with a NUL byte).
    pub errno: i32,
    /// The rest of the line: what failed, in words.
    pub message: String,
}

impl NotStarted {
    /// Describes the failed start of `program`.
    pub fn new(program: &std::ffi::OsStr, err: &std::io::Error) -> Self {
        Self {
            errno: err.raw_os_error().unwrap_or(Errno::EINVAL as i32),
            message: format!("failed to start {}: {err}", program.to_string_lossy()),
        }
    }

    /// Reads the line back from a shim's stderr, given its exit status. Only the last line
    /// counts and only with [`NOT_STARTED`]: nothing runs after the shim prints it, while a
    /// CLI that ran and exited 127 printed whatever it printed before that.
    pub fn parse(exit_code: i32, stderr: &str) -> Option<Self> {
        if exit_code != NOT_STARTED {
            return None;
        }
        let last = stderr.lines().rev().find(|line| !line.trim().is_empty())?;
        let (errno, message) = last.strip_prefix(NOT_STARTED_PREFIX)?.split_once(": ")?;
        Some(Self {
            errno: errno.parse().ok()?,
            message: message.to_owned(),
        })
    }

    /// The OS error of the failed start, as the shim saw it.
    pub fn io_error(&self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.errno)
    }
}

impl std::fmt::Display for NotStarted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{NOT_STARTED_PREFIX}{}: {}", self.errno, self.message)
    }
}

/// Why the shim's arguments were refused.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A parsed command line: `[--tty] [--run-as UID:GID] [--] PROGRAM [ARGS...]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub options: Options,
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl Invocation {
    /// Parses the arguments after the executable's name.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, UsageError> {
        let mut args = args.into_iter();
        let mut options = Options::default();
        let program = loop {
            let Some(arg) = args.next() else {
                return Err(UsageError("no program to run was given".into()));
            };
            match arg.to_str() {
                Some("--tty") => options.tty = true,
                Some("--run-as") => {
                    let value = args.next().unwrap_or_default();
                    options.run_as = Some(parse_run_as(&value.to_string_lossy())?);
                }
                Some("--") => {
                    break args
                        .next()
                        .ok_or_else(|| UsageError("no program to run was given".into()))?;
                }
                Some(flag) if flag.starts_with("--") => {
                    return Err(UsageError(format!("unknown option `{flag}`")));
                }
                _ => break arg,
            }
        };
        Ok(Self {
            options,
            program,
            args: args.collect(),
        })
    }
}

/// Parses `UID:GID`.
pub fn parse_run_as(value: &str) -> Result<(u32, u32), UsageError> {
    let invalid = || UsageError(format!("`{value}` is not UID:GID (two numbers)"));
    let (uid, gid) = value.split_once(':').ok_or_else(invalid)?;
    Ok((
        uid.parse().map_err(|_| invalid())?,
        gid.parse().map_err(|_| invalid())?,
    ))
}

/// Runs `program` under the shim and returns the exit code the shim should exit with.
pub fn main(program: OsString, args: Vec<OsString>, options: Options) -> i32 {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("headless-bridge shim: failed to become a subreaper: {e}");
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
    let code = supervise(program, args, options);
    kill_descendants();
    code
}

fn supervise(program: OsString, args: Vec<OsString>, options: Options) -> i32 {
    let signals = match Signals::watch(options.tty) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("headless-bridge shim: failed to watch signals: {e}");
            return NOT_STARTED;
        }
    };

    let mut command = Command::new(&program);
    command.args(&args);
    if let Some((uid, gid)) = options.run_as {
        use std::os::unix::process::CommandExt as _;
        // The standard library sets the group before the user and drops root's supplementary
        // groups when it switches users.
        command.gid(gid).uid(uid);
    }
    let cli = match command.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            eprintln!("{}", NotStarted::new(&program, &e));
            return NOT_STARTED;
        }
    };

    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(code) = reap(cli) {
            return code;
        }
        if kill_at.is_none() && signals.stop_requested() {
            let _ = kill(cli, Signal::SIGTERM);
            kill_at = Some(Instant::now() + STOP_GRACE);
        }
        let timeout = kill_at.map(|at| at.saturating_duration_since(Instant::now()));
        if !signals.wait(timeout) {
            // The grace period is over.
            let _ = kill(cli, Signal::SIGKILL);
        }
    }
}

/// The signals the shim acts on, caught by handlers that note them and wake the shim through
/// a socket pair. Handlers rather than a blocked mask: a blocked mask would be inherited by
/// the CLI, while handlers are reset to the default action by exec.
struct Signals {
    wake: UnixStream,
}

/// Set by SIGTERM and SIGHUP, and by SIGINT off a terminal: the shim is asked to stop.
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by the signals the shim catches only so that the CLI starts with them at their default
/// action; nothing reads it.
static PASSED_OVER: AtomicBool = AtomicBool::new(false);
/// The signals a program may expect at their default action when it starts, besides those the
/// shim acts on. One ignored by whoever started the bridge (a shell ignores SIGINT and SIGQUIT
/// in what it starts in the background, `nohup` SIGHUP) would stay ignored through exec, in
/// the shim and then in the CLI; a caught one is reset to its default by exec. SIGPIPE is left
/// to the standard library, which resets it in the child; the signals of a fault (SIGSEGV,
/// SIGBUS...) are not caught, as a handler that returns would fault again.
const RESET_FOR_THE_CLI: [i32; 20] = [
    SIGHUP,
    SIGINT,
    SIGQUIT,
    SIGUSR1,
    SIGUSR2,
    SIGALRM,
    SIGTERM,
    SIGCHLD,
    SIGCONT,
    SIGTSTP,
    SIGTTIN,
    SIGTTOU,
    SIGURG,
    SIGXCPU,
    SIGXFSZ,
    SIGVTALRM,
    SIGPROF,
    SIGWINCH,
    SIGIO,
    Signal::SIGPWR as i32,
];

impl Signals {
    fn watch(tty: bool) -> std::io::Result<Self> {
        let (wake, woken) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let mut stop = vec![SIGTERM, SIGHUP];
        // A child's exit wakes the shim to reap it.
        let mut wake_only = vec![SIGCHLD];
        if tty {
            // On a terminal these are the CLI's keys (Ctrl-C, Ctrl-\, Ctrl-Z): the shim only
            // wakes, which is to say it ignores them.
            wake_only.extend([SIGINT, SIGQUIT, SIGTSTP]);
        } else {
            stop.push(SIGINT);
        }
        for &signal in &stop {
            signal_hook::flag::register(signal, &STOP)?;
            signal_hook::low_level::pipe::register(signal, woken.try_clone()?)?;
        }
        for &signal in &wake_only {
            signal_hook::low_level::pipe::register(signal, woken.try_clone()?)?;
        }
        // Caught by the shim, so the CLI starts with each at its default. The shim itself now
        // outlives them when they are sent to its process group, and cleans up after a CLI
        // they ended.
        for signal in RESET_FOR_THE_CLI {
            if !stop.contains(&signal) && !wake_only.contains(&signal) {
                signal_hook::flag::register(signal, &PASSED_OVER)?;
            }
        }
        Ok(Self { wake })
    }

    fn stop_requested(&self) -> bool {
        STOP.load(Ordering::SeqCst)
    }

    /// Waits for a signal, at most `timeout` (forever without one); false when the time ran
    /// out first.
    fn wait(&self, timeout: Option<Duration>) -> bool {
        let timeout = timeout.map_or(PollTimeout::NONE, |t| {
            PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => false,
            Ok(_) => {
                let mut drained = [0_u8; 64];
                while matches!((&self.wake).read(&mut drained), Ok(n) if n > 0) {}
                true
            }
            // EINTR: a signal, which is what was waited for.
            Err(_) => true,
        }
    }
}

/// Reaps every child that has exited; returns the exit code once the CLI is among them.
/// Orphans re-parented to the shim are reaped here as they die, so none stays a zombie.
fn reap(cli: Pid) -> Option<i32> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == cli => return Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == cli => {
                return Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) => return None,
            Ok(_) => {}
            // No child at all: the CLI was reaped already, which cannot happen.
            Err(Errno::ECHILD) => return Some(1),
            Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
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

/// The shim's direct children, from its `children` file (see proc(5); the shim has one
/// thread). A kernel built without that file (`CONFIG_PROC_CHILDREN`, off by default
/// upstream) would otherwise make every run look clean: then every process's parent is read.
fn own_children() -> Vec<i32> {
    match std::fs::read_to_string("/proc/thread-self/children") {
        Ok(list) => list
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect(),
        Err(_) => children_of(std::process::id() as i32),
    }
}

/// The processes whose parent is `parent`, from each one's stat file in /proc.
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The parent of `pid`: the second field after its command name, which is in parentheses
/// and may itself hold spaces and parentheses (see proc(5), /proc/pid/stat).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, UsageError> {
        Invocation::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_options_then_the_program() {
        let invocation = parse(&["--tty", "--run-as", "10:20", "--", "cli", "--tty", "x"]).unwrap();
        assert_eq!(
            invocation.options,
            Options {
                tty: true,
                run_as: Some((10, 20))
            }
        );
        assert_eq!(invocation.program, "cli");
        assert_eq!(invocation.args, ["--tty", "x"]);
    }

    #[test]
    fn the_program_may_follow_without_a_separator() {
        let invocation = parse(&["echo", "--", "hi"]).unwrap();
        assert_eq!(invocation.options, Options::default());
        assert_eq!(invocation.program, "echo");
        assert_eq!(invocation.args, ["--", "hi"]);
    }

    #[test]
    fn children_are_found_by_their_parent_without_the_children_file() {
        let mut sleepers: Vec<_> = (0..2)
            .map(|_| {
                Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("sleep starts")
            })
            .collect();
        let found = children_of(std::process::id() as i32);
        for sleeper in &mut sleepers {
            let pid = sleeper.id() as i32;
            let _ = sleeper.kill();
            let _ = sleeper.wait();
            assert!(found.contains(&pid), "{pid} not in {found:?}");
        }
        assert_eq!(
            parent_of(std::process::id() as i32),
            Some(std::os::unix::process::parent_id() as i32)
        );
    }

    #[test]
    fn a_failed_start_is_read_back_from_the_last_stderr_line() {
        let err = std::io::Error::from_raw_os_error(Errno::ENOENT as i32);
        let line = NotStarted::new("codex".as_ref(), &err).to_string();
        assert!(
            line.ends_with("failed to start codex: No such file or directory (os error 2)"),
            "{line}"
        );

        let stderr = format!("headless-bridge shim: failed to become a subreaper: x\n{line}\n");
        let read = NotStarted::parse(NOT_STARTED, &stderr).expect("recognised");
        assert_eq!(read.io_error().kind(), std::io::ErrorKind::NotFound);
        assert_eq!(read, NotStarted::new("codex".as_ref(), &err));
    }

    /// A CLI that ran and exited 127 must not pass for one the shim could not start.
    #[test]
    fn a_cli_exiting_127_is_not_a_failed_start() {
        let err = std::io::Error::from_raw_os_error(Errno::ENOENT as i32);
        let line = NotStarted::new("codex".as_ref(), &err).to_string();
        assert_eq!(
            NotStarted::parse(NOT_STARTED, "sh: 1: frob: not found\n"),
            None
        );
        assert_eq!(NotStarted::parse(NOT_STARTED, ""), None);
        assert_eq!(
            NotStarted::parse(NOT_STARTED, &format!("{line}\nmore\n")),
            None
        );
        assert_eq!(NotStarted::parse(1, &line), None);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--"]).is_err());
        assert!(parse(&["--tty"]).is_err());
        assert!(parse(&["--run-as", "root", "--", "x"]).is_err());
        assert!(parse(&["--bogus", "--", "x"]).is_err());
    }
}
