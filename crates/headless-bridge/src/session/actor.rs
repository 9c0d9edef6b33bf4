//! The task that owns a session's program: it reads the output into the emulator, applies the
//! expect rules, decides the state, serves input and resizes, enforces the limits, and ends
//! the session the one way every end takes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use super::recording::Recording;
use super::screen;
use super::spec::Rules;
use super::terminal::{Spawned, Terminal};
use super::{Command, Emulator, EndReason, Session, SessionState, View, lock, start};
use crate::redact::Redactor;
use crate::run::failure::cli_not_started_message;
use crate::run::supervisor::{self, ExitKind, RUN_MARKER};

/// How long a session's processes have between SIGTERM and SIGKILL. The shim gives the
/// program two seconds of its own, so this leaves it time to clean up after it.
const TERM_GRACE: Duration = Duration::from_secs(4);
/// With a ready pattern, output must pause this long before the screen is judged, so a
/// prompt drawn in pieces is judged whole (unless the adapter's spec sets its own).
const READY_SETTLE: Duration = Duration::from_millis(100);
/// How long to keep reading output after the program exited: its last words.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// The output rate limit allows a burst of this many seconds' worth.
const BURST_SECONDS: u64 = 4;
/// How long a session stays busy after a rule's answer while the tool shows nothing: a loaded
/// machine can take seconds to echo, and a quiet window alone would call the old prompt idle.
const ANSWER_ECHO_WAIT: Duration = Duration::from_secs(5);
/// How often the idle timeout is checked.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How much of the end of the output is kept for the run shim's last line, which names the
/// program it could not start: room for a path of PATH_MAX (4096) bytes and the OS's words.
const OUTPUT_TAIL: usize = 8 << 10;

/// A session's limits and idle window, resolved.
pub(super) struct ActorSettings {
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub max_output_rate: u64,
    pub quiet: Duration,
    /// How long output must pause before the screen is judged against a ready pattern and
    /// answered by the rules; without it, [`READY_SETTLE`] and answers at once.
    pub settle: Option<Duration>,
    /// After input holding Enter: how long the tool counts as busy unless its busy pattern
    /// shows first.
    pub submit_wait: Option<Duration>,
    /// The command line carries a first prompt, which the tool submits by itself.
    pub first_prompt: bool,
    pub max_recording_bytes: u64,
}

/// The program a session runs, for saying why it could not be started.
pub(super) struct Program {
    pub path: PathBuf,
    /// The user it runs as, when not the bridge's own.
    pub run_as_uid: Option<u32>,
    /// It runs under the run shim, which reports a program it could not start in its last
    /// line of output and exits 127 (see [`run_shim::NotStarted`]).
    pub under_shim: bool,
}

pub(super) struct Actor {
    pub session: Arc<Session>,
    pub emulator: Arc<Mutex<Emulator>>,
    pub view: watch::Sender<View>,
    pub commands: mpsc::Receiver<Command>,
    pub activity: Arc<Mutex<Instant>>,
    pub redactor: Arc<Redactor>,
    pub rules: Rules,
    pub settings: ActorSettings,
    pub program: Program,
    /// The session's directory: its record and recording.
    pub dir: PathBuf,
}

/// What the loop tracks between events.
struct Progress {
    /// The last output, input or automatic answer.
    last_change: Instant,
    /// Output came since the last input (a ready pattern counts only then).
    output_since_input: bool,
    /// The screen changed since the state was last judged.
    unjudged: bool,
    /// Output allowance left, in bytes.
    allowance: f64,
    allowance_at: Instant,
    /// Enter was typed: the tool counts as busy until this time, or until its busy pattern
    /// shows (and then for as long as it shows).
    submitted_until: Option<Instant>,
    /// A rule typed an answer and the tool has shown nothing since: it counts as busy until
    /// it does, or until this time (a tool that never echoes cannot hold a session busy).
    answered_until: Option<Instant>,
    /// The command line carries a first prompt the tool has not been seen working on yet. Its
    /// submission is timed from the first ready screen, not from the start: a tool that takes
    /// long to start (a loaded machine) would otherwise look idle before it submits.
    first_prompt_pending: bool,
    /// The last [`OUTPUT_TAIL`] bytes of output.
    tail: Vec<u8>,
}

