//! The Job executor: the bridge's side of a run that executes in a Kubernetes Job.
//!
//! Theory of operation. The engine hands a run to `JobExecutor::execute` once it has a slot,
//! as it would hand it to the local pipeline. The executor takes the login as a local run does
//! (a ChatGPT login's writer lock is held until the run ends, so runs of one login still never
//! refresh at once; a profile's secrets are read from its secrets directory), gathers what the
//! run carries into its pod (`carry.rs`: that login, and the repository host's credential),
//! makes a random report token, creates the Job, then the run's Secret owned by it (`job.rs`),
//! and waits for whichever comes first:
//! - the worker's reports (`report.rs`): each batch of sink calls is applied to the run's own
//!   event sink, so events, logs and the state in the store come out as for a local run; before
//!   its last report the worker sends each artifact it kept, which the bridge stores where a
//!   local run's go; the last report carries the finished record and any refreshed Codex
//!   login, which is checked in (and written back to the login's Secret) exactly as after a
//!   local run;
//! - the Job ending without a final report (the pod failed, or Kubernetes' deadline passed);
//! - a cancel request or shutdown: the Job is deleted with foreground propagation, so the pod
//!   goes before the Job does;
//! - the run's own deadline plus a grace, in case the API server never says anything.
//!
//! A Job that ended is deleted by the bridge (background propagation): `ttlSecondsAfterFinished`
//! is set too, but older API servers drop it without the TTL feature gate.
//!
//! The bridge keeps the run record; the pod keeps nothing. One bridge replica serves the
//! reports of the runs it started: see the README on running several replicas.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::carry::Carried;
use super::job;
use super::report::Report;
use crate::adapter::Adapter;
use crate::config::{CodexConfig, JobSettings};
use crate::credentials::LoadedAuth;
use crate::redact::{self, Redactor};
use crate::run::events::{EventSink, Relayed};
use crate::run::failure::{Failure, apply_failure};
use crate::run::pipeline::Pipeline;
use crate::run::{Outcome, ReasonCode, RunId, RunRecord, RunSpec, RunState};

/// Reports buffered per run before a worker's POST waits: backpressure for a flood of output.
const REPORT_QUEUE: usize = 16;
/// How long after its final report a Job may take to be marked finished before it is deleted
/// anyway.
const FINISH_GRACE: Duration = Duration::from_secs(30);

/// Why a report or an artifact was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("no run in progress has this id")]
    UnknownRun,
    #[error("the token is not this run's")]
    Unauthorized,
    #[error("the run did not declare the artifact `{0}`")]
    Undeclared(String),
    #[error("failed to keep the artifact")]
    Keep(#[source] std::io::Error),
}

/// Runs runs as Kubernetes Jobs. Cheap to share behind an `Arc`.
pub struct JobExecutor {
    client: kube::Client,
    settings: JobSettings,
    runs: Mutex<HashMap<RunId, Registered>>,
}

/// A run whose worker may report.
struct Registered {
    token_digest: [u8; 32],
    reports: mpsc::Sender<Report>,
    /// The artifact paths the run declared: the only ones its worker may send.
    declared: Vec<String>,
    /// Where the bridge keeps this run's artifacts, as for a local run.
    artifacts_dir: PathBuf,
    /// Masks what the run was given in the artifacts its worker sends.
    redactor: Redactor,
}

/// What following a run's Job needs besides the run: the Codex login it was given, if any,
/// its report token, and the redactor for what its worker reports.
#[derive(Clone, Copy)]
struct Follow<'a> {
    given: Option<&'a LoadedAuth>,
    token: &'a str,
    redactor: &'a Redactor,
}

/// How the wait for a Job ended.
enum End {
    Reported(Report),
    JobEnded(Box<Result<Option<Job>, kube::runtime::wait::Error>>),
    Stopped,
    Deadline,
}

