//! Starting and stopping the bridge.
//!
//! Start-up opens the store, records runs a previous process left unfinished as interrupted,
//! removes their workspaces, and starts the retention sweep. Shutdown ends interactive sessions and drains: the listener
//! stops accepting, new runs are refused, runs in progress get the grace period to finish,
//! then the rest are cancelled and recorded as interrupted before the process exits.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::adapter::profile::{Profile, ProfileError};
use crate::adapter::{Adapters, builtin};
use crate::api::{self, AppState};
use crate::config::{Config, Executor};
use crate::k8s::executor::JobExecutor;
use crate::run::engine::Engine;
use crate::run::supervisor::{self, RUN_MARKER};
use crate::session::Sessions;
use crate::store::{Store, StoreError};

/// How often finished runs past their retention are deleted, at most: a shorter retention
/// is swept as often as it lasts.
const RETENTION_INTERVAL: Duration = Duration::from_secs(600);

/// Why the bridge could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to create the data directory {path}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(
        "another headless-bridge is using the data directory {path}: give each bridge its own \
         HB_DATA_DIR (two would mark each other's runs interrupted)"
    )]
    Locked { path: std::path::PathBuf },
    #[error("failed to set up the Kubernetes Job executor")]
    Kube(#[from] crate::k8s::ClientError),
    #[error("failed to serve HTTP")]
    Http(#[source] std::io::Error),
}

/// The built-in adapters with the configuration's settings, and the operator's profiles.
pub fn load_adapters(config: &Config) -> Result<Adapters, ProfileError> {
    let mut profiles = builtin::profiles(|name| match name {
        "claude" => config.claude.clone(),
        "gemini" => config.gemini.clone(),
        _ => Default::default(),
    })?;
    if let Some(dir) = &config.adapters_dir {
        profiles.extend(Profile::load_dir(dir)?);
    }
    tracing::info!(profiles = profiles.len(), "adapters loaded");
    Ok(Adapters::new(profiles))
}

/// The parts of a bridge, built from its configuration.
pub struct Bridge {
    pub state: AppState,
    /// Held while the bridge runs: one bridge per data directory.
    _lock: Flock<File>,
}

impl Bridge {
    /// Opens the data directory and the run store, and cleans up after a previous process.
    pub async fn open(config: Config) -> Result<Self, ServeError> {
        let data_dir = &config.data_dir;
        // Only root can start a CLI as another user (Claude Code runs as nobody then).
        let others_pass = nix::unistd::geteuid().is_root();
        create_data_dir(data_dir, others_pass).map_err(|source| ServeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let logs = data_dir.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|source| ServeError::DataDir { path: logs, source })?;
        let lock = lock_data_dir(data_dir)?;
        let store = Store::open(&data_dir.join("runs.sqlite3"))?;
        let interrupted = store.interrupt_unfinished().await?;
        for id in &interrupted {
            // A bridge killed without warning leaves its runs' processes behind.
            let killed = supervisor::kill_marked(RUN_MARKER, &id.to_string()).await;
            tracing::warn!(run_id = %id, killed, "a run left unfinished by a previous process was marked interrupted");
        }
        // No run of this process exists yet, so every workspace left is a dead run's.
        remove_children(&data_dir.join("workspaces"));
        let workspaces = data_dir.join("workspaces");
        prepare_workspaces_dir(&workspaces).map_err(|source| ServeError::DataDir {
            path: workspaces,
            source,
        })?;
        // Likewise every login home: a relayed login of a dead process can no longer be
        // adopted, and its home may hold the tokens of one a person completed.
        remove_children(&data_dir.join("credentials").join("logins"));

        let adapters = load_adapters(&config)?;
        let config = Arc::new(config);
        let jobs = match &config.executor {
            Executor::Local => None,
            Executor::Kubernetes(settings) => {
                let client = crate::k8s::client(&config.kube)?;
                tracing::info!(namespace = %settings.namespace, "runs execute as Kubernetes Jobs");
                let jobs = JobExecutor::new(client, settings.clone());
                // A bridge killed without warning leaves its runs' Jobs behind.
                jobs.delete_jobs_of(&interrupted).await;
                Some(jobs)
            }
        };
        let engine = Engine::new(config.clone(), store, adapters.clone(), jobs);
        engine.resume_webhooks().await?;
        let sessions = Sessions::new(config.clone(), adapters, engine.shared_login()).await;
        Ok(Self {
            state: AppState::new(config, engine, sessions),
            _lock: lock,
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then drains and stops runs in progress.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        self.serve_with_metrics(listener, None, shutdown).await
    }

    /// Serves the API on `listener` and, if given, the Prometheus metrics on `metrics` (a
    /// listener of their own) until `shutdown` resolves, then drains and stops runs in progress.
    /// The metrics stay up while runs drain, so the last of them can still be scraped.
    pub async fn serve_with_metrics(
        self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let engine = self.state.engine.clone();
        let stop_metrics = CancellationToken::new();
        let metrics_server = metrics.map(|listener| {
            let (app, stop) = (crate::metrics::router(engine.clone()), stop_metrics.clone());
            tokio::spawn(async move {
                let stopped = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = stopped {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            })
        });
        let grace = self.state.config.shutdown_grace;
        let retention = tokio::spawn(retention_loop(self.state.config.clone(), engine.clone()));

        // Once the signal comes the runs drain while the API still serves: a new run is
        // refused with 503 `shutting_down`, but clients can follow, poll and cancel the runs
        // finishing (and a load balancer still sending here gets an answer, not a refused
        // connection). Then axum stops accepting and waits for requests in flight.
        let signalled = CancellationToken::new();
        let drained = CancellationToken::new();
        let drain = {
            let (engine, signalled, drained) = (engine.clone(), signalled.clone(), drained.clone());
            let sessions = self.state.sessions.clone();
            tokio::spawn(async move {
                // Whatever happens below, the listener is let go in the end.
                let _drained = drained.drop_guard();
                signalled.cancelled().await;
                // A session has no natural end to wait for: end them at once, with the runs'
                // drain.
                let (_, ()) = tokio::join!(sessions.shutdown(), engine.drain(grace));
                engine.shutdown().await;
            })
        };
        let streams = self.state.clone();
        let app = api::router(self.state);
        let (on_signal, on_drained) = (signalled.clone(), drained.clone());
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                tracing::info!("shutting down: draining runs in progress");
                on_signal.cancel();
                on_drained.cancelled().await;
                streams.begin_shutdown();
            })
            .await;

        signalled.cancel();
        let _ = drain.await;
        stop_metrics.cancel();
        if let Some(server) = metrics_server {
            let _ = server.await;
        }
        retention.abort();
        result.map_err(ServeError::Http)
    }
}

/// Deletes finished runs past their age or count limit, with their logs, workspaces and
/// artifacts.
async fn retention_loop(config: Arc<Config>, engine: Engine) {
    let mut interval = tokio::time::interval(retention_interval(config.run_retention));
    loop {
        interval.tick().await;
        match engine
            .store()
            .prune(config.run_retention, config.run_retention_count)
            .await
        {
            Ok(pruned) if !pruned.is_empty() => {
                for id in &pruned {
                    let _ = std::fs::remove_file(engine.log_path(*id));
                    let _ = std::fs::remove_dir_all(
                        config.data_dir.join("workspaces").join(id.to_string()),
                    );
                    let artifacts = crate::artifacts::store_dir(&config.data_dir, &id.to_string());
                    let _ = std::fs::remove_dir_all(artifacts);
                }
                tracing::info!(deleted = pruned.len(), "deleted runs past their retention");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %crate::error_chain(&e), "failed to delete old runs"),
        }
    }
}

/// How often to sweep for runs past a retention of `retention`: so that a run is deleted
/// within twice its retention of its end, however short.
fn retention_interval(retention: Duration) -> Duration {
    RETENTION_INTERVAL.min(retention)
}

/// Takes the data directory's lock file, so a second bridge on it stops before it touches any
/// record. The lock goes with the process, however it ends.
fn lock_data_dir(data_dir: &Path) -> Result<Flock<File>, ServeError> {
    let path = data_dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ServeError::DataDir {
            path: path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| ServeError::Locked {
        path: data_dir.to_owned(),
    })
}

/// Creates the data directory and whichever of its parents are missing. A CLI started as
/// another user must pass through every directory above its workspace, so when
/// `others_pass`, the directories made here are 0711 (others may search them, not list
/// them) rather than the 0700 the bridge's umask would leave. Directories that existed
/// already are the operator's and keep their mode.
fn create_data_dir(dir: &Path, others_pass: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_owned)
        .collect();
    std::fs::create_dir_all(dir)?;
    if others_pass {
        for made in missing {
            std::fs::set_permissions(made, std::fs::Permissions::from_mode(0o711))?;
        }
    }
    Ok(())
}

/// Makes the directory of workspaces, passable but not listable by others (0711): a CLI that
/// runs as another user must reach its own workspace through it, and the bridge's umask would
/// make it 0700.
fn prepare_workspaces_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

fn remove_children(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Err(e) = crate::workspace::remove_tree(&entry.path()) {
            tracing::warn!(error = %e, path = %entry.path().display(), "failed to remove a stale workspace");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// Regression: the sweep ran every 10 minutes whatever the retention, so with
    /// `HB_RUN_RETENTION=7` a run lived up to 10 minutes, not 7 seconds, after its end.
    #[test]
    fn a_short_retention_is_swept_as_often_as_it_lasts() {
        let sweeps = |s| retention_interval(Duration::from_secs(s)).as_secs();
        assert_eq!(sweeps(7), 7);
        assert_eq!(sweeps(3600), 600);
        assert_eq!(sweeps(7 * 86_400), 600);
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    /// Regression: a root bridge made its data directory 0700, which no run started as
    /// another user could pass through.
    #[test]
    fn a_data_dir_the_bridge_makes_lets_others_pass_but_not_list() {
        let existing = tempfile::tempdir().expect("a temp dir");
        std::fs::set_permissions(existing.path(), std::fs::Permissions::from_mode(0o750))
            .expect("chmod");
        let data_dir = existing.path().join("state/bridge");

        create_data_dir(&data_dir, true).expect("created");

        assert_eq!(mode(&data_dir), 0o711);
        assert_eq!(mode(data_dir.parent().unwrap()), 0o711);
        assert_eq!(
            mode(existing.path()),
            0o750,
            "an existing parent is left alone"
        );
    }

    #[test]
    fn an_existing_data_dir_keeps_its_mode() {
        let data_dir = tempfile::tempdir().expect("a temp dir");
        std::fs::set_permissions(data_dir.path(), std::fs::Permissions::from_mode(0o750))
            .expect("chmod");
        create_data_dir(data_dir.path(), true).expect("exists");
        assert_eq!(mode(data_dir.path()), 0o750);
    }
}
