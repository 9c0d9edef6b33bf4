//! A run's event log: state changes, output lines, the CLI's parsed events, the outcome.
//!
//! The log is written to the store as the run goes, so a subscriber that comes late, or comes
//! back after a dropped connection, replays it from any point, and a slow subscriber reads at
//! its own pace without ever holding the run back. An [`EventSink`] numbers the events and
//! hands them to a writer task that stores them in batches, then announces the newest number
//! on a watch channel for live followers.
//!
//! Output is budgeted so memory and storage stay flat whatever a CLI prints: the first
//! [`HEAD_BYTES`] of output become events, the last [`TAIL_BYTES`] are held in a ring and
//! stored at the end, and the middle is counted and dropped. Every line also goes to a spill
//! file (capped) that `GET /v1/runs/{id}/logs` serves whole.
//!
//! In a Job executor's worker the sink is a [relay](EventSink::relay): every call is passed on
//! as it was made ([`Relayed`]) to be sent to the bridge, whose own sink for the run then
//! numbers, budgets, spills and stores it exactly as for a local run.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::run::{RunId, text};
use crate::store::Store;

/// Output bytes stored as events from the start of a run.
pub const HEAD_BYTES: usize = 512 << 10;
/// Output bytes stored as events from the end of a run.
pub const TAIL_BYTES: usize = 256 << 10;
/// Events written to the store in one transaction at most.
const BATCH: usize = 512;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The run moved to a new state.
    State,
    /// A line the CLI printed on stdout that is not one of its structured events.
    Output,
    /// A line the CLI printed on stderr.
    Stderr,
    /// One of the CLI's structured events (a JSON line), parsed.
    CliEvent,
    /// Something the bridge wants a reader to know (output dropped, a tool fetched).
    Notice,
    /// The run finished; always the last event.
    Outcome,
}

impl EventKind {
    /// The name used in the store and as the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::State => "state",
            Self::Output => "output",
            Self::Stderr => "stderr",
            Self::CliEvent => "cli_event",
            Self::Notice => "notice",
            Self::Outcome => "outcome",
        }
    }
}

/// One entry of a run's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunEvent {
    /// 1, 2, 3, ... within the run; the SSE event id.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub kind: EventKind,
    pub data: Value,
}

/// One call on a relaying sink, as the worker sends it to the bridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Relayed {
    State {
        data: Value,
    },
    Notice {
        message: String,
    },
    Line {
        kind: EventKind,
        line: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parsed: Option<Value>,
    },
}

/// Numbers a run's events, budgets its output, spills it to a file, and feeds the writer.
pub struct EventSink {
    /// Set on a worker's sink: calls go here, untouched, instead of to the writer.
    relay: Option<mpsc::UnboundedSender<Relayed>>,
    next_seq: u64,
    tx: mpsc::UnboundedSender<RunEvent>,
    head_left: usize,
    tail: VecDeque<(EventKind, TailLine, usize)>,
    tail_bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
    spill: Option<Spill>,
}

/// The writer's side: finishes when the sink is dropped and every event is stored.
pub type WriterTask = tokio::task::JoinHandle<()>;