impl JobExecutor {
    /// An executor creating Jobs as `settings` says, through `client`.
    pub fn new(client: kube::Client, settings: JobSettings) -> Self {
        Self {
            client,
            settings,
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a worker's report for run `id` if `token` is that run's.
    pub async fn deliver(
        &self,
        id: RunId,
        token: &str,
        report: Report,
    ) -> Result<(), DeliverError> {
        let sender = self.authorized(id, token, |run| run.reports.clone())?;
        // A run that just ended has dropped its receiver; its last report was already taken.
        sender
            .send(report)
            .await
            .map_err(|_| DeliverError::UnknownRun)
    }

    /// Keeps an artifact that run `id`'s worker sends, if `token` is that run's and the run
    /// declared `path`; the final report then lists it if the bytes match.
    pub fn keep_artifact(
        &self,
        id: RunId,
        token: &str,
        path: &str,
        bytes: &[u8],
    ) -> Result<(), DeliverError> {
        let kept = self.authorized(id, token, |run| {
            let declared = run.declared.iter().any(|d| d == path);
            declared.then(|| (run.artifacts_dir.clone(), run.redactor.clone()))
        })?;
        let (dir, redactor) = kept.ok_or_else(|| DeliverError::Undeclared(path.to_owned()))?;
        let bytes = redactor.redact_bytes(bytes);
        crate::artifacts::keep(&dir, path, &bytes).map_err(DeliverError::Keep)
    }

    /// Checks that `token` is run `id`'s, before anything it sends is read.
    pub fn check_token(&self, id: RunId, token: &str) -> Result<(), DeliverError> {
        self.authorized(id, token, |_| ())
    }

    /// What `take` reads of run `id`'s registration, if `token` is that run's.
    fn authorized<T>(
        &self,
        id: RunId,
        token: &str,
        take: impl FnOnce(&Registered) -> T,
    ) -> Result<T, DeliverError> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let runs = self.lock();
        let run = runs.get(&id).ok_or(DeliverError::UnknownRun)?;
        if !bool::from(run.token_digest.ct_eq(&presented)) {
            return Err(DeliverError::Unauthorized);
        }
        Ok(take(run))
    }

    /// Deletes the Jobs of runs a previous process left unfinished (their reports would find
    /// no run to take them).
    pub async fn delete_jobs_of(&self, runs: &[RunId]) {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        for id in runs {
            self.delete(&jobs, &job::name(*id), DeleteParams::foreground())
                .await;
        }
    }

    /// Drives `record` through a Job to its end; the engine stores the finished record.
    pub(crate) async fn execute(
        &self,
        pipeline: &Pipeline,
        mut record: RunRecord,
        sink: &mut EventSink,
    ) -> RunRecord {
        tracing::info!("run started as a Kubernetes Job");
        record.started_at = Some(OffsetDateTime::now_utc());
        if let Err(failure) = self.run_job(pipeline, &mut record, sink).await {
            apply_failure(&mut record, failure);
        }
        record
    }

    async fn run_job(
        &self,
        pipeline: &Pipeline,
        record: &mut RunRecord,
        sink: &mut EventSink,
    ) -> Result<(), Failure> {
        let mut carried = Carried::default();
        let (given, _writer) = match &pipeline.adapter {
            Adapter::Codex => {
                // As a local run: fail fast on a broken login, then wait for any other run
                // that may refresh it, and take the working copy as that run left it.
                let peek = pipeline.login.checkout()?;
                let writer = tokio::select! {
                    writer = pipeline.login.writer(&peek) => writer,
                    () = pipeline.stop.cancelled() => return Err(pipeline.stop_failure()),
                };
                let given = pipeline.login.checkout()?;
                carried.codex_login(given.bytes(), config_toml(pipeline.login.config()));
                (Some(given), Some(writer))
            }
            Adapter::Profile(profile) => {
                carried.profile(profile)?;
                (None, None)
            }
        };
        carry_git(pipeline, &record.spec, &mut carried).await?;

        let token = random_token().map_err(|e| executor_error("make a report token", &e))?;
        // The worker masks what its run reports, but the run's commands can read the report
        // token where the pod has it and report past the worker: the bridge masks again what
        // it knows the run was given.
        let mut redactor = Redactor::new(pipeline.config.api_tokens.values().iter().cloned());
        redactor.extend(redact::proxy_secrets());
        redactor.extend(carried.secrets());
        redactor.extend(given.iter().flat_map(|g| g.secrets().iter().cloned()));
        redactor.extend([token.clone()]);
        let (tx, mut reports) = mpsc::channel(REPORT_QUEUE);
        let token_digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let artifacts_dir =
            crate::artifacts::store_dir(&pipeline.config.data_dir, &record.id.to_string());
        self.lock().insert(
            record.id,
            Registered {
                token_digest,
                reports: tx,
                declared: record.spec.artifacts.clone(),
                artifacts_dir,
                redactor: redactor.clone(),
            },
        );
        let follow = Follow {
            given: given.as_ref(),
            token: &token,
            redactor: &redactor,
        };
        let result = self
            .create_and_follow(pipeline, record, sink, carried, follow, &mut reports)
            .await;
        self.lock().remove(&record.id);
        result
    }

    async fn create_and_follow(
        &self,
        pipeline: &Pipeline,
        record: &mut RunRecord,
        sink: &mut EventSink,
        carried: Carried,
        follow: Follow<'_>,
        reports: &mut mpsc::Receiver<Report>,
    ) -> Result<(), Failure> {
        let Follow {
            given,
            token,
            redactor,
        } = follow;
        let name = job::name(record.id);
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        self.start_job(pipeline, record, carried, token, &jobs)
            .await?;
        sink.notice(format!(
            "running as Kubernetes Job {}/{name}",
            self.settings.namespace
        ));

        let limit = Duration::from_secs(record.spec.timeout_s + job::DEADLINE_GRACE_S + 30);
        let ended = kube::runtime::wait::await_condition(jobs.clone(), &name, job_ended);
        tokio::pin!(ended);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let end = loop {
            tokio::select! {
                biased;
                Some(report) = reports.recv() => {
                    if let Some(last) = self.take(pipeline, record, sink, report, redactor).await {
                        break End::Reported(last);
                    }
                }
                () = pipeline.stop.cancelled() => break End::Stopped,
                job = &mut ended => break End::JobEnded(Box::new(job)),
                () = &mut deadline => break End::Deadline,
            }
        };

        match end {
            End::Reported(report) => {
                // The worker exits right after its last report; give Kubernetes a moment to
                // see the pod end, then delete the Job either way.
                let _ = tokio::time::timeout(FINISH_GRACE, ended).await;
                self.delete(&jobs, &name, DeleteParams::background()).await;
                self.finish(pipeline, record, given, report, redactor).await
            }
            End::Stopped => {
                self.delete(&jobs, &name, DeleteParams::foreground()).await;
                Err(pipeline.stop_failure())
            }
            End::Deadline => {
                self.delete(&jobs, &name, DeleteParams::foreground()).await;
                Err(timed_out(record.spec.timeout_s))
            }
            End::JobEnded(job) => {
                // Reports sent before the pod ended are already queued: take them first.
                while let Ok(report) = reports.try_recv() {
                    if let Some(last) = self.take(pipeline, record, sink, report, redactor).await {
                        self.delete(&jobs, &name, DeleteParams::background()).await;
                        return self.finish(pipeline, record, given, last, redactor).await;
                    }
                }
                self.delete(&jobs, &name, DeleteParams::background()).await;
                Err(ended_without_report(*job, record.spec.timeout_s))
            }
        }
    }

    /// Creates the run's Job, then its Secret owned by the Job.
    async fn start_job(
        &self,
        pipeline: &Pipeline,
        record: &RunRecord,
        carried: Carried,
        token: &str,
        jobs: &Api<Job>,
    ) -> Result<(), Failure> {
        let name = job::name(record.id);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.settings.namespace);
        let spec = job::job(&pipeline.config, &self.settings, record);
        let created = jobs
            .create(&PostParams::default(), &spec)
            .await
            .map_err(|e| executor_error("create the run's Job", &e))?;
        let uid = created.metadata.uid.unwrap_or_default();
        let secret = job::run_secret(&self.settings.namespace, record, token, carried, &uid);
        if let Err(e) = secrets.create(&PostParams::default(), &secret).await {
            self.delete(jobs, &name, DeleteParams::foreground()).await;
            return Err(executor_error("create the run's Secret", &e));
        }
        tracing::info!(job = %name, namespace = %self.settings.namespace, "run Job created");
        Ok(())
    }

