//! The loopback listener every stand-in in this crate runs on: an axum `Router` served on
//! 127.0.0.1 at a port the kernel picks, until the handle is dropped.
//!
//! It owns binding, spawning and shutdown; the stand-ins own their routes and state. Handlers
//! that hold a connection open on purpose watch the same [`CancellationToken`], so dropping the
//! handle ends those responses too instead of leaking their tasks.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running loopback server; dropping it stops accepting and ends held-open responses.
#[derive(Debug)]
pub(crate) struct Loopback {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Loopback {
    /// Binds 127.0.0.1:0 and serves `router` on a spawned task until `shutdown` is cancelled.
    ///
    /// Panics if loopback cannot be bound: test support has no way to carry on without it.
    pub(crate) async fn serve(router: Router, shutdown: CancellationToken) -> Loopback {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding 127.0.0.1:0 needs only a loopback interface");
        let addr = listener
            .local_addr()
            .expect("a bound TCP listener has a local address");

        let signal = shutdown.clone().cancelled_owned();
        tokio::spawn(async move {
            let served = axum::serve(listener, router).with_graceful_shutdown(signal);
            if let Err(error) = served.await {
                tracing::warn!(%error, "loopback server stopped with an error");
            }
        });
        Loopback { addr, shutdown }
    }

    /// The origin clients use, such as `http://127.0.0.1:41234` (no trailing slash).
    pub(crate) fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
