//! The run engine: admits runs, queues them for a slot, and tells callers how they go.
//!
//! Theory of operation. `submit` refuses work when draining or when the queue is full, stores
//! the queued record (claiming its idempotency key in the same transaction), and starts a
//! task for the run. The task waits for one of `max_concurrent_runs` slots, then hands the run
//! to the `Pipeline`. The record in the store is the truth: every state change is written
//! there before anyone is told. Each active run has a watch channel that flips when it is
//! done, another that carries the newest event number for live followers, and a cancellation
//! token. Shutdown first drains (no new runs, a grace period for running ones), then cancels
//! what is left, which finishes as interrupted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::events::EventSink;
use super::pipeline::Pipeline;
use super::webhook::{self, Webhooks};
use crate::adapter::Adapters;
use crate::config::Config;
use crate::credentials::relay::{LoginView, StartError};
use crate::credentials::{Logins, WorkingCopy};
use crate::fetch::{FetchStats, Fetcher};
use crate::k8s::executor::JobExecutor;
use crate::metrics::Metrics;
use crate::policy::UrlPolicy;
use crate::run::{Outcome, RunId, RunRecord, RunSpec, RunState};
use crate::store::{Claim, Store, StoreError};
use crate::workspace::Workspace;

/// How long a client is told to wait before retrying a refused submission.
const RETRY_AFTER_S: u64 = 5;

