//! An HTTP client built the first time it is used.
//!
//! Building a `reqwest` client loads and parses the system's CA certificates and brings in
//! the TLS stack; a bridge that never fetches a tool or sends a webhook has no use for either.
//! Building on first use keeps that work, and the memory it touches, off an idle bridge.

use std::sync::{Arc, OnceLock};

/// A `reqwest::Client` made by `make` on first use. Clones share one client.
#[derive(Clone)]
pub struct LazyClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: OnceLock<reqwest::Client>,
    make: Box<dyn Fn() -> reqwest::Client + Send + Sync>,
}

impl std::fmt::Debug for LazyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyClient")
            .field("built", &self.inner.client.get().is_some())
            .finish()
    }
}

impl LazyClient {
    /// A client that `make` will build; `make` runs once, when the client is first needed.
    pub fn new(make: impl Fn() -> reqwest::Client + Send + Sync + 'static) -> Self {
        Self {
            inner: Arc::new(Inner {
                client: OnceLock::new(),
                make: Box::new(make),
            }),
        }
    }

    /// The client, built now if this is the first call.
    pub fn get(&self) -> &reqwest::Client {
        self.inner.client.get_or_init(|| (self.inner.make)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn builds_once_on_first_use_and_clones_share_it() {
        let built = Arc::new(AtomicUsize::new(0));
        let counter = built.clone();
        let lazy = LazyClient::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            reqwest::Client::new()
        });
        let clone = lazy.clone();
        assert_eq!(built.load(Ordering::SeqCst), 0, "nothing built before use");
        let _ = lazy.get();
        let _ = clone.get();
        assert_eq!(built.load(Ordering::SeqCst), 1);
    }
}
