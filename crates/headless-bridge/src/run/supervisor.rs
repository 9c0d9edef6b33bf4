//! Running one CLI process to completion and leaving nothing behind.
//!
//! The child gets a closed stdin, a cleared environment (only what the caller passes), and a
//! process group of its own, so a signal reaches it and everything it started in that group.
//! Tools do not always stay in their group: a CLI may start commands in new sessions. So every
//! process of a run also carries a marker variable in its environment, and when the run ends,
//! however it ends, the supervisor sweeps `/proc` for processes still carrying the marker and
//! kills them. A grandchild that holds the output pipe open therefore cannot keep the run alive.
//!
//! Stopping is: SIGTERM to the group, a grace period, SIGKILL to the group, then the sweep.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, ReadBuf};

use super::text;
use crate::reaper;
use tokio::process::Command;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// The environment variable that marks every process of a run with the run's id.
pub const RUN_MARKER: &str = "HEADLESS_BRIDGE_RUN";

/// How long a process group has between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long to keep reading output after the child exited and its stragglers were killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// A single stdout line longer than this is cut; JSON event lines are far shorter.
const MAX_LINE_BYTES: usize = 4 << 20;
/// The buffer output is read into: a pipe's default capacity.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Lines sent to the run in one message at most, counted in bytes (one line may pass it).
const BATCH_BYTES: usize = 64 << 10;
/// Messages of lines waiting for the run before the readers wait: with [`BATCH_BYTES`] and
/// [`MAX_LINE_BYTES`], what a run's output can hold in memory stays bounded.
const BATCHES_QUEUED: usize = 16;
/// How much stderr is kept; the rest is counted and dropped.
const MAX_STDERR_BYTES: usize = 256 << 10;
/// How long the sweep keeps killing before it gives up on a process that will not die
/// (one stuck in uninterruptible sleep, say).
const SWEEP_PATIENCE: Duration = Duration::from_secs(5);
/// Pause between looks at /proc while killed processes are torn down.
const SWEEP_PAUSE: Duration = Duration::from_millis(5);

/// What to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment of the child; nothing is inherited.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// `NAME=value` placed in the environment of the child, found again by the sweep.
    pub marker: (String, String),
    /// Wall-clock limit; past it the process group is stopped.
    pub timeout: Duration,
    /// Longest silence on both pipes before the process counts as stalled and is stopped.
    pub idle_timeout: Option<Duration>,
    /// The run shim to start the program under (see [`super::shim`]), if any.
    pub shim: Option<PathBuf>,
    /// The user and group to start the process as (the bridge must be root to switch).
    pub run_as: Option<(u32, u32)>,
}

/// How the process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// Why the supervisor stopped a process before it exited by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    TimedOut,
    /// It printed nothing for longer than the idle limit.
    Stalled,
    /// The caller cancelled the run (or the bridge is shutting down).
    Cancelled,
}