    /// Applies a report's sink calls; hands the report back when it is the final one.
    async fn take(
        &self,
        pipeline: &Pipeline,
        record: &mut RunRecord,
        sink: &mut EventSink,
        report: Report,
        redactor: &Redactor,
    ) -> Option<Report> {
        let Report {
            calls,
            finished,
            login,
        } = report;
        self.apply(pipeline, record, sink, calls, redactor).await;
        if finished.is_some() {
            // The last report is in: no report or artifact is taken after it, so the artifacts
            // it lists stay as the bridge checks them while the Job winds down.
            self.lock().remove(&record.id);
        }
        finished.is_some().then(|| Report {
            calls: Vec::new(),
            finished,
            login,
        })
    }

    /// Applies a worker's sink calls to the run's own sink, and follows its state changes in
    /// the store as a local run does.
    async fn apply(
        &self,
        pipeline: &Pipeline,
        record: &mut RunRecord,
        sink: &mut EventSink,
        calls: Vec<Relayed>,
        redactor: &Redactor,
    ) {
        for call in calls {
            let call = redact_call(call, redactor);
            if let Relayed::State { data } = &call
                && let Ok(state) = serde_json::from_value::<RunState>(data["state"].clone())
                && state != RunState::Finished
            {
                record.state = state;
                if let Err(e) = pipeline.store.put(record).await {
                    tracing::error!(error = %crate::error_chain(&e), "failed to store a run record");
                }
            }
            sink.apply(call);
        }
        sink.flush_log();
    }

