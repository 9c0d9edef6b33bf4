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

use crate::run::{Outcome, ReasonCode, RunId, RunRecord, RunState};

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &["CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        state       TEXT NOT NULL,
        contract_id TEXT,
        created_at  TEXT NOT NULL,
        record      TEXT NOT NULL
    );
    CREATE INDEX runs_state ON runs (state);
    CREATE INDEX runs_created_at ON runs (created_at);"];

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
    conn: Arc<Mutex<Connection>>,
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
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Inserts a new record or replaces the stored one with the same id.
    pub async fn put(&self, record: &RunRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record)?;
        let (id, state) = (record.id.to_string(), state_text(record.state));
        let contract = record.spec.contract_id.clone();
        let created = rfc3339(record.created_at);
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO runs (id, state, contract_id, created_at, record)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, record = excluded.record",
                params![id, state, contract, created, json],
            )?;
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

    /// The newest `limit` records, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let rows: Vec<String> = self
            .with_conn(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT record FROM runs ORDER BY created_at DESC, id DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map([limit as i64], |row| row.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await?;
        rows.iter().map(|j| Ok(serde_json::from_str(j)?)).collect()
    }

    /// Marks every unfinished run as interrupted: called at start-up, when no run of this
    /// process can be in progress yet. Returns how many were marked.
    pub async fn interrupt_unfinished(&self) -> Result<usize, StoreError> {
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
        }
        Ok(rows.len())
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await?
    }
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
    use crate::run::{AdapterKind, RunSpec};

    fn spec() -> RunSpec {
        RunSpec {
            adapter: AdapterKind::Codex,
            prompt: "fix it".into(),
            repo: None,
            tools: Vec::new(),
            timeout_s: 60,
            contract_id: Some("c-1".into()),
            artifacts: Vec::new(),
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
        assert_eq!(store.recent(10).await.unwrap(), vec![record]);
    }

    #[tokio::test]
    async fn unfinished_runs_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let record = RunRecord::queued(spec());
        store.put(&record).await.unwrap();

        assert_eq!(store.interrupt_unfinished().await.unwrap(), 1);
        let stored = store.get(record.id).await.unwrap().unwrap();
        assert_eq!(stored.outcome, Some(Outcome::Interrupted));
        assert_eq!(stored.reason, Some(ReasonCode::Interrupted));
        assert_eq!(store.interrupt_unfinished().await.unwrap(), 0);
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