/// Everything observed about a finished process.
#[derive(Debug, Clone)]
pub struct ProcessOutcome {
    pub exit: ExitKind,
    /// Why the supervisor stopped the process, if it did.
    pub stopped: Option<StopCause>,
    pub stderr: String,
    /// Bytes of stderr dropped past the cap.
    pub stderr_dropped: usize,
    pub duration: Duration,
    /// Processes the sweep had to kill after the main process was gone.
    pub stragglers_killed: usize,
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Starts `spec`, feeds each output line to `on_line` as it arrives, and returns once the
/// process and every process carrying its marker are gone. Cancelling `cancel` stops the
/// process like a timeout does.
///
/// An error means the program could not be started, by the bridge or by the shim: a shim
/// that says so (see [`run_shim::NotStarted`]) gives the same error as a failed spawn.
pub async fn run(
    spec: ProcessSpec,
    cancel: CancellationToken,
    mut on_line: impl FnMut(Stream, &str),
) -> io::Result<ProcessOutcome> {
    run_batches(spec, cancel, |stream, lines| {
        lines.iter().for_each(|line| on_line(stream, line));
    })
    .await
}

/// [`run`], feeding the lines in the batches they were read in: a batch ends where the
/// output paused (or after 64 KiB), so a caller can flush what it keeps of them there.
pub async fn run_batches(
    spec: ProcessSpec,
    cancel: CancellationToken,
    mut on_lines: impl FnMut(Stream, &[String]),
) -> io::Result<ProcessOutcome> {
    let started = Instant::now();
    let mut child = reaper::spawn(&mut command(&spec))?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    // Should this future be dropped before the end (the runtime shutting down), the whole
    // group goes, not only the process at its head.
    let mut group = GroupKill(pid);
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");

    let (line_tx, mut lines) = mpsc::channel(BATCHES_QUEUED);
    // Bytes count as output when they are read, not when their line ends: a CLI that draws
    // progress without newlines is not silent.
    let heard = Arc::new(Notify::new());
    let readers = [
        tokio::spawn(
            read_lines(Heard::new(stdout, &heard), Stream::Stdout, line_tx.clone())
                .in_current_span(),
        ),
        tokio::spawn(
            read_lines(Heard::new(stderr, &heard), Stream::Stderr, line_tx).in_current_span(),
        ),
    ];
    let mut stderr_head = StderrHead::default();
    let mut observe = |stream: Stream, lines: &[String]| {
        if stream == Stream::Stderr {
            lines.iter().for_each(|line| stderr_head.push(line));
        }
        on_lines(stream, lines);
    };

    let deadline = tokio::time::sleep(spec.timeout);
    let idle_limit = spec.idle_timeout.unwrap_or(Duration::MAX);
    let wall_end = started + spec.timeout;
    // An idle limit that would end after the wall clock is parked past it, so the wall clock
    // decides and the run is reported as timed out, not stalled.
    let idle_end = |from: Instant| {
        let parked = wall_end + Duration::from_secs(1);
        from.checked_add(idle_limit)
            .filter(|end| *end < wall_end)
            .unwrap_or(parked)
    };
    let idle = tokio::time::sleep_until(idle_end(started).into());
    tokio::pin!(deadline, idle);
    let mut stopped = None;
    let status = loop {
        tokio::select! {
            // The idle timer restarts on bytes read (`heard`), which come before their lines.
            Some((stream, batch)) = lines.recv() => observe(stream, &batch),
            () = heard.notified() => idle.as_mut().reset(idle_end(Instant::now()).into()),
            status = child.wait() => break status?,
            () = &mut deadline, if stopped.is_none() => {
                stopped = Some(StopCause::TimedOut);
                tracing::info!(timeout_s = spec.timeout.as_secs(), "process timed out, stopping it");
                stop_group(pid, &mut child).await;
            }
            () = &mut idle, if stopped.is_none() && spec.idle_timeout.is_some() => {
                // The idle timer is capped at the deadline, so both can fire together; past the
                // deadline the run timed out, whatever it printed.
                stopped = Some(if started.elapsed() >= spec.timeout {
                    StopCause::TimedOut
                } else {
                    StopCause::Stalled
                });
                tracing::info!(idle_s = idle_limit.as_secs(), "process printed nothing for too long, stopping it");
                stop_group(pid, &mut child).await;
            }
            () = cancel.cancelled(), if stopped.is_none() => {
                stopped = Some(StopCause::Cancelled);
                tracing::info!("process cancelled, stopping it");
                stop_group(pid, &mut child).await;
            }
        }
    };

    group.disarm();
    reaper::forget(pid.map(|p| p.as_raw() as u32));
    // A shim that exited by itself has already killed everything below it; only a shim
    // that was killed leaves the marker sweep work to do.
    let shim_cleaned_up = spec.shim.is_some() && matches!(exit_kind(status), ExitKind::Code(_));
    let stragglers_killed = if shim_cleaned_up {
        kill_group(pid)
    } else {
        sweep(pid, &spec.marker).await
    };
    let drain = async {
        while let Some((stream, batch)) = lines.recv().await {
            observe(stream, &batch);
        }
    };
    if tokio::time::timeout(DRAIN_GRACE, drain).await.is_err() {
        tracing::warn!("output pipe still open after the run's processes were killed");
    }
    readers.iter().for_each(|reader| reader.abort());

    // The shim reports a program it could not start on its stderr; the caller is told as if
    // the bridge had failed to start it, with the same OS error.
    if let (Some(_), None, ExitKind::Code(code)) = (&spec.shim, stopped, exit_kind(status))
        && let Some(not_started) = run_shim::NotStarted::parse(code, &stderr_head.text)
    {
        tracing::debug!(error = %not_started, "the shim could not start the program");
        return Err(not_started.io_error());
    }
    Ok(ProcessOutcome {
        exit: exit_kind(status),
        stopped,
        stderr: stderr_head.text,
        stderr_dropped: stderr_head.dropped,
        duration: started.elapsed(),
        stragglers_killed,
    })
}

/// Kills a process group when dropped, until disarmed: once its leader has been waited
/// for, the group's id may be taken by another.
pub(crate) struct GroupKill(Option<Pid>);

impl GroupKill {
    /// Arms the guard for the group led by `pid` (a child spawned with `process_group(0)`).
    pub(crate) fn of(pid: Option<u32>) -> Self {
        Self(pid.map(|id| Pid::from_raw(id as i32)))
    }

    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

/// The first [`MAX_STDERR_BYTES`] of stderr, kept to explain a failure.
#[derive(Default)]
struct StderrHead {
    text: String,
    dropped: usize,
}

impl StderrHead {
    fn push(&mut self, line: &str) {
        let room = MAX_STDERR_BYTES.saturating_sub(self.text.len());
        if line.len() < room {
            self.text.push_str(line);
            self.text.push('\n');
        } else {
            self.dropped += line.len() + 1;
        }
    }
}

fn command(spec: &ProcessSpec) -> Command {
    let mut cmd = match &spec.shim {
        Some(shim) => {
            let mut cmd = Command::new(shim);
            cmd.arg("--").arg(&spec.program);
            cmd
        }
        None => Command::new(&spec.program),
    };
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env(&spec.marker.0, &spec.marker.1)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = spec.run_as {
        // The standard library sets the group before the user, and drops root's supplementary
        // groups when it switches users.
        cmd.gid(gid).uid(uid);
    }
    cmd
}

/// SIGTERM to the group, then SIGKILL if the leader has not exited within the grace period.
pub(crate) async fn stop_group(pid: Option<Pid>, child: &mut tokio::process::Child) {
    let Some(pid) = pid else { return };
    let _ = killpg(pid, Signal::SIGTERM);
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pid, Signal::SIGKILL);
    }
}