    /// Takes the worker's finished record, the artifacts it sent, and its refreshed login if
    /// any.
    async fn finish(
        &self,
        pipeline: &Pipeline,
        record: &mut RunRecord,
        given: Option<&LoadedAuth>,
        report: Report,
        redactor: &Redactor,
    ) -> Result<(), Failure> {
        let mut finished = report.finished.expect("a final report has a record");
        if let Some(details) = &mut finished.details {
            redactor.redact_json(details);
        }
        record.outcome = finished.outcome;
        record.reason = finished.reason;
        record.message = finished.message.map(|m| redactor.redact(&m));
        record.details = finished.details;
        record.output = redactor.redact(&finished.output);
        record.logs = redactor.redact(&finished.logs);
        record.diff = redactor.redact(&finished.diff);
        record.usage = finished.usage;
        record.exit_code = finished.exit_code;
        let artifacts_dir =
            crate::artifacts::store_dir(&pipeline.config.data_dir, &record.id.to_string());
        for artifact in finished.artifacts {
            // The record lists only what the bridge holds, byte for byte.
            match crate::artifacts::check_kept(&artifacts_dir, &artifact) {
                Ok(()) => record.artifacts.push(artifact),
                Err(why) => record.logs.push_str(&format!(
                    "\nartifact `{}` not kept: the run's worker listed it, but {why}",
                    artifact.path
                )),
            }
        }
        let result = match (finished.outcome, finished.reason) {
            (Some(Outcome::Succeeded), _) => Ok(()),
            (outcome, reason) => Err(Failure {
                outcome: outcome.unwrap_or(Outcome::Failed),
                ..Failure::failed(
                    reason.unwrap_or(ReasonCode::CliError),
                    record.message.clone().unwrap_or_default(),
                )
            }),
        };
        let Some(given) = given else {
            return Ok(());
        };
        let incoming = pipeline
            .config
            .data_dir
            .join("credentials")
            .join(format!("incoming-{}.json", record.id));
        if let Some(login) = &report.login
            && let Err(e) = write_private(&incoming, login.0.as_bytes())
        {
            tracing::error!(error = %e, "failed to take in the login a Job's CLI refreshed");
        }
        pipeline.check_in_login(given, &incoming, &result).await;
        let _ = std::fs::remove_file(&incoming);
        // The record already says how it ended; a failure here would only repeat it.
        Ok(())
    }

