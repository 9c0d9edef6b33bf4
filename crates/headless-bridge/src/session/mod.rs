//! Interactive sessions: a CLI that insists on a terminal, run on a pseudo-terminal and driven
//! over HTTP.
//!
//! A session is started like a run (a private workspace and HOME, the adapter's credentials,
//! the run shim, a marker on every process), but its CLI runs on a terminal of the caller's
//! size, and stays until it exits, is deleted, or passes a limit. Its output feeds a terminal
//! emulator (vt100), whose screen the API shows as text; input is typed text, named keys
//! ([`keys`]) or a bracketed paste.
//!
//! Theory of operation: one task per session, the actor, owns the process and the emulator's
//! writes. It reads output, applies the expect rules of the adapter ([`spec`]) to the rendered
//! screen, answers the terminal queries programs make ([`terminal_replies`]), records a cast
//! ([`recording`]), and decides the state:
//! - `starting` until the first output;
//! - `busy` while output comes, and right after input;
//! - `idle` when the adapter's ready pattern shows and output has settled, or, without one,
//!   after a quiet window with no output;
//! - `waiting_for_input` while a rule that needs a person matches, with its question's text;
//! - `exited`, with the status and a reason code, however it ended.
//!
//! The state is published on a watch channel, so a request that needs an idle tool waits on it
//! with a deadline and never on the program. Every end goes through the same stop: SIGTERM to
//! the session's process group (the shim passes it on), a grace period, SIGKILL, a sweep for
//! the marker, and the record written beside the recording.

mod actor;
pub mod keys;
pub mod recording;
pub mod screen;
pub mod spec;
mod start;
pub mod terminal;
pub mod terminal_replies;
pub mod tickets;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::adapter::Adapters;
use crate::config::Config;
use crate::credentials::WorkingCopy;
use crate::redact::Redactor;

pub use self::start::{StartError, StartRequest};
use self::terminal_replies::Replies;

/// The terminal type sessions present: what the emulator understands.
pub const TERM: &str = "xterm-256color";
/// How many ended sessions stay in memory with their last screen; older ones are read from
/// their stored record (without a screen).
const KEEP_ENDED: usize = 64;

/// The settings that bound sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions alive at once; past this, a start gets 429.
    pub max_sessions: usize,
    /// A session nobody has typed into or looked at for this long is ended.
    pub idle_timeout: Duration,
    /// The longest a session may live.
    pub max_lifetime: Duration,
    /// Bytes per second of output a session may keep up (a burst of four seconds' worth is
    /// allowed); past it the session is ended.
    pub max_output_rate: u64,
    /// Silence after which a tool without a ready pattern counts as idle.
    pub quiet: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: 4,
            idle_timeout: Duration::from_secs(1800),
            max_lifetime: Duration::from_secs(4 * 3600),
            max_output_rate: 1 << 20,
            quiet: Duration::from_millis(1000),
        }
    }
}

/// A session's identifier: a UUIDv7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(uuid::Uuid);

impl SessionId {
    /// A fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SessionId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// Where a session is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionState {
    Starting,
    Busy,
    Idle,
    /// A rule that needs a person matches the screen.
    WaitingForInput {
        question: String,
        pattern: String,
    },
    Exited {
        /// The exit code; a signal that ended the program under the shim shows as 128 + N.
        exit_code: Option<i32>,
        /// The signal that ended the session's leader, when one did.
        signal: Option<i32>,
        reason: EndReason,
        message: String,
    },
}

impl SessionState {
    /// The state's name, as the API shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Busy => "busy",
            Self::Idle => "idle",
            Self::WaitingForInput { .. } => "waiting_for_input",
            Self::Exited { .. } => "exited",
        }
    }

    /// Whether the session is over.
    pub fn is_exited(&self) -> bool {
        matches!(self, Self::Exited { .. })
    }
}

/// Why a session ended: a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The program exited by itself (or was killed from outside the bridge).
    ProcessExited,
    /// The run shim could not start the program (it is not installed, or may not be run).
    CliNotFound,
    /// A client deleted the session.
    Deleted,
    /// Nobody typed into or looked at the session for the idle timeout.
    IdleTimeout,
    /// The session reached its maximum lifetime.
    MaxLifetime,
    /// The program printed faster than the output rate limit.
    OutputRateExceeded,
    /// The bridge shut down.
    Shutdown,
    /// The bridge stopped without ending the session (found at the next start).
    Interrupted,
}