impl EventSink {
    /// A sink for `run`, whose writer stores events in `store` and announces the newest seq on
    /// `latest`. Every line is also appended to `spill_path`, up to `spill_cap` bytes.
    pub fn start(
        store: Store,
        run: RunId,
        latest: watch::Sender<u64>,
        spill_path: Option<PathBuf>,
        spill_cap: u64,
    ) -> (Self, WriterTask) {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_events(store, run, rx, latest).in_current_span());
        let spill = spill_path.and_then(|path| Spill::open(path, spill_cap));
        let sink = Self {
            relay: None,
            next_seq: 1,
            tx,
            head_left: HEAD_BYTES,
            tail: VecDeque::new(),
            tail_bytes: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
            spill,
        };
        (sink, writer)
    }

    /// A sink that passes every call on to `relay` and stores nothing itself.
    pub fn relay(relay: mpsc::UnboundedSender<Relayed>) -> Self {
        let (tx, _) = mpsc::unbounded_channel();
        Self {
            relay: Some(relay),
            next_seq: 1,
            tx,
            head_left: HEAD_BYTES,
            tail: VecDeque::new(),
            tail_bytes: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
            spill: None,
        }
    }

    /// Applies a call a worker relayed, as if it had been made on this sink.
    pub fn apply(&mut self, call: Relayed) {
        match call {
            Relayed::State { data } => self.state(data),
            Relayed::Notice { message } => self.notice(message),
            Relayed::Line { kind, line, parsed } => self.line(kind, &line, parsed),
        }
    }

    /// Records a state change (never dropped).
    pub fn state(&mut self, data: Value) {
        if let Some(relay) = &self.relay {
            let _ = relay.send(Relayed::State { data });
            return;
        }
        self.emit(EventKind::State, data);
    }

    /// Records a notice from the bridge (never dropped).
    pub fn notice(&mut self, message: impl Into<String>) {
        if let Some(relay) = &self.relay {
            let _ = relay.send(Relayed::Notice {
                message: message.into(),
            });
            return;
        }
        self.emit(EventKind::Notice, json!({ "message": message.into() }));
    }

    /// Records one output line, within the output budget. `parsed` is the line as a CLI event
    /// when it is one.
    pub fn line(&mut self, kind: EventKind, line: &str, parsed: Option<Value>) {
        if let Some(relay) = &self.relay {
            let _ = relay.send(Relayed::Line {
                kind,
                line: line.to_owned(),
                parsed,
            });
            return;
        }
        if let Some(spill) = &mut self.spill {
            spill.write(kind, line);
        }
        let size = line.len() + 1;
        if size <= self.head_left {
            self.head_left -= size;
            self.emit(kind, TailLine::new(line, parsed).into_data());
            return;
        }
        self.head_left = 0;
        // A line longer than the whole tail leaves its end, as text: the end of the output.
        let (kind, kept, size) = if size > TAIL_BYTES {
            let end = text::last_bytes(line, TAIL_BYTES - 1);
            self.dropped_bytes += (line.len() - end.len()) as u64;
            let kind = match kind {
                EventKind::CliEvent => EventKind::Output,
                other => other,
            };
            (kind, TailLine::Text(end.to_owned()), end.len() + 1)
        } else {
            // Most of a flood's lines are dropped again from the tail: they stay plain
            // strings until they are known to be kept.
            (kind, TailLine::new(line, parsed), size)
        };
        self.tail.push_back((kind, kept, size));
        self.tail_bytes += size;
        while self.tail_bytes > TAIL_BYTES {
            let Some((_, _, dropped)) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= dropped;
            self.dropped_lines += 1;
            self.dropped_bytes += dropped as u64;
        }
    }

    /// Writes the lines the log file buffers, so that the logs endpoint serves them while the
    /// run goes on. Call it where the output pauses, not after every line.
    pub fn flush_log(&mut self) {
        if let Some(spill) = &mut self.spill {
            let _ = spill.file.flush();
        }
    }

    /// Stores the kept tail, a note of what was dropped, and the outcome as the last event.
    pub fn finish(mut self, outcome: Value) {
        if self.dropped_bytes > 0 {
            let message = format!(
                "{} lines ({} bytes) of output were dropped here; the logs endpoint has the full stream up to its size limit",
                self.dropped_lines, self.dropped_bytes
            );
            self.emit(EventKind::Notice, json!({ "message": message, "dropped_lines": self.dropped_lines, "dropped_bytes": self.dropped_bytes }));
        }
        for (kind, line, _) in std::mem::take(&mut self.tail) {
            self.emit(kind, line.into_data());
        }
        if let Some(spill) = self.spill.take() {
            spill.close();
        }
        self.emit(EventKind::Outcome, outcome);
    }

    fn emit(&mut self, kind: EventKind, data: Value) {
        let event = RunEvent {
            seq: self.next_seq,
            at: OffsetDateTime::now_utc(),
            kind,
            data,
        };
        self.next_seq += 1;
        // The writer only stops when this sink is gone, so a failed send cannot happen.
        let _ = self.tx.send(event);
    }
}

async fn write_events(
    store: Store,
    run: RunId,
    mut rx: mpsc::UnboundedReceiver<RunEvent>,
    latest: watch::Sender<u64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let last = batch.last().map(|e| e.seq).unwrap_or_default();
        if let Err(e) = store.append_events(run, std::mem::take(&mut batch)).await {
            tracing::error!(error = %crate::error_chain(&e), "failed to store run events");
        }
        latest.send_replace(last);
    }
}

/// An output line waiting in the tail: the CLI's parsed event, or the line as printed.
enum TailLine {
    Parsed(Value),
    Text(String),
}

impl TailLine {
    fn new(line: &str, parsed: Option<Value>) -> Self {
        match parsed {
            Some(value) => Self::Parsed(value),
            None => Self::Text(line.to_owned()),
        }
    }

    /// The event's data.
    fn into_data(self) -> Value {
        match self {
            Self::Parsed(value) => value,
            Self::Text(line) => json!({ "line": line }),
        }
    }
}

/// The full output stream of a run in a file, up to a cap.
struct Spill {
    file: std::io::BufWriter<std::fs::File>,
    written: u64,
    cap: u64,
    dropped: u64,
}

