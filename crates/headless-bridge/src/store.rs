//! The run store: run records in an embedded SQLite database.
//!
//! One file under the data directory, in WAL mode so readers never wait for the writer. A record
//! is kept as JSON beside the few columns that queries filter on, so adding a field to
//! [`RunRecord`] needs no migration. Schema changes are numbered migrations tracked in
//! `PRAGMA user_version`. Calls run on the blocking pool; one connection behind a mutex is
//! plenty for the write rate of CLI runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use crate::run::events::{EventKind, RunEvent};
use crate::run::{Outcome, ReasonCode, RunId, RunRecord, RunState};

/// What a lookup of an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and now names the new run.
    Claimed,
    /// The key already names this run, made from a request with this body digest.
    Taken { run_id: RunId, body_sha256: String },
}

/// Filters and position of a run listing.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub adapter: Option<String>,
    pub contract_id: Option<String>,
    /// Only runs older than this one (ids sort by creation time).
    pub before: Option<RunId>,
    pub limit: usize,
}

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        contract_id TEXT,
        created_at  TEXT NOT NULL,
        record      TEXT NOT NULL
    );
    CREATE INDEX runs_state ON runs (state);
    CREATE INDEX runs_created_at ON runs (created_at);",
    "CREATE TABLE events (
        run_id TEXT NOT NULL,
        seq    INTEGER NOT NULL,
        at     TEXT NOT NULL,
        kind   TEXT NOT NULL,
        data   TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE idempotency (
        key         TEXT PRIMARY KEY,
        body_sha256 TEXT NOT NULL,
        run_id      TEXT NOT NULL
    );
    ALTER TABLE runs ADD COLUMN adapter TEXT NOT NULL DEFAULT 'codex';
    CREATE INDEX runs_contract_id ON runs (contract_id);",
    // Completion webhooks still to deliver: a row is written with the finished record and
    // deleted once the delivery has ended, so one cut short by a stop or a crash is resumed.
    "CREATE TABLE webhook_outbox (
        run_id   TEXT PRIMARY KEY,
        attempts INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;",
    // Retention counts from the end of a run, not its start.
    "ALTER TABLE runs ADD COLUMN finished_at TEXT;
    UPDATE runs SET finished_at = json_extract(record, '$.finished_at');
    CREATE INDEX runs_finished_at ON runs (finished_at);",
];