/// Kills what may be left of the group once its leader (a shim that cleaned up below itself)
/// has exited. Finds no marked processes to count, so returns 0.
fn kill_group(pid: Option<Pid>) -> usize {
    if let Some(pid) = pid {
        let _ = killpg(pid, Signal::SIGKILL);
    }
    0
}

/// Kills every process whose environment carries `name=value`: what is left of a run whose
/// supervisor is gone (the bridge was killed). Returns how many it killed.
pub async fn kill_marked(name: &str, value: &str) -> usize {
    sweep(None, &(name.to_owned(), value.to_owned())).await
}

async fn sweep(pid: Option<Pid>, marker: &(String, String)) -> usize {
    if let Some(pid) = pid {
        // The leader has exited, but members of its group may live on.
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let needle = format!("{}={}", marker.0, marker.1).into_bytes();
    tokio::task::spawn_blocking(move || {
        let mut killed = std::collections::HashSet::new();
        let deadline = Instant::now() + SWEEP_PATIENCE;
        // A process in the middle of an exec shows an empty environment for a moment, so
        // one empty look is not proof: the sweep ends on the second in a row.
        let mut empty_before = false;
        loop {
            let found = processes_with_env(&needle);
            if (found.is_empty() && empty_before) || Instant::now() > deadline {
                return killed.len();
            }
            empty_before = found.is_empty();
            for pid in &found {
                let _ = kill(*pid, Signal::SIGKILL);
                killed.insert(*pid);
            }
            // SIGKILL is delivered asynchronously; a killed process keeps its environment
            // until the kernel has torn it down, so look again shortly.
            std::thread::sleep(SWEEP_PAUSE);
        }
    })
    .await
    .unwrap_or(0)
}

/// Live processes whose environment contains `needle` as a whole `NAME=value` entry.
/// Zombies have an empty environ, so a killed process drops out of the list.
pub fn processes_with_env(needle: &[u8]) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|entry| entry == needle))
                .unwrap_or(false)
        })
        .map(Pid::from_raw)
        .collect()
}

/// A pipe that signals each read that brought bytes, whether or not they end a line.
struct Heard<R> {
    inner: R,
    heard: Arc<Notify>,
}