impl EndReason {
    fn message(self) -> &'static str {
        match self {
            Self::ProcessExited => "the program exited",
            Self::CliNotFound => "the program could not be started",
            Self::Deleted => "the session was deleted by request",
            Self::IdleTimeout => {
                "nobody typed into or looked at the session for its idle timeout \
                 (HB_SESSION_IDLE_TIMEOUT)"
            }
            Self::MaxLifetime => "the session reached its maximum lifetime",
            Self::OutputRateExceeded => {
                "the program printed faster than HB_SESSION_MAX_OUTPUT_RATE allows"
            }
            Self::Shutdown => "the bridge shut down",
            Self::Interrupted => "the bridge stopped while the session was running",
        }
    }
}

/// What the actor publishes: the state, and a counter bumped by every screen change.
#[derive(Debug, Clone)]
pub struct View {
    pub state: SessionState,
    pub revision: u64,
    pub ended_at: Option<OffsetDateTime>,
}

/// A session's record: what `GET /v1/sessions/{id}` shows and what is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub adapter: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub ended_at: Option<OffsetDateTime>,
    pub rows: u16,
    pub cols: u16,
    #[serde(flatten)]
    pub state: SessionState,
}

/// Requests the actor serves.
enum Command {
    Input {
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), SessionState>>,
    },
    Resize {
        rows: u16,
        cols: u16,
        reply: oneshot::Sender<Result<(), SessionState>>,
    },
    Stop {
        reason: EndReason,
        reply: oneshot::Sender<()>,
    },
    /// Writes out the cast's buffered events, for a download while the session runs.
    FlushRecording {
        reply: oneshot::Sender<Result<(), SessionState>>,
    },
}

/// State changes a slow follower may fall behind by before it skips some.
const STATE_BACKLOG: usize = 256;
/// Chunks of output an attached terminal may fall behind by before it is redrawn whole.
const OUTPUT_BACKLOG: usize = 1024;

/// The emulator, with the replies it owes the program.
type Emulator = vt100::Parser<Replies>;

/// One session, as handlers see it.
pub struct Session {
    pub id: SessionId,
    pub adapter: String,
    pub created_at: OffsetDateTime,
    emulator: Arc<Mutex<Emulator>>,
    view: watch::Receiver<View>,
    /// Every change of state, in order (the view keeps only the latest).
    states: broadcast::Sender<SessionState>,
    /// The output as the program wrote it, secrets masked, for attached terminals.
    output: broadcast::Sender<bytes::Bytes>,
    commands: mpsc::Sender<Command>,
    /// The last time a client typed, looked or listened.
    activity: Arc<Mutex<Instant>>,
    redactor: Arc<Redactor>,
    recording: PathBuf,
}

impl Session {
    /// The session's record now.
    pub fn record(&self) -> SessionRecord {
        let view = self.view.borrow().clone();
        let (rows, cols) = lock(&self.emulator).screen().size();
        SessionRecord {
            id: self.id,
            adapter: self.adapter.clone(),
            created_at: self.created_at,
            ended_at: view.ended_at,
            rows: rows.get(),
            cols: cols.get(),
            state: view.state,
        }
    }

    /// The rendered screen, secrets masked.
    pub fn screen(&self, with_cells: bool) -> screen::Snapshot {
        self.touch();
        let emulator = lock(&self.emulator);
        screen::snapshot(emulator.screen(), with_cells, |text| {
            self.redactor.redact(text)
        })
    }

    /// The cursor-key and paste modes the program chose, to encode keys and pastes.
    pub fn input_modes(&self) -> (bool, bool) {
        let emulator = lock(&self.emulator);
        let screen = emulator.screen();
        (screen.application_cursor(), screen.bracketed_paste())
    }

    /// Attaches a terminal: the escape codes that draw the screen as it is now (secrets
    /// masked), and the output from then on. Both are taken under the emulator's lock, which
    /// the actor holds while it feeds and forwards a chunk, so every chunk is either drawn or
    /// received, never both or neither.
    pub fn attach(&self) -> (Vec<u8>, broadcast::Receiver<bytes::Bytes>) {
        self.touch();
        let emulator = lock(&self.emulator);
        let receiver = self.output.subscribe();
        let drawing = redraw(emulator.screen());
        drop(emulator);
        (self.redactor.redact_bytes(&drawing), receiver)
    }