impl Actor {
    /// Runs the session to its end and stores its record.
    pub async fn run(mut self, spawned: Spawned) {
        let Spawned {
            terminal,
            mut output,
            mut exit,
        } = spawned;
        let mut recording = self.recording();
        let now = Instant::now();
        let mut progress = Progress {
            last_change: now,
            output_since_input: false,
            unjudged: true,
            allowance: (self.settings.max_output_rate * BURST_SECONDS) as f64,
            allowance_at: now,
            submitted_until: None,
            answered_until: None,
            first_prompt_pending: self.settings.first_prompt && self.settings.submit_wait.is_some(),
            tail: Vec::new(),
        };
        let lifetime_end = now + self.settings.lifetime;
        let mut idle_check = tokio::time::interval(IDLE_CHECK);
        let mut output_open = true;
        let mut stop_replies = Vec::new();

        let (reason, status) = loop {
            let judge_at = progress.unjudged.then(|| {
                let settled = progress.last_change + self.window();
                [progress.submitted_until, progress.answered_until]
                    .into_iter()
                    .flatten()
                    .fold(settled, Instant::max)
            });
            tokio::select! {
                chunk = output.recv(), if output_open => match chunk {
                    Some(bytes) => {
                        if !self.take_allowance(&mut progress, bytes.len()) {
                            break (EndReason::OutputRateExceeded, stop(&terminal, &mut exit).await);
                        }
                        self.on_output(&bytes, &terminal, &mut recording, &mut progress);
                    }
                    None => output_open = false,
                },
                status = &mut exit => {
                    break (EndReason::ProcessExited, status.unwrap_or(ExitKind::Code(-1)));
                }
                Some(command) = self.commands.recv() => match command {
                    Command::Input { bytes, reply } => {
                        if let Some(wait) = self.settings.submit_wait
                            && bytes.contains(&b'\r')
                        {
                            progress.submitted_until = Some(Instant::now() + wait);
                        }
                        self.type_bytes(bytes, &terminal, &mut recording, &mut progress);
                        self.rules.rearm();
                        let _ = reply.send(Ok(()));
                    }
                    Command::Resize { rows, cols, reply } => {
                        self.resize(rows, cols, &terminal, &mut recording);
                        let _ = reply.send(Ok(()));
                    }
                    Command::FlushRecording { reply } => {
                        if let Some(recording) = &mut recording {
                            recording.flush();
                        }
                        let _ = reply.send(Ok(()));
                    }
                    Command::Stop { reason, reply } => {
                        stop_replies.push(reply);
                        break (reason, stop(&terminal, &mut exit).await);
                    }
                },
                () = sleep_until(judge_at), if judge_at.is_some() => {
                    progress.unjudged = false;
                    self.judge(&mut progress, true, true, &terminal, &mut recording);
                    // A pause in the output is when a download of the cast sees it all.
                    if let Some(recording) = &mut recording {
                        recording.flush();
                    }
                }
                () = tokio::time::sleep_until(lifetime_end.into()) => {
                    break (EndReason::MaxLifetime, stop(&terminal, &mut exit).await);
                }
                _ = idle_check.tick() => {
                    if self.abandoned() {
                        break (EndReason::IdleTimeout, stop(&terminal, &mut exit).await);
                    }
                }
            }
        };

        // Whatever ended it, nothing of the session may stay: the group and every marked
        // process go, then the last output is read.
        let _ = killpg(terminal.pid, Signal::SIGKILL);
        let id = self.session.id.to_string();
        let stragglers = supervisor::kill_marked(RUN_MARKER, &id).await;
        if stragglers > 0 {
            tracing::info!(session_id = %id, stragglers, "killed processes a session left behind");
        }
        let drain = async {
            while let Some(bytes) = output.recv().await {
                self.on_output(&bytes, &terminal, &mut recording, &mut progress);
            }
        };
        let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
        if let Some(recording) = &mut recording {
            recording.finish(&self.redactor);
        }
        self.finish(reason, status, &progress.tail);
        for reply in stop_replies {
            let _ = reply.send(());
        }
        // Stops asked for while the session ended are answered too.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Stop { reply, .. } = command {
                let _ = reply.send(());
            }
        }
    }

    fn recording(&self) -> Option<Recording> {
        let (rows, cols) = lock(&self.emulator).screen().size();
        let path = self.session.recording.clone();
        match Recording::create(
            &path,
            cols.get(),
            rows.get(),
            self.settings.max_recording_bytes,
        ) {
            Ok(recording) => Some(recording),
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "failed to create a session recording");
                None
            }
        }
    }

    /// How long output must pause before the state is judged.
    fn window(&self) -> Duration {
        match self.rules.ready {
            Some(_) => self
                .settings
                .settle
                .unwrap_or(READY_SETTLE)
                .min(self.settings.quiet),
            None => self.settings.quiet,
        }
    }

    /// Takes `bytes` from the output allowance; false once the rate limit is passed.
    fn take_allowance(&self, progress: &mut Progress, bytes: usize) -> bool {
        let rate = self.settings.max_output_rate as f64;
        let now = Instant::now();
        let refill = now.duration_since(progress.allowance_at).as_secs_f64() * rate;
        progress.allowance = (progress.allowance + refill).min(rate * BURST_SECONDS as f64);
        progress.allowance_at = now;
        progress.allowance -= bytes as f64;
        progress.allowance >= 0.0
    }

    fn on_output(
        &mut self,
        bytes: &[u8],
        terminal: &Terminal,
        recording: &mut Option<Recording>,
        progress: &mut Progress,
    ) {
        if let Some(recording) = recording {
            recording.output(bytes, &self.redactor);
        }
        let replies = {
            let mut emulator = lock(&self.emulator);
            emulator.process(bytes);
            // Forwarded under the lock: see `Session::attach`.
            if self.session.output.receiver_count() > 0 {
                let masked = self.redactor.redact_bytes(bytes);
                let _ = self.session.output.send(masked.into());
            }
            std::mem::take(&mut emulator.callbacks_mut().pending)
        };
        if !replies.is_empty() {
            terminal.write(replies);
        }
        progress.tail.extend_from_slice(bytes);
        let excess = progress.tail.len().saturating_sub(OUTPUT_TAIL);
        progress.tail.drain(..excess);
        progress.last_change = Instant::now();
        progress.output_since_input = true;
        progress.answered_until = None;
        progress.unjudged = true;

        // Automatic answers go out at once unless the spec asks for a settled screen; the
        // state is judged without waiting for quiet only to show a question or that the tool
        // is working.
        let answer = self.settings.settle.is_none();
        self.judge(progress, false, answer, terminal, recording);
    }

    fn type_bytes(
        &mut self,
        bytes: Vec<u8>,
        terminal: &Terminal,
        recording: &mut Option<Recording>,
        progress: &mut Progress,
    ) {
        if let Some(recording) = recording {
            recording.input(&bytes, |text| self.redactor.redact(text));
        }
        terminal.write(bytes);
        progress.last_change = Instant::now();
        progress.output_since_input = false;
        progress.unjudged = true;
        self.publish(SessionState::Busy);
    }

    fn resize(
        &mut self,
        rows: u16,
        cols: u16,
        terminal: &Terminal,
        recording: &mut Option<Recording>,
    ) {
        let size = |n: u16| std::num::NonZeroU16::new(n).expect("sizes are checked by the API");
        lock(&self.emulator)
            .screen_mut()
            .set_size(size(rows), size(cols));
        if let Err(e) = terminal.resize(rows, cols) {
            tracing::warn!(error = %e, "failed to resize a session's terminal");
        }
        if let Some(recording) = recording {
            recording.resize(cols, rows);
        }
        let state = self.view.borrow().state.clone();
        self.publish(state);
    }

    /// Types the answers of the rules that match (when `answer`) and decides the state from
    /// the screen. `settled`: output has paused for the window.
    fn judge(
        &mut self,
        progress: &mut Progress,
        settled: bool,
        answer: bool,
        terminal: &Terminal,
        recording: &mut Option<Recording>,
    ) {
        let (screen_text, cursor_line) = screen::texts(lock(&self.emulator).screen());
        let found = self.rules.evaluate(&screen_text, &cursor_line, answer);
        if self.rules.is_busy(&screen_text) {
            progress.submitted_until = None;
            progress.first_prompt_pending = false;
        }
        if !found.answers.is_empty() {
            for (pattern, answer) in found.answers {
                tracing::info!(session_id = %self.session.id, pattern, "answered a prompt by an expect rule");
                self.type_bytes(answer, terminal, recording, progress);
            }
            progress.answered_until = Some(Instant::now() + ANSWER_ECHO_WAIT);
            return;
        }
        let state = if let Some((pattern, question)) = found.question {
            SessionState::WaitingForInput {
                question: self.redactor.redact(&question),
                pattern,
            }
        } else if !settled {
            SessionState::Busy
        } else if [progress.submitted_until, progress.answered_until]
            .into_iter()
            .flatten()
            .any(|until| Instant::now() < until)
        {
            // Judged again when the wait is over.
            progress.unjudged = true;
            SessionState::Busy
        } else if progress.first_prompt_pending && self.rules.is_ready(&screen_text) == Some(true) {
            // The tool is ready and submits its first prompt now, as if typed with Enter.
            progress.first_prompt_pending = false;
            progress.submitted_until = self.settings.submit_wait.map(|wait| Instant::now() + wait);
            progress.unjudged = true;
            SessionState::Busy
        } else {
            progress.submitted_until = None;
            progress.answered_until = None;
            match self.rules.is_ready(&screen_text) {
                Some(true) if progress.output_since_input => SessionState::Idle,
                Some(_) => SessionState::Busy,
                None => SessionState::Idle,
            }
        };
        self.publish(state);
    }

    /// Nobody typed, looked or listened for the idle timeout.
    fn abandoned(&self) -> bool {
        let listening = self.view.receiver_count() > 1;
        let last = *lock(&self.activity);
        !listening && last.elapsed() >= self.settings.idle_timeout
    }

    fn publish(&self, state: SessionState) {
        if self.view.borrow().state != state {
            let _ = self.session.states.send(state.clone());
        }
        self.view.send_modify(|view| {
            view.state = state;
            view.revision += 1;
        });
    }

    /// Publishes and stores the end. `tail` is the end of the output, where the run shim
    /// reports a program it could not start: that session ends as `cli_not_found`, with the
    /// words a run of the same program would have.
    fn finish(&self, reason: EndReason, status: ExitKind, tail: &[u8]) {
        let (exit_code, signal) = match status {
            ExitKind::Code(code) => (Some(code), None),
            ExitKind::Signal(signal) => (None, Some(signal)),
        };
        let not_started = match (reason, exit_code) {
            (EndReason::ProcessExited, Some(code)) if self.program.under_shim => {
                run_shim::NotStarted::parse(code, &String::from_utf8_lossy(tail))
            }
            _ => None,
        };
        let (reason, message) = match not_started {
            Some(not_started) => (
                EndReason::CliNotFound,
                cli_not_started_message(
                    &self.program.path,
                    &not_started.io_error(),
                    self.program.run_as_uid,
                ),
            ),
            None => (reason, end_message(reason, status)),
        };
        tracing::info!(session_id = %self.session.id, reason = ?reason, "session ended");
        let state = SessionState::Exited {
            exit_code,
            signal,
            reason,
            message,
        };
        self.view.send_modify(|view| {
            view.state = state.clone();
            view.revision += 1;
            view.ended_at = Some(OffsetDateTime::now_utc());
        });
        let _ = self.session.states.send(state);
        start::write_record(&self.dir, &self.session.record());
    }
}

/// What a session's end says, by its reason and how its program ended.
fn end_message(reason: EndReason, status: ExitKind) -> String {
    match (reason, status) {
        (EndReason::ProcessExited, ExitKind::Code(code)) => {
            format!("the program exited with code {code}")
        }
        (EndReason::ProcessExited, ExitKind::Signal(signal)) => {
            format!("the program was killed by signal {signal}")
        }
        (reason, _) => reason.message().to_owned(),
    }
}

/// Stops the session's process group: SIGTERM, the grace period, SIGKILL. Returns how the
/// session's leader ended.
async fn stop(
    terminal: &Terminal,
    exit: &mut tokio::sync::oneshot::Receiver<ExitKind>,
) -> ExitKind {
    let _ = killpg(terminal.pid, Signal::SIGTERM);
    if let Ok(status) = tokio::time::timeout(TERM_GRACE, &mut *exit).await {
        return status.unwrap_or(ExitKind::Code(-1));
    }
    let _ = killpg(terminal.pid, Signal::SIGKILL);
    exit.await.unwrap_or(ExitKind::Code(-1))
}

/// Sleeps until `at`, or forever without one (the branch is disabled then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