impl<R> Heard<R> {
    fn new(inner: R, heard: &Arc<Notify>) -> Self {
        Self {
            inner,
            heard: heard.clone(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Heard<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.heard.notify_one();
        }
        polled
    }
}

/// Reads `stream` line by line and sends the lines in batches: every whole line already read
/// goes in one message, so a flood costs one wake-up per buffer rather than per line, and a
/// line is never held back waiting for the next.
async fn read_lines(
    stream: impl AsyncRead + Unpin,
    which: Stream,
    tx: mpsc::Sender<(Stream, Vec<String>)>,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut buf = Vec::new();
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    loop {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)
            .await;
        let end = matches!(read, Ok(0) | Err(_));
        if !end {
            batch_bytes += buf.len();
            batch.push(text::clean_line(&buf));
        }
        // Send when the next line is not already here (reading it may wait), or enough is
        // gathered; memchr stops at the next line's end, so this looks at each byte once more.
        let more_here = reader.buffer().contains(&b'\n');
        if !batch.is_empty() && (end || !more_here || batch_bytes >= BATCH_BYTES) {
            batch_bytes = 0;
            if tx.send((which, std::mem::take(&mut batch))).await.is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}

fn exit_kind(status: std::process::ExitStatus) -> ExitKind {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitKind::Code(code),
        (None, Some(signal)) => ExitKind::Signal(signal),
        (None, None) => ExitKind::Code(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration, marker: &str) -> ProcessSpec {
        ProcessSpec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            cwd: std::env::temp_dir(),
            marker: ("HB_TEST_MARKER".into(), marker.into()),
            timeout,
            idle_timeout: None,
            shim: None,
            run_as: None,
        }
    }

    fn marker() -> String {
        uuid::Uuid::now_v7().to_string()
    }

    fn alive_with(marker: &str) -> usize {
        processes_with_env(format!("HB_TEST_MARKER={marker}").as_bytes()).len()
    }

    #[tokio::test]
    async fn collects_lines_and_the_exit_code() {
        let mut lines = Vec::new();
        let spec = sh(
            "echo one; echo two; echo oops >&2; exit 3",
            Duration::from_secs(30),
            &marker(),
        );
        let outcome = run(spec, CancellationToken::new(), |stream, l| {
            if stream == Stream::Stdout {
                lines.push(l.to_owned())
            }
        })
        .await
        .unwrap();
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(outcome.exit, ExitKind::Code(3));
        assert_eq!(outcome.stderr, "oops\n");
        assert_eq!(outcome.stopped, None);
    }

    /// Regression: a silent process whose idle limit was past its deadline was reported as
    /// stalled about half the time, when the idle timer won the race with the deadline.
    #[tokio::test]
    async fn a_silent_process_past_its_deadline_is_timed_out_not_stalled() {
        for _ in 0..3 {
            let mut spec = sh("sleep 30", Duration::from_millis(300), &marker());
            spec.idle_timeout = Some(Duration::from_secs(60));
            let outcome = run(spec, CancellationToken::new(), |_, _| {})
                .await
                .unwrap();
            assert_eq!(outcome.stopped, Some(StopCause::TimedOut));
        }
    }

    #[tokio::test]
    async fn stdin_is_closed() {
        let mut lines = Vec::new();
        let spec = sh("cat; echo done", Duration::from_secs(30), &marker());
        run(spec, CancellationToken::new(), |stream, l| {
            if stream == Stream::Stdout {
                lines.push(l.to_owned())
            }
        })
        .await
        .unwrap();
        assert_eq!(lines, ["done"]);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let marker = marker();
        let spec = sh(
            "sleep 300 & sleep 300; wait",
            Duration::from_millis(300),
            &marker,
        );
        let outcome = run(spec, CancellationToken::new(), |_, _| {})
            .await
            .unwrap();
        assert_eq!(outcome.stopped, Some(StopCause::TimedOut));
        assert_eq!(outcome.exit, ExitKind::Signal(15));
        assert_eq!(alive_with(&marker), 0);
    }

    /// Regression: a supervisor dropped mid-run (the runtime shutting down) killed only the
    /// process at the head of the group, and the rest ran on.
    #[tokio::test]
    async fn a_supervisor_dropped_mid_run_kills_the_whole_group() {
        let marker = marker();
        let spec = sh(
            "sleep 300 & echo ready; sleep 300",
            Duration::from_secs(300),
            &marker,
        );
        let ready = tokio::sync::Notify::new();
        tokio::select! {
            _ = run(spec, CancellationToken::new(), |_, line| {
                if line == "ready" {
                    ready.notify_one();
                }
            }) => panic!("the script ended by itself"),
            () = ready.notified() => {}
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive_with(&marker) > 0 {
            assert!(
                Instant::now() < deadline,
                "the group outlived its supervisor"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn cancelling_stops_the_process() {
        let marker = marker();
        let cancel = CancellationToken::new();
        let spec = sh("echo ready; sleep 300", Duration::from_secs(300), &marker);
        let trigger = cancel.clone();
        let outcome = run(spec, cancel, move |_, line| {
            if line == "ready" {
                trigger.cancel();
            }
        })
        .await
        .unwrap();
        assert_eq!(outcome.stopped, Some(StopCause::Cancelled));
        assert_eq!(alive_with(&marker), 0);
    }

    /// Regression: a grandchild in its own session holding stdout kept runs open forever.
    #[tokio::test]
    async fn an_escaped_grandchild_is_killed_and_cannot_hold_the_pipe() {
        let marker = marker();
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("escaped");
        // The fifo makes the shell exit only once the grandchild has left its process group.
        let script = format!(
            "mkfifo '{0}'; setsid sh -c 'echo > \"$0\"; exec sleep 300' '{0}' & read _ < '{0}'",
            fifo.display()
        );
        let spec = sh(&script, Duration::from_secs(60), &marker);
        let started = Instant::now();
        let outcome = run(spec, CancellationToken::new(), |_, _| {})
            .await
            .unwrap();
        assert_eq!(outcome.exit, ExitKind::Code(0));
        assert!(outcome.stragglers_killed >= 1);
        assert_eq!(alive_with(&marker), 0);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run waited for the grandchild"
        );
    }

    #[tokio::test]
    async fn the_environment_is_only_what_was_given() {
        let mut lines = Vec::new();
        let spec = sh("env | sort", Duration::from_secs(30), "m");
        run(spec, CancellationToken::new(), |stream, l| {
            if stream == Stream::Stdout {
                lines.push(l.to_owned())
            }
        })
        .await
        .unwrap();
        let names: Vec<_> = lines.iter().filter_map(|l| l.split('=').next()).collect();
        assert!(
            names
                .iter()
                .all(|n| ["PATH", "HB_TEST_MARKER", "PWD", "SHLVL", "_"].contains(n)),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn stderr_is_capped_but_every_line_is_seen() {
        let script = "i=0; while [ $i -lt 3000 ]; do printf '%0100d\\n' 0 >&2; i=$((i+1)); done";
        let mut seen = 0;
        let spec = sh(script, Duration::from_secs(30), &marker());
        let outcome = run(spec, CancellationToken::new(), |stream, _| {
            seen += usize::from(stream == Stream::Stderr);
        })
        .await
        .unwrap();
        assert_eq!(seen, 3000);
        assert!(outcome.stderr.len() <= MAX_STDERR_BYTES);
        assert_eq!(outcome.stderr.len() + outcome.stderr_dropped, 3000 * 101);
    }

    #[tokio::test]
    async fn a_silent_process_is_stopped_as_stalled() {
        let marker = marker();
        let mut spec = sh("echo hello; sleep 300", Duration::from_secs(300), &marker);
        spec.idle_timeout = Some(Duration::from_millis(300));
        let outcome = run(spec, CancellationToken::new(), |_, _| {})
            .await
            .unwrap();
        assert_eq!(outcome.stopped, Some(StopCause::Stalled));
        assert_eq!(alive_with(&marker), 0);
    }

    /// Regression: only whole lines counted as output, so a CLI drawing progress without a
    /// newline, on stdout or on stderr, was stopped as stalled while it printed.
    #[tokio::test]
    async fn output_without_a_newline_keeps_a_process_from_stalling() {
        for fd in ["1", "2"] {
            let script = format!("for i in 1 2 3 4 5 6 7 8; do printf . >&{fd}; sleep 0.1; done");
            let mut spec = sh(&script, Duration::from_secs(60), &marker());
            spec.idle_timeout = Some(Duration::from_millis(400));
            let mut seen = Vec::new();
            let outcome = run(spec, CancellationToken::new(), |stream, line| {
                seen.push((stream, line.to_owned()));
            })
            .await
            .unwrap();
            assert_eq!(
                (outcome.stopped, outcome.exit),
                (None, ExitKind::Code(0)),
                "printing to fd {fd}"
            );
            let stream = if fd == "1" {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            assert_eq!(seen, [(stream, "........".to_owned())]);
        }
    }

    #[tokio::test]
    async fn output_keeps_a_process_from_stalling() {
        let script = "for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done";
        let mut spec = sh(script, Duration::from_secs(60), &marker());
        spec.idle_timeout = Some(Duration::from_millis(400));
        let outcome = run(spec, CancellationToken::new(), |_, _| {})
            .await
            .unwrap();
        assert_eq!((outcome.stopped, outcome.exit), (None, ExitKind::Code(0)));
    }
}