    /// The screen as it is now, as escape codes for an attached terminal.
    pub fn redraw(&self) -> Vec<u8> {
        let drawing = redraw(lock(&self.emulator).screen());
        self.redactor.redact_bytes(&drawing)
    }

    /// Types `bytes`; refused with the state once the session has exited.
    pub async fn input(&self, bytes: Vec<u8>) -> Result<(), SessionState> {
        self.touch();
        let (reply, answer) = oneshot::channel();
        self.send(Command::Input { bytes, reply }, answer).await
    }

    /// Resizes the terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), SessionState> {
        self.touch();
        let (reply, answer) = oneshot::channel();
        self.send(Command::Resize { rows, cols, reply }, answer)
            .await
    }

    /// Writes out what the cast holds in memory, so a download now has everything recorded
    /// so far; the actor otherwise writes at each pause in the output, and a busy program may
    /// not pause for a while. Refused with the state once the session has ended (its cast is
    /// complete then).
    pub async fn flush_recording(&self) -> Result<(), SessionState> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::FlushRecording { reply }, answer).await
    }

    /// Ends the session (unless it has ended) and returns its final record.
    pub async fn stop(&self, reason: EndReason) -> SessionRecord {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Stop { reason, reply })
            .await
            .is_ok()
        {
            let _ = answer.await;
        }
        let mut view = self.view.clone();
        let _ = view.wait_for(|v| v.state.is_exited()).await;
        self.record()
    }

    /// Whether the session is over.
    pub fn is_exited(&self) -> bool {
        self.view.borrow().state.is_exited()
    }

    /// Follows the session: every change of state, and the view (whose revision moves with
    /// each screen change).
    pub fn subscribe(&self) -> (broadcast::Receiver<SessionState>, watch::Receiver<View>) {
        self.touch();
        (self.states.subscribe(), self.view.clone())
    }

    /// Waits until `ready` holds for the state, `refuse` holds (answered at once), or the
    /// deadline passes. Returns the state either way, with whether it was reached.
    pub async fn wait_for(
        &self,
        ready: impl Fn(&SessionState) -> bool,
        refuse: impl Fn(&SessionState) -> bool,
        timeout: Duration,
    ) -> (bool, SessionState) {
        let mut view = self.view.clone();
        let waited = tokio::time::timeout(
            timeout,
            view.wait_for(|v| ready(&v.state) || refuse(&v.state)),
        )
        .await;
        let state = self.view.borrow().state.clone();
        let reached = matches!(waited, Ok(Ok(_))) && ready(&state);
        (reached, state)
    }

    /// Where the session's cast is.
    pub fn recording_path(&self) -> &std::path::Path {
        &self.recording
    }

    /// Notes that a client used the session, which keeps it from its idle timeout.
    pub fn touch(&self) {
        *lock(&self.activity) = Instant::now();
    }

    async fn send(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<(), SessionState>>,
    ) -> Result<(), SessionState> {
        if self.commands.send(command).await.is_err() {
            return Err(self.view.borrow().state.clone());
        }
        answer
            .await
            .unwrap_or_else(|_| Err(self.view.borrow().state.clone()))
    }
}

/// Escape codes that turn a blank terminal into `screen`: the alternate screen when the
/// program uses it, a clear, then the emulator's own rendering of cells, cursor and modes.
fn redraw(screen: &vt100::Screen) -> Vec<u8> {
    let mut drawing = Vec::new();
    if screen.alternate_screen() {
        drawing.extend_from_slice(b"\x1b[?1049h");
    }
    drawing.extend_from_slice(b"\x1b[H\x1b[2J");
    drawing.extend_from_slice(screen.state_formatted().as_bytes());
    drawing
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a session could not be found or used.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no session has id `{0}`")]
    NotFound(String),
}

/// Every session of this bridge.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

/// The sessions in memory, and how many are starting (they hold a place against the limit).
#[derive(Default)]
struct Registry {
    sessions: BTreeMap<SessionId, Arc<Session>>,
    starting: usize,
}

impl Registry {
    fn alive(&self) -> usize {
        let running = self.sessions.values().filter(|s| !s.is_exited()).count();
        running + self.starting
    }