/// Why a run was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the run queue is full ({queued} runs waiting)")]
    QueueFull { queued: usize, retry_after_s: u64 },
    #[error("the bridge is shutting down")]
    ShuttingDown,
    #[error("idempotency key `{key}` was already used for run {run_id} with a different request")]
    Conflict { key: String, run_id: RunId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A run that was admitted, or the earlier run the same idempotency key already names.
#[derive(Debug)]
pub enum Submitted {
    New(RunRecord),
    Existing(RunRecord),
}

impl Submitted {
    /// The record, new or existing.
    pub fn record(&self) -> &RunRecord {
        match self {
            Self::New(record) | Self::Existing(record) => record,
        }
    }
}

/// Why a cancel request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no run has this id")]
    NotFound,
    #[error("the run has already finished")]
    Finished(Box<RunRecord>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Starts runs and tells callers how they go. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    store: Store,
    adapters: Adapters,
    logins: Logins,
    fetcher: Fetcher,
    policy: UrlPolicy,
    webhooks: Webhooks,
    /// Set when runs execute as Kubernetes Jobs.
    jobs: Option<Arc<JobExecutor>>,
    metrics: Arc<Metrics>,
    active: Mutex<HashMap<RunId, Active>>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Runs admitted and not yet finished (queued or running); a place is taken before a
    /// submission is stored, so that parallel submissions cannot overrun the queue.
    admitted: Arc<AtomicUsize>,
    draining: AtomicBool,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Handles of a run that has not finished.
#[derive(Clone)]
struct Active {
    done: watch::Receiver<bool>,
    latest_event: watch::Receiver<u64>,
    stop: CancellationToken,
    cancel_requested: Arc<AtomicBool>,
}

/// How a follower learns about new events of a run still going.
pub struct Follow {
    pub latest_event: watch::Receiver<u64>,
    pub done: watch::Receiver<bool>,
}

impl Engine {
    /// An engine over `store`; runs write their workspaces and logs under the data directory,
    /// or execute as Kubernetes Jobs when `jobs` is given. Call it within a Tokio runtime.
    pub fn new(
        config: Arc<Config>,
        store: Store,
        adapters: Adapters,
        jobs: Option<JobExecutor>,
    ) -> Self {
        let policy = UrlPolicy::new(&config.allowed_hosts);
        let logins = Logins::new(&config);
        if !config.codex_home_template {
            logins
                .iter()
                .for_each(|(_, login)| login.copy.remove_home_templates());
        }
        let inner = Inner {
            logins,
            jobs: jobs.map(Arc::new),
            fetcher: Fetcher::new(policy.clone(), config.fetch.clone()),
            webhooks: Webhooks::new(policy.clone(), config.webhook_secret.clone(), store.clone()),
            slots: Arc::new(Semaphore::new(config.max_concurrent_runs)),
            policy,
            config,
            store,
            adapters,
            metrics: Arc::default(),
            active: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            admitted: Arc::default(),
            draining: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The URL policy runs are checked against.
    pub fn policy(&self) -> &UrlPolicy {
        &self.inner.policy
    }

    /// The adapters runs may use.
    pub fn adapters(&self) -> &Adapters {
        &self.inner.adapters
    }

    /// The default Codex login's working copy.
    pub fn login(&self) -> &WorkingCopy {
        &self.inner.logins.default_login().copy
    }

    /// Every Codex login, by name.
    pub fn logins(&self) -> &Logins {
        &self.inner.logins
    }

    /// The Job executor, when runs execute as Kubernetes Jobs.
    pub fn jobs(&self) -> Option<&Arc<JobExecutor>> {
        self.inner.jobs.as_ref()
    }

    /// Starts a device-code login of the Codex login `name` (the default one for `None`), or
    /// returns the pending one (then `false`). `None` when no login has that name.
    pub async fn start_login(
        &self,
        name: Option<&str>,
    ) -> Option<Result<(LoginView, bool), StartError>> {
        self.inner.logins.get(name)?;
        // The start goes on in a task of its own: a client that hangs up while the CLI starts
        // drops this future, and the CLI it started must still be stopped (or followed) and
        // its throw-away home removed, which only the relay's own code does.
        let engine = self.clone();
        let name = name.map(str::to_owned);
        let task = self.inner.tasks.spawn(async move {
            let inner = &engine.inner;
            let login = inner
                .logins
                .get(name.as_deref())
                .expect("the login was found above");
            login
                .relay
                .start(login.copy.clone(), &inner.shutdown, &inner.tasks)
                .await
        });
        match task.await {
            Ok(started) => Some(started),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The default Codex login's working copy, shared, for sessions that outlive a request.
    pub fn shared_login(&self) -> Arc<WorkingCopy> {
        self.inner.logins.default_login().copy.clone()
    }

    /// The store runs are recorded in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The counters and histograms runs move.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// What the tool fetcher has done so far.
    pub fn fetch_stats(&self) -> &FetchStats {
        self.inner.fetcher.stats()
    }

    /// Whether completion webhooks can be signed (a secret is configured).
    pub fn webhooks_enabled(&self) -> bool {
        self.inner.webhooks.enabled()
    }

    /// The file holding a run's full output stream.
    pub fn log_path(&self, id: RunId) -> std::path::PathBuf {
        self.inner
            .config
            .data_dir
            .join("logs")
            .join(format!("{id}.log"))
    }

    /// Admits a run for `spec`. With an idempotency key, a repeat of the same request returns
    /// the run it made the first time, and a different request under that key is refused.
    pub async fn submit(
        &self,
        spec: RunSpec,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, SubmitError> {
        let record = RunRecord::queued(spec);
        let claim = idempotency_key.map(|key| (key, body_digest(&record.spec)));
        // A repeat of an earlier request takes no place in the queue: it gets its run (or its
        // conflict) even when the queue is full or the bridge is draining.
        if let Some((key, digest)) = &claim
            && let Some(Claim::Taken {
                run_id,
                body_sha256,
            }) = self.inner.store.claimed(key).await?
        {
            return self.earlier_run(run_id, &body_sha256, key, digest).await;
        }
        if self.inner.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let capacity = self.inner.config.max_concurrent_runs + self.inner.config.max_queued_runs;
        let Some(admission) = Admission::take(&self.inner.admitted, capacity) else {
            return Err(SubmitError::QueueFull {
                queued: self.inner.waiting.load(Ordering::SeqCst),
                retry_after_s: RETRY_AFTER_S,
            });
        };

        match self.inner.store.insert_new(&record, claim.clone()).await? {
            Claim::Claimed => {}
            Claim::Taken {
                run_id,
                body_sha256,
            } => {
                let (key, digest) = claim.as_ref().expect("only a claimed key can be taken");
                return self.earlier_run(run_id, &body_sha256, key, digest).await;
            }
        }

        self.start(record.clone(), admission);
        Ok(Submitted::New(record))
    }

    /// The run an idempotency key already names, made from a request with the digest
    /// `body_sha256`: returned when this request is the same, a conflict when it is not.
    async fn earlier_run(
        &self,
        run_id: RunId,
        body_sha256: &str,
        key: &str,
        digest: &str,
    ) -> Result<Submitted, SubmitError> {
        let conflict = || SubmitError::Conflict {
            key: key.to_owned(),
            run_id,
        };
        if body_sha256 != digest {
            return Err(conflict());
        }
        let existing = self.inner.store.get(run_id).await?;
        existing.map(Submitted::Existing).ok_or_else(conflict)
    }

    /// The run's record once it has finished, or as it stands after `max_wait`.
    pub async fn wait(
        &self,
        id: RunId,
        max_wait: Duration,
    ) -> Result<Option<RunRecord>, StoreError> {
        if let Some(mut done) = self.active(id).map(|a| a.done) {
            let _ = tokio::time::timeout(max_wait, done.wait_for(|done| *done)).await;
        }
        self.inner.store.get(id).await
    }

    /// Cancels a queued or running run and returns its record once it has stopped.
    pub async fn cancel(&self, id: RunId) -> Result<RunRecord, CancelError> {
        let Some(active) = self.active(id) else {
            return match self.inner.store.get(id).await? {
                Some(record) => Err(CancelError::Finished(Box::new(record))),
                None => Err(CancelError::NotFound),
            };
        };
        active.cancel_requested.store(true, Ordering::SeqCst);
        active.stop.cancel();
        let mut done = active.done;
        let _ = done.wait_for(|done| *done).await;
        let record = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or(CancelError::NotFound)?;
        // The run may have been ending by itself (its CLI exited, a timeout or a question
        // stopped it) when the request came: then the cancel did nothing, and says so.
        if record.outcome == Some(Outcome::Cancelled) {
            Ok(record)
        } else {
            Err(CancelError::Finished(Box::new(record)))
        }
    }

    /// Channels to follow a run still in progress; `None` once it has finished.
    pub fn follow(&self, id: RunId) -> Option<Follow> {
        self.active(id).map(|a| Follow {
            latest_event: a.latest_event,
            done: a.done,
        })
    }

    /// Stops admitting runs and gives those in progress up to `grace` to finish.
    pub async fn drain(&self, grace: Duration) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let all_done = async {
            loop {
                let pending: Vec<_> = self
                    .lock_active()
                    .values()
                    .map(|a| a.done.clone())
                    .collect();
                if pending.is_empty() {
                    return;
                }
                for mut done in pending {
                    let _ = done.wait_for(|done| *done).await;
                }
            }
        };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "runs still going after the shutdown grace period; cancelling them"
            );
        }
    }

    /// Cancels every run still going and waits until all are recorded.
    pub async fn shutdown(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        self.inner.webhooks.close(webhook::CLOSE_GRACE).await;
    }

    /// Resumes the completion webhooks a previous process left undelivered (it stopped or
    /// crashed first, or its runs were marked interrupted at this start).
    pub async fn resume_webhooks(&self) -> Result<(), StoreError> {
        let pending = self.inner.store.pending_webhooks().await?;
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "resuming webhook deliveries a previous process left"
            );
        }
        for (record, attempts_made) in pending {
            self.inner.webhooks.deliver(&record, attempts_made);
        }
        Ok(())
    }

    /// Runs waiting for a slot, and runs holding one.
    pub fn load(&self) -> (usize, usize) {
        let waiting = self.inner.waiting.load(Ordering::SeqCst);
        let running = self.inner.config.max_concurrent_runs - self.inner.slots.available_permits();
        (waiting, running)
    }

    /// Runs waiting for a slot, and runs past the queue that have not finished. Unlike
    /// [`Engine::load`], a finished run whose slot is still held while its workspace is
    /// removed no longer counts.
    pub fn unfinished(&self) -> (usize, usize) {
        let active = self.lock_active().len();
        let waiting = self.inner.waiting.load(Ordering::SeqCst);
        (waiting, active.saturating_sub(waiting))
    }

    fn active(&self, id: RunId) -> Option<Active> {
        self.lock_active().get(&id).cloned()
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Active>> {
        self.inner
            .active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn start(&self, record: RunRecord, admission: Admission) {
        let adapter = self
            .inner
            .adapters
            .get(&record.spec.adapter)
            .expect("submissions are validated against the adapters");
        let (done_tx, done) = watch::channel(false);
        let (latest_tx, latest_event) = watch::channel(0);
        let stop = self.inner.shutdown.child_token();
        let cancel_requested = Arc::new(AtomicBool::new(false));
        let active = Active {
            done,
            latest_event,
            stop: stop.clone(),
            cancel_requested: cancel_requested.clone(),
        };
        self.lock_active().insert(record.id, active);
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);

        // A root span: a run outlives the request that started it, and every line it logs
        // carries its own ids rather than those of whichever request came first.
        let span = tracing::info_span!(parent: None, "run", run_id = %record.id,
            adapter = %record.spec.adapter,
            contract_id = record.spec.contract_id.as_deref().unwrap_or(""));
        span.follows_from(tracing::Span::current());
        tracing::info!(run_id = %record.id, adapter = %record.spec.adapter, "run queued");

        let log_path = self.log_path(record.id);
        let _ = std::fs::create_dir_all(log_path.parent().expect("a log path has a parent"));
        // The event writer is a task of its own: started inside the span, so it logs in it.
        let (mut sink, writer) = span.in_scope(|| {
            EventSink::start(
                self.inner.store.clone(),
                record.id,
                latest_tx,
                Some(log_path),
                self.inner.config.max_log_bytes,
            )
        });
        sink.state(json!({ "state": RunState::Queued }));
        let pipeline = Pipeline {
            config: self.inner.config.clone(),
            store: self.inner.store.clone(),
            fetcher: self.inner.fetcher.clone(),
            policy: self.inner.policy.clone(),
            stop,
            cancel_requested,
            adapter,
            login: self
                .inner
                .logins
                .get(record.spec.credential.as_deref())
                .expect("submissions are validated against the logins")
                .copy
                .clone(),
            metrics: self.inner.metrics.clone(),
        };
        let engine = self.clone();
        self.inner.tasks.spawn(
            async move {
                let id = record.id;
                let (finished, leftover) = engine
                    .run_when_a_slot_is_free(&pipeline, record, &mut sink)
                    .await;
                sink.finish(json!({
                    "state": finished.state, "outcome": finished.outcome, "reason": finished.reason,
                    "message": finished.message,
                }));
                // The outcome event is stored before waiters wake, so a follower never misses it.
                let _ = writer.await;
                engine.lock_active().remove(&id);
                // Its place goes before anyone learns it finished, so a client that saw it
                // finish finds room for the next; the slot is held a little longer, below.
                drop(admission);
                let _ = done_tx.send(true);
                engine.inner.webhooks.deliver(&finished, 0);
                if let Some((workspace, _slot)) = leftover {
                    remove_workspace(workspace).await;
                }
            }
            .instrument(span),
        );
    }

    /// Waits for a slot, runs the pipeline and stores the finished record. Returns the record
    /// and, when there is one, the workspace to remove with the slot it still holds: the slot
    /// is given back only once the workspace is gone, so removals cannot pile up on disk.
    async fn run_when_a_slot_is_free(
        &self,
        pipeline: &Pipeline,
        record: RunRecord,
        sink: &mut EventSink,
    ) -> (RunRecord, Option<(Workspace, OwnedSemaphorePermit)>) {
        let slot = tokio::select! {
            permit = self.inner.slots.clone().acquire_owned() => permit.ok(),
            () = pipeline.stop.cancelled() => None,
        };
        self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
        let (mut record, leftover) = match (slot, &self.inner.jobs) {
            // A run in a Job leaves nothing here: its workspace was the pod's.
            (Some(_slot), Some(jobs)) => (jobs.execute(pipeline, record, sink).await, None),
            (Some(slot), None) => {
                let (record, workspace) = pipeline.execute(record, sink).await;
                (record, workspace.map(|workspace| (workspace, slot)))
            }
            (None, _) => (pipeline.cancelled_in_queue(record), None),
        };

        record.state = RunState::Finished;
        record.finished_at = Some(OffsetDateTime::now_utc());
        if let Err(e) = self.inner.store.put(&record).await {
            tracing::error!(error = %crate::error_chain(&e), "failed to store a finished run");
        }
        self.inner.metrics.run_finished(&record);
        let outcome = record
            .outcome
            .map(|o| serde_json::to_value(o).unwrap_or_default());
        let reason = record.reason.map(|r| r.as_str());
        tracing::info!(
            outcome = %outcome.unwrap_or_default().as_str().unwrap_or("unknown"),
            reason = reason.as_deref().unwrap_or("none"),
            "run finished"
        );
        (record, leftover)
    }
}

/// A place among the runs the engine holds at once: given back when dropped.
struct Admission(Arc<AtomicUsize>);

impl Admission {
    /// A place, unless `capacity` runs already hold one.
    fn take(admitted: &Arc<AtomicUsize>, capacity: usize) -> Option<Self> {
        admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held < capacity).then_some(held + 1)
            })
            .ok()
            .map(|_| Self(admitted.clone()))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Removes a finished run's workspace on the blocking pool. One left behind by a crash is
/// removed at the next start.
async fn remove_workspace(workspace: Workspace) {
    let root = workspace.root().to_owned();
    let removed = tokio::task::spawn_blocking(move || workspace.remove()).await;
    if let Ok(Err(e)) = removed {
        tracing::warn!(error = %e, path = %root.display(), "failed to remove a workspace");
    }
}

/// The digest that tells a repeated request from a different one under the same key.
fn body_digest(spec: &RunSpec) -> String {
    let canonical = serde_json::to_vec(spec).expect("a run spec serializes");
    hex::encode(Sha256::digest(&canonical))
}
