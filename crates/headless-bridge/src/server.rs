//! Starting and stopping the bridge: open the store, recover from a previous crash, serve
//! until the shutdown future resolves, then stop runs in progress so their records are final.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::run::engine::Engine;
use crate::store::{Store, StoreError};

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
    #[error("failed to serve HTTP")]
    Http(#[source] std::io::Error),
}

/// The parts of a bridge, built from its configuration.
pub struct Bridge {
    pub state: AppState,
}

impl Bridge {
    /// Opens the data directory and the run store, and marks runs a previous process left
    /// unfinished as interrupted.
    pub async fn open(config: Config) -> Result<Self, ServeError> {
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|source| ServeError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let store = Store::open(&data_dir.join("runs.sqlite3"))?;
        let interrupted = store.interrupt_unfinished().await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "runs left unfinished by a previous process were marked interrupted"
            );
        }

        let config = Arc::new(config);
        let engine = Engine::new(config.clone(), store);
        Ok(Self {
            state: AppState::new(config, engine),
        })
    }

    /// Serves on `listener` until `shutdown` resolves, then stops runs in progress.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let engine = self.state.engine.clone();
        let app = api::router(self.state);
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        engine.shutdown().await;
        result.map_err(ServeError::Http)
    }
}