    /// Forgets the oldest ended sessions beyond [`KEEP_ENDED`].
    fn prune(&mut self) {
        let ended: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_exited())
            .map(|(id, _)| *id)
            .collect();
        for old in ended.iter().take(ended.len().saturating_sub(KEEP_ENDED)) {
            self.sessions.remove(old);
        }
    }
}

struct Inner {
    config: Arc<Config>,
    adapters: Adapters,
    login: Arc<WorkingCopy>,
    sessions: Mutex<Registry>,
    closing: std::sync::atomic::AtomicBool,
    tickets: tickets::Tickets,
}

impl Sessions {
    /// The sessions of a bridge with this configuration; records a previous process left
    /// running are marked interrupted and their processes killed.
    pub async fn new(config: Arc<Config>, adapters: Adapters, login: Arc<WorkingCopy>) -> Self {
        start::interrupt_leftovers(&config.data_dir).await;
        Self {
            inner: Arc::new(Inner {
                config,
                adapters,
                login,
                sessions: Mutex::new(Registry::default()),
                closing: Default::default(),
                tickets: Default::default(),
            }),
        }
    }

    /// The directory of a session's record and recording.
    pub fn dir(&self, id: SessionId) -> PathBuf {
        start::session_dir(&self.inner.config.data_dir, id)
    }

    /// Starts a session; answers once its program runs.
    pub async fn start(&self, request: StartRequest) -> Result<Arc<Session>, StartError> {
        use std::sync::atomic::Ordering;
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(StartError::ShuttingDown);
        }
        let limit = self.inner.config.sessions.max_sessions;
        // The count and the reservation happen under one lock, so two starts cannot both take
        // the last place.
        {
            let mut registry = lock(&self.inner.sessions);
            if registry.alive() >= limit {
                return Err(StartError::TooMany { limit });
            }
            registry.prune();
            registry.starting += 1;
        }
        // The start goes on in a task of its own: a client that hangs up while the session
        // starts (it may wait for a login's writer) drops this future, and a session whose
        // program runs must still be registered, listed and deletable, and its place given
        // back if it fails.
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let id = SessionId::new();
            let started = start::start(
                id,
                request,
                &inner.config,
                &inner.adapters,
                inner.login.clone(),
            )
            .await;
            let mut registry = lock(&inner.sessions);
            registry.starting -= 1;
            let session = started?;
            registry.sessions.insert(id, session.clone());
            Ok(session)
        });
        match task.await {
            Ok(started) => started,
            Err(e) => {
                // Only a panic ends the task early; its place must not stay taken.
                lock(&self.inner.sessions).starting -= 1;
                Err(StartError::Prepare(format!(
                    "the session's start failed: {e}"
                )))
            }
        }
    }

    /// A session of this process, by id.
    pub fn get(&self, id: &str) -> Result<Arc<Session>, LookupError> {
        let parsed: SessionId = id
            .parse()
            .map_err(|_| LookupError::NotFound(id.to_owned()))?;
        lock(&self.inner.sessions)
            .sessions
            .get(&parsed)
            .cloned()
            .ok_or_else(|| LookupError::NotFound(id.to_owned()))
    }

    /// The attach tickets of these sessions.
    pub fn tickets(&self) -> &tickets::Tickets {
        &self.inner.tickets
    }

    /// A session's record: a live one's, or the stored one of a session that has gone.
    pub fn record(&self, id: &str) -> Result<SessionRecord, LookupError> {
        if let Ok(session) = self.get(id) {
            return Ok(session.record());
        }
        let parsed: SessionId = id
            .parse()
            .map_err(|_| LookupError::NotFound(id.to_owned()))?;
        start::read_record(&self.dir(parsed)).ok_or_else(|| LookupError::NotFound(id.to_owned()))
    }

    /// The records of the sessions in memory, newest first.
    pub fn list(&self) -> Vec<SessionRecord> {
        let sessions: Vec<Arc<Session>> = lock(&self.inner.sessions)
            .sessions
            .values()
            .cloned()
            .collect();
        sessions.iter().rev().map(|s| s.record()).collect()
    }

    /// Ends every session (the bridge is shutting down) and refuses new ones.
    pub async fn shutdown(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let sessions: Vec<Arc<Session>> = lock(&self.inner.sessions)
            .sessions
            .values()
            .cloned()
            .collect();
        let stops = sessions.iter().map(|s| s.stop(EndReason::Shutdown));
        futures::future::join_all(stops).await;
    }
}