/// A failure of the run store. Always our fault, never the client's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to open the run store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("failed to query the run store")]
    Sqlite(#[from] rusqlite::Error),
    #[error("failed to decode a stored run record")]
    Decode(#[from] serde_json::Error),
    #[error("the run store holds an inconsistent entry: {0}")]
    Corrupt(String),
    #[error("the run store's worker thread failed")]
    Join(#[from] tokio::task::JoinError),
    #[error(
        "the run store at {path} has schema version {found}, newer than this build knows \
         ({known}); run a newer headless-bridge"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
}

/// Handle to the run store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// All writes go through this connection, one at a time.
    conn: Arc<Mutex<Connection>>,
    /// Reads use their own connection: in WAL mode they never wait for a writer.
    reader: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        let reader = Connection::open(path).map_err(open_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Inserts a new record or replaces the stored one with the same id. A finished record
    /// with a callback URL is written with its webhook delivery pending, in one transaction.
    pub async fn put(&self, record: &RunRecord) -> Result<(), StoreError> {
        let row = RunRow::of(record)?;
        self.with_conn_mut(move |conn| {
            let tx = conn.transaction()?;
            row.upsert(&tx)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The record with this id, if any.
    pub async fn get(&self, id: RunId) -> Result<Option<RunRecord>, StoreError> {
        let id = id.to_string();
        let json: Option<String> = self
            .with_conn(move |conn| {
                Ok(conn
                    .query_row("SELECT record FROM runs WHERE id = ?1", [id], |row| {
                        row.get(0)
                    })
                    .optional()?)
            })
            .await?;
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Records matching `filter`, newest first.
    pub async fn list(&self, filter: RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        let rows: Vec<String> = self
            .with_conn(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT record FROM runs
                     WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR adapter = ?2)
                       AND (?3 IS NULL OR contract_id = ?3) AND (?4 IS NULL OR id < ?4)
                     ORDER BY id DESC LIMIT ?5",
                )?;
                let params = params![
                    filter.state.map(state_text),
                    filter.adapter,
                    filter.contract_id,
                    filter.before.map(|id| id.to_string()),
                    filter.limit as i64,
                ];
                let rows = stmt.query_map(params, |row| row.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        rows.iter().map(|j| Ok(serde_json::from_str(j)?)).collect()
    }

    /// Appends events to a run's log in one transaction.
    pub async fn append_events(&self, run: RunId, events: Vec<RunEvent>) -> Result<(), StoreError> {
        let run = run.to_string();
        let rows: Vec<(i64, String, &'static str, String)> = events
            .iter()
            .map(|e| {
                Ok((
                    e.seq as i64,
                    rfc3339(e.at),
                    e.kind.as_str(),
                    serde_json::to_string(&e.data)?,
                ))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        self.with_conn_mut(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("INSERT OR REPLACE INTO events (run_id, seq, at, kind, data) VALUES (?1, ?2, ?3, ?4, ?5)")?;
                for (seq, at, kind, data) in &rows {
                    stmt.execute(params![run, seq, at, kind, data])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Up to `limit` events of a run with a sequence number above `after`, in order.
    pub async fn events_after(
        &self,
        run: RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RunEvent>, StoreError> {
        let run = run.to_string();
        let rows: Vec<(i64, String, String, String)> = self
            .with_conn(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, at, kind, data FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )?;
                // Past i64::MAX is past every event: it must not wrap to a negative number,
                // which would replay the whole log.
                let after = i64::try_from(after).unwrap_or(i64::MAX);
                let rows = stmt.query_map(params![run, after, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(seq, at, kind, data)| {
                Ok(RunEvent {
                    seq: seq as u64,
                    at: OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    kind: serde_json::from_value(serde_json::Value::String(kind))?,
                    data: serde_json::from_str(&data)?,
                })
            })
            .collect()
    }

    /// The run an idempotency key already names, as [`Store::insert_new`] would find it.
    pub async fn claimed(&self, key: &str) -> Result<Option<Claim>, StoreError> {
        let key = key.to_owned();
        self.with_conn(move |conn| taken_key(conn, &key)).await
    }

    /// Inserts a new run, claiming an idempotency key `(key, body digest)` for it in the same
    /// transaction. If the key is taken the run is not inserted. A key taken by a run that was
    /// interrupted is handed over, since that run never got to do its work.
    pub async fn insert_new(
        &self,
        record: &RunRecord,
        claim: Option<(String, String)>,
    ) -> Result<Claim, StoreError> {
        let row = RunRow::of(record)?;
        self.with_conn_mut(move |conn| {
            let tx = conn.transaction()?;
            if let Some((key, body_sha256)) = &claim {
                if let Some(taken) = taken_key(&tx, key)? {
                    return Ok(taken);
                }
                tx.execute(
                    "INSERT OR REPLACE INTO idempotency (key, body_sha256, run_id) VALUES (?1, ?2, ?3)",
                    params![key, body_sha256, row.id],
                )?;
            }
            row.upsert(&tx)?;
            tx.commit()?;
            Ok(Claim::Claimed)
        })
        .await
    }

    /// Deletes runs that finished more than `max_age` ago, or before the `max_count` that
    /// finished last, with their events and idempotency keys. Returns the ids deleted.
    pub async fn prune(
        &self,
        max_age: std::time::Duration,
        max_count: usize,
    ) -> Result<Vec<RunId>, StoreError> {
        // An age reaching back before the calendar's start deletes nothing by age; every time
        // sorts after the empty string.
        let cutoff = time::Duration::try_from(max_age)
            .ok()
            .and_then(|age| OffsetDateTime::now_utc().checked_sub(age))
            .map_or_else(String::new, rfc3339);
        let ids: Vec<String> = self
            .with_conn_mut(move |conn| {
                let tx = conn.transaction()?;
                let ids: Vec<String> = {
                    let mut stmt = tx.prepare(
                        "SELECT id FROM runs WHERE state = 'finished' AND (finished_at < ?1 OR id NOT IN
                           (SELECT id FROM runs WHERE state = 'finished'
                            ORDER BY finished_at DESC, id DESC LIMIT ?2))",
                    )?;
                    let rows = stmt.query_map(params![cutoff, max_count as i64], |r| r.get(0))?;
                    rows.collect::<Result<_, _>>()?
                };
                for id in &ids {
                    tx.execute("DELETE FROM webhook_outbox WHERE run_id = ?1", [id])?;
                    tx.execute("DELETE FROM events WHERE run_id = ?1", [id])?;
                    tx.execute("DELETE FROM idempotency WHERE run_id = ?1", [id])?;
                    tx.execute("DELETE FROM runs WHERE id = ?1", [id])?;
                }
                tx.commit()?;
                Ok(ids)
            })
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Finished runs whose completion webhook is still to be delivered, oldest first, with
    /// the attempts already made.
    pub async fn pending_webhooks(&self) -> Result<Vec<(RunRecord, u32)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .with_conn(|conn| {
                let mut stmt = conn.prepare(
                    "SELECT runs.record, webhook_outbox.attempts FROM webhook_outbox
                     JOIN runs ON runs.id = webhook_outbox.run_id ORDER BY webhook_outbox.run_id",
                )?;
                let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        rows.into_iter()
            .map(|(json, attempts)| {
                Ok((
                    serde_json::from_str(&json)?,
                    u32::try_from(attempts).unwrap_or(0),
                ))
            })
            .collect()
    }

    /// Notes that `attempts` attempts to deliver the run's webhook have failed so far.
    pub async fn webhook_attempted(&self, id: RunId, attempts: u32) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with_conn_mut(move |conn| {
            conn.execute(
                "UPDATE webhook_outbox SET attempts = ?2 WHERE run_id = ?1",
                params![id, attempts],
            )?;
            Ok(())
        })
        .await
    }

    /// Ends the run's webhook delivery, delivered or given up.
    pub async fn webhook_settled(&self, id: RunId) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with_conn_mut(move |conn| {
            conn.execute("DELETE FROM webhook_outbox WHERE run_id = ?1", [id])?;
            Ok(())
        })
        .await
    }

    /// Marks every unfinished run as interrupted: called at start-up, when no run of this
    /// process can be in progress yet. Returns the runs it marked.
    pub async fn interrupt_unfinished(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<String> = self
            .with_conn(|conn| {
                let mut stmt = conn.prepare("SELECT record FROM runs WHERE state != 'finished'")?;
                let rows = stmt.query_map([], |row| row.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        for json in &rows {
            let mut record: RunRecord = serde_json::from_str(json)?;
            record.state = RunState::Finished;
            record.outcome = Some(Outcome::Interrupted);
            record.reason = Some(ReasonCode::Interrupted);
            record.message = Some("the bridge stopped while this run was in progress".into());
            record.finished_at = Some(OffsetDateTime::now_utc());
            self.put(&record).await?;
            self.append_outcome_event(&record).await?;
        }
        let ids = rows
            .iter()
            .filter_map(|json| serde_json::from_str::<RunRecord>(json).ok())
            .map(|r| r.id);
        Ok(ids.collect())
    }

    /// Closes the event log of a run that ended without its own writer.
    async fn append_outcome_event(&self, record: &RunRecord) -> Result<(), StoreError> {
        let run = record.id.to_string();
        let last: i64 = self
            .with_conn(move |conn| {
                Ok(conn.query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?1",
                    [run],
                    |r| r.get(0),
                )?)
            })
            .await?;
        let event = RunEvent {
            seq: last as u64 + 1,
            at: OffsetDateTime::now_utc(),
            kind: EventKind::Outcome,
            data: serde_json::json!({
                "state": record.state, "outcome": record.outcome, "reason": record.reason, "message": record.message,
            }),
        };
        self.append_events(record.id, vec![event]).await
    }

    /// Runs a write on the writer connection.
    async fn with_conn_mut<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await?
    }

    /// Runs a read on the reader connection.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await?
    }
}

/// A record as the columns of the runs table.
struct RunRow {
    id: String,
    state: &'static str,
    contract_id: Option<String>,
    created_at: String,
    finished_at: Option<String>,
    adapter: String,
    json: String,
    /// The record is finished and has a completion webhook to deliver.
    webhook: bool,
}

impl RunRow {
    fn of(record: &RunRecord) -> Result<Self, StoreError> {
        Ok(Self {
            id: record.id.to_string(),
            state: state_text(record.state),
            contract_id: record.spec.contract_id.clone(),
            created_at: rfc3339(record.created_at),
            finished_at: record.finished_at.map(rfc3339),
            adapter: record.spec.adapter.clone(),
            json: serde_json::to_string(record)?,
            webhook: record.state == RunState::Finished && record.spec.callback_url.is_some(),
        })
    }

    /// Writes the row; call it within a transaction. A run is written at each change of state,
    /// so the statements are kept prepared.
    fn upsert(&self, conn: &Connection) -> Result<(), StoreError> {
        conn.prepare_cached(
            "INSERT INTO runs (id, state, contract_id, created_at, record, adapter, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record,
               finished_at = excluded.finished_at",
        )?
        .execute(params![
            self.id,
            self.state,
            self.contract_id,
            self.created_at,
            self.json,
            self.adapter,
            self.finished_at
        ])?;
        if self.webhook {
            conn.prepare_cached("INSERT OR IGNORE INTO webhook_outbox (run_id) VALUES (?1)")?
                .execute([&self.id])?;
        }
        Ok(())
    }
}

/// The run an idempotency key already names, unless that run was interrupted.
fn taken_key(conn: &Connection, key: &str) -> Result<Option<Claim>, StoreError> {
    let existing: Option<(String, String)> = conn
        .query_row(
            "SELECT run_id, body_sha256 FROM idempotency WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((run, body_sha256)) = existing else {
        return Ok(None);
    };
    let outcome: Option<String> = conn
        .query_row(
            "SELECT json_extract(record, '$.outcome') FROM runs WHERE id = ?1",
            [&run],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    if outcome.as_deref() == Some("interrupted") {
        return Ok(None);
    }
    let run_id = run
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("idempotency key names run `{run}`")))?;
    Ok(Some(Claim::Taken {
        run_id,
        body_sha256,
    }))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

fn state_text(state: RunState) -> &'static str {
    match state {
        RunState::Queued => "queued",
        RunState::Preparing => "preparing",
        RunState::Running => "running",
        RunState::Finished => "finished",
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC times format as RFC 3339")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunSpec;

    fn spec() -> RunSpec {
        RunSpec {
            adapter: "codex".into(),
            prompt: "fix it".into(),
            repo: None,
            tools: Vec::new(),
            timeout_s: 60,
            idle_timeout_s: None,
            callback_url: None,
            contract_id: Some("c-1".into()),
            artifacts: Vec::new(),
            credential: None,
        }
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite3");
        let mut record = RunRecord::queued(spec());
        Store::open(&path).unwrap().put(&record).await.unwrap();

        record.state = RunState::Finished;
        record.outcome = Some(Outcome::Succeeded);
        record.output = "done".into();
        Store::open(&path).unwrap().put(&record).await.unwrap();

        let store = Store::open(&path).unwrap();
        assert_eq!(store.get(record.id).await.unwrap(), Some(record.clone()));
        let all = RunFilter {
            limit: 10,
            ..RunFilter::default()
        };
        assert_eq!(store.list(all).await.unwrap(), vec![record]);
    }

    #[tokio::test]
    async fn unfinished_runs_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let record = RunRecord::queued(spec());
        store.put(&record).await.unwrap();

        assert_eq!(store.interrupt_unfinished().await.unwrap(), [record.id]);
        let stored = store.get(record.id).await.unwrap().unwrap();
        assert_eq!(stored.outcome, Some(Outcome::Interrupted));
        assert_eq!(stored.reason, Some(ReasonCode::Interrupted));
        assert_eq!(store.interrupt_unfinished().await.unwrap(), []);
    }

    #[tokio::test]
    async fn listing_filters_and_pages_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            let mut record = RunRecord::queued(RunSpec {
                contract_id: Some(format!("c-{}", i % 2)),
                ..spec()
            });
            if i == 4 {
                record.state = RunState::Finished;
            }
            store.put(&record).await.unwrap();
            ids.push(record.id);
        }
        let page = |before, contract: Option<&str>, state| RunFilter {
            before,
            contract_id: contract.map(str::to_owned),
            state,
            limit: 2,
            ..RunFilter::default()
        };
        let first: Vec<_> = store
            .list(page(None, None, None))
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(first, [ids[4], ids[3]]);
        let second: Vec<_> = store
            .list(page(Some(ids[3]), None, None))
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(second, [ids[2], ids[1]]);
        let c1: Vec<_> = store
            .list(page(None, Some("c-1"), None))
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(c1, [ids[3], ids[1]]);
        let finished = store
            .list(page(None, None, Some(RunState::Finished)))
            .await
            .unwrap();
        assert_eq!(finished.len(), 1);
    }

    #[tokio::test]
    async fn an_idempotency_key_is_claimed_once_unless_its_run_was_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let (first, second) = (RunRecord::queued(spec()), RunRecord::queued(spec()));
        let claim = |h: &str| Some(("k".to_owned(), h.to_owned()));
        assert_eq!(
            store.insert_new(&first, claim("h1")).await.unwrap(),
            Claim::Claimed
        );
        let again = store.insert_new(&second, claim("h2")).await.unwrap();
        assert_eq!(
            again,
            Claim::Taken {
                run_id: first.id,
                body_sha256: "h1".into()
            }
        );
        assert!(
            store.get(second.id).await.unwrap().is_none(),
            "a refused run is not stored"
        );

        store.interrupt_unfinished().await.unwrap();
        assert_eq!(
            store.insert_new(&second, claim("h2")).await.unwrap(),
            Claim::Claimed
        );
    }

    #[tokio::test]
    async fn a_finished_run_with_a_callback_has_its_webhook_pending_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let mut hooked = RunRecord::queued(RunSpec {
            callback_url: Some("https://hooks.example/run".into()),
            ..spec()
        });
        store.put(&hooked).await.unwrap();
        let mut plain = RunRecord::queued(spec());
        plain.state = RunState::Finished;
        store.put(&plain).await.unwrap();
        assert_eq!(
            store.pending_webhooks().await.unwrap(),
            [],
            "a run still going, and one without a callback, have nothing to deliver"
        );

        hooked.state = RunState::Finished;
        hooked.outcome = Some(Outcome::Succeeded);
        store.put(&hooked).await.unwrap();
        store.webhook_attempted(hooked.id, 2).await.unwrap();
        // Put again (as a restart's interruption would): still one delivery, attempts kept.
        store.put(&hooked).await.unwrap();
        assert_eq!(
            store.pending_webhooks().await.unwrap(),
            [(hooked.clone(), 2)]
        );

        store.webhook_settled(hooked.id).await.unwrap();
        assert_eq!(store.pending_webhooks().await.unwrap(), []);
    }

    #[tokio::test]
    async fn a_pruned_run_takes_its_pending_webhook_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let mut hooked = RunRecord::queued(RunSpec {
            callback_url: Some("https://hooks.example/run".into()),
            ..spec()
        });
        hooked.state = RunState::Finished;
        store.put(&hooked).await.unwrap();

        store
            .prune(std::time::Duration::from_secs(3600), 0)
            .await
            .unwrap();
        assert_eq!(store.pending_webhooks().await.unwrap(), []);
        let left: i64 = store
            .with_conn(|conn| {
                Ok(conn.query_row("SELECT COUNT(*) FROM webhook_outbox", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_finished_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let mut ids = Vec::new();
        for _ in 0..4 {
            let mut record = RunRecord::queued(spec());
            record.state = RunState::Finished;
            store.put(&record).await.unwrap();
            ids.push(record.id);
        }
        let running = RunRecord::queued(spec());
        store.put(&running).await.unwrap();

        let pruned = store
            .prune(std::time::Duration::from_secs(3600), 2)
            .await
            .unwrap();
        assert_eq!(pruned.len(), 2);
        assert!(pruned.contains(&ids[0]) && pruned.contains(&ids[1]));
        assert!(
            store.get(running.id).await.unwrap().is_some(),
            "unfinished runs are never pruned"
        );
    }

    /// Regression: age was counted from a run's creation and the count kept the runs created
    /// last, so a long run could be deleted the moment it finished, before anyone read it.
    #[tokio::test]
    async fn retention_counts_from_the_end_of_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let hours_ago = |h: i64| OffsetDateTime::now_utc() - time::Duration::hours(h);
        let finished = |created: i64, ended: i64| {
            let mut record = RunRecord::queued(spec());
            record.created_at = hours_ago(created);
            record.state = RunState::Finished;
            record.finished_at = Some(hours_ago(ended));
            record
        };
        // Created in this order; the long one, created first, finished last.
        let (long, old, recent) = (finished(5, 0), finished(4, 3), finished(2, 1));
        for record in [&long, &old, &recent] {
            store.put(record).await.unwrap();
        }

        // An age reaching back past the calendar's start deletes nothing by age (it panicked).
        let far_past = std::time::Duration::from_secs(1 << 40);
        assert_eq!(store.prune(far_past, 10).await.unwrap(), []);
        let two_hours = std::time::Duration::from_secs(2 * 3600);
        assert_eq!(store.prune(two_hours, 10).await.unwrap(), [old.id]);
        assert_eq!(store.prune(far_past, 1).await.unwrap(), [recent.id]);
        assert!(store.get(long.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn uses_wal_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.sqlite3");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