impl Spill {
    fn open(path: PathBuf, cap: u64) -> Option<Self> {
        let opened = std::fs::File::create(&path);
        match opened {
            Ok(file) => Some(Self {
                file: std::io::BufWriter::with_capacity(64 << 10, file),
                written: 0,
                cap,
                dropped: 0,
            }),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "failed to create the run's log file");
                None
            }
        }
    }

    fn write(&mut self, kind: EventKind, line: &str) {
        let prefix = if kind == EventKind::Stderr {
            "[stderr] "
        } else {
            ""
        };
        let size = (prefix.len() + line.len() + 1) as u64;
        if self.written + size > self.cap {
            self.dropped += size;
            return;
        }
        self.written += size;
        let _ = writeln!(self.file, "{prefix}{line}");
    }

    fn close(mut self) {
        if self.dropped > 0 {
            let _ = writeln!(
                self.file,
                "[log truncated: {} more bytes were not kept]",
                self.dropped
            );
        }
        let _ = self.file.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sink() -> (tempfile::TempDir, Store, RunId, EventSink, WriterTask) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let run = RunId::new();
        let (latest, _) = watch::channel(0);
        let (sink, writer) = EventSink::start(
            store.clone(),
            run,
            latest,
            Some(dir.path().join("run.log")),
            1 << 20,
        );
        (dir, store, run, sink, writer)
    }

    #[tokio::test]
    async fn events_are_numbered_and_stored_in_order() {
        let (_dir, store, run, mut sink, writer) = sink().await;
        sink.state(json!({"state": "running"}));
        sink.line(EventKind::Output, "hello", None);
        sink.finish(json!({"outcome": "succeeded"}));
        writer.await.unwrap();

        let events = store.events_after(run, 0, 100).await.unwrap();
        let kinds: Vec<_> = events.iter().map(|e| (e.seq, e.kind)).collect();
        assert_eq!(
            kinds,
            [
                (1, EventKind::State),
                (2, EventKind::Output),
                (3, EventKind::Outcome)
            ]
        );
        assert_eq!(events[1].data, json!({"line": "hello"}));
        assert_eq!(store.events_after(run, 2, 100).await.unwrap().len(), 1);
        // Regression: an id above i64::MAX wrapped to a negative number and replayed all.
        for past_the_end in [1 << 63, u64::MAX] {
            assert_eq!(
                store.events_after(run, past_the_end, 100).await.unwrap(),
                []
            );
        }
    }

    #[tokio::test]
    async fn a_flood_keeps_head_and_tail_and_counts_the_middle() {
        let (dir, store, run, mut sink, writer) = sink().await;
        let line = "x".repeat(1023);
        let total = 4 * (HEAD_BYTES + TAIL_BYTES) / 1024;
        for _ in 0..total {
            sink.line(EventKind::Output, &line, None);
        }
        sink.line(EventKind::Output, "the last line", None);
        sink.finish(json!({}));
        writer.await.unwrap();

        let events = store.events_after(run, 0, 1_000_000).await.unwrap();
        let stored: usize = events
            .iter()
            .filter(|e| e.kind == EventKind::Output)
            .count();
        assert!(
            stored <= (HEAD_BYTES + TAIL_BYTES) / 1024 + 1,
            "{stored} output events stored"
        );
        let notice = events
            .iter()
            .find(|e| e.kind == EventKind::Notice)
            .expect("a dropped-output notice");
        assert!(notice.data["dropped_lines"].as_u64().unwrap() > 0);
        let last_output = events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Output)
            .unwrap();
        assert_eq!(last_output.data["line"], "the last line");
        let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
        assert!(
            log.len() <= (1 << 20) + 100 && log.ends_with("more bytes were not kept]\n"),
            "{}",
            log.len()
        );
    }

    /// Regression: a line longer than the whole tail dropped itself, so a run whose output
    /// was one enormous line (cut by the supervisor into 4 MiB pieces) kept none of it.
    #[tokio::test]
    async fn a_line_longer_than_the_tail_keeps_its_end() {
        let (_dir, store, run, mut sink, writer) = sink().await;
        let piece = "x".repeat(4 << 20);
        for _ in 0..3 {
            sink.line(EventKind::Output, &piece, None);
        }
        sink.line(EventKind::Output, &format!("{piece}the end"), None);
        sink.finish(json!({}));
        writer.await.unwrap();

        let events = store.events_after(run, 0, 1_000).await.unwrap();
        let lines: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == EventKind::Output)
            .map(|e| e.data["line"].as_str().unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "the tail holds the end of the last line");
        assert!(lines[0].ends_with("xxxthe end") && lines[0].len() < TAIL_BYTES);
        let notice = events
            .iter()
            .find(|e| e.kind == EventKind::Notice)
            .expect("a dropped-output notice");
        let dropped = notice.data["dropped_bytes"].as_u64().unwrap() as usize;
        assert_eq!(dropped + lines[0].len() + 1, 4 * (piece.len() + 1) + 7);
    }
}