    async fn delete(&self, jobs: &Api<Job>, name: &str, params: DeleteParams) {
        match jobs.delete(name, &params).await {
            Ok(_) => tracing::info!(job = %name, "run Job deleted"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                tracing::error!(job = %name, error = %crate::error_chain(&e), "failed to delete a run Job")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Registered>> {
        self.runs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether a Job has ended (completed or failed) or is gone.
fn job_ended(job: Option<&Job>) -> bool {
    let Some(job) = job else { return true };
    job_condition(job).is_some()
}

/// The type and reason of a Job's terminal condition, if it has one.
fn job_condition(job: &Job) -> Option<(String, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| (c.type_.clone(), c.reason.clone().unwrap_or_default()))
}

/// Why a Job that ended without a final report failed the run.
fn ended_without_report(
    job: Result<Option<Job>, kube::runtime::wait::Error>,
    timeout_s: u64,
) -> Failure {
    match job {
        Ok(Some(job)) => match job_condition(&job) {
            Some((_, reason)) if reason == "DeadlineExceeded" => timed_out(timeout_s),
            Some((kind, reason)) => Failure::failed(
                ReasonCode::ExecutorError,
                format!(
                    "the run's Job ended ({kind}: {reason}) without its worker reporting an \
                     outcome; the pod's events and log say why"
                ),
            ),
            None => Failure::failed(ReasonCode::ExecutorError, "the run's Job vanished"),
        },
        Ok(None) => Failure::failed(
            ReasonCode::ExecutorError,
            "the run's Job was deleted before its worker reported an outcome",
        ),
        Err(e) => executor_error("follow the run's Job", &e),
    }
}

fn timed_out(timeout_s: u64) -> Failure {
    Failure {
        outcome: Outcome::TimedOut,
        ..Failure::failed(
            ReasonCode::TimedOut,
            format!("the run's Job did not finish within its {timeout_s}s limit"),
        )
    }
}

fn executor_error(what: &str, e: &dyn std::error::Error) -> Failure {
    let message = format!("failed to {what}: {}", crate::error_chain(e));
    tracing::error!(%message);
    Failure::failed(ReasonCode::ExecutorError, message)
}

/// Carries the operator's credential for the run's repository host, as the local clone would
/// find it. A URL the policy refuses carries nothing: the worker refuses it the same way.
async fn carry_git(
    pipeline: &Pipeline,
    spec: &RunSpec,
    carried: &mut Carried,
) -> Result<(), Failure> {
    let (Some(dir), Some(repo)) = (&pipeline.config.git_credentials_dir, &spec.repo) else {
        return Ok(());
    };
    let Ok(url) = pipeline.policy.check_repo(&repo.url).await else {
        return Ok(());
    };
    carried.git(dir, &url).map_err(|e| {
        Failure::failed(
            ReasonCode::WorkspaceError,
            format!("failed to prepare the repository's credential: {e}"),
        )
    })
}

/// `call` with every secret `redactor` knows masked.
fn redact_call(call: Relayed, redactor: &Redactor) -> Relayed {
    match call {
        Relayed::State { mut data } => {
            redactor.redact_json(&mut data);
            Relayed::State { data }
        }
        Relayed::Notice { message } => Relayed::Notice {
            message: redactor.redact(&message),
        },
        Relayed::Line {
            kind,
            line,
            mut parsed,
        } => {
            if let Some(parsed) = &mut parsed {
                redactor.redact_json(parsed);
            }
            Relayed::Line {
                kind,
                line: redactor.redact(&line),
                parsed,
            }
        }
    }
}

/// The optional config.toml that goes with the login.
fn config_toml(config: &CodexConfig) -> Option<Vec<u8>> {
    config
        .config_toml_path()
        .and_then(|path| std::fs::read(path).ok())
}

/// 32 random bytes from the kernel, as hex.
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
