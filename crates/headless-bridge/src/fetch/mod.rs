//! Fetching the tools a run needs, verified by sha256 before anyone may execute them. Serves
//! both the run engine and the `headless-bridge fetch` command.
//!
//! A tool names a URL, optional mirrors and (for runs, always) its sha256. [`Fetcher::fetch`]
//! first looks in the content-addressed [`cache`]: a hit costs a `stat` and no network. On a
//! miss it takes a per-digest lock, so concurrent requests for one digest download once, then
//! tries the URLs in turn, the one that last worked for that tool name first. Each URL is a
//! [`download::Download`]: resumable, retried with backoff for network errors, 5xx and 429,
//! bounded in size and in total time, streamed into a partial file while hashed. Only when the
//! digest matches is the file synced and renamed into the cache, so nothing exists at a final
//! path unless it was verified; a mismatch moves on to the next URL, never retries the same one.
//!
//! Every connection, redirects included, resolves host names through a resolver that refuses
//! non-public addresses for hosts the [`UrlPolicy`] does not allow, and every redirect hop is
//! checked again by the policy. No credentials are ever sent: URLs that carry them are refused
//! by the policy, so none can follow a redirect to another host. Unpacking archives is left to
//! [`archive`].

pub mod archive;
pub mod cache;
pub mod download;
mod error;
pub mod resolver;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

pub use self::cache::{Cache, copy_verified};
use self::download::Download;
pub use self::error::{FetchError, ResponseFacts, shown_url};
use crate::digest::Sha256Digest;
use crate::lazy_client::LazyClient;
use crate::policy::UrlPolicy;

/// Redirect hops followed before giving up; release hosts use one or two.
const MAX_REDIRECTS: usize = 5;

/// Limits and places of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// The content-addressed cache and partial downloads.
    pub cache_dir: PathBuf,
    /// The largest tool accepted; a bigger download is cut off, not buffered.
    pub max_bytes: u64,
    /// One fetch, every URL and retry included.
    pub total_timeout: Duration,
    /// Tries per URL for failures that may pass (network, 5xx, 429).
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// The longest silence within a response before it counts as a network error.
    pub read_timeout: Duration,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            cache_dir: PathBuf::from("tool-cache"),
            max_bytes: 512 << 20,
            total_timeout: Duration::from_secs(300),
            attempts: 4,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// What to fetch: a tool name (for remembering what worked), URLs in the caller's order of
/// preference, and the digest the bytes must have.
#[derive(Debug, Clone)]
pub struct ToolSource {
    pub name: String,
    pub urls: Vec<Url>,
    /// Required for runs; the `fetch` command may leave it out.
    pub sha256: Option<Sha256Digest>,
}

/// A verified file in the cache.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub digest: Sha256Digest,
    pub size: u64,
    /// The URL it came from (query hidden), or `None` for a cache hit.
    pub from: Option<String>,
}

/// What the fetcher has done since it started, for the metrics.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Fetches of a pinned digest answered from the cache.
    pub cache_hits: AtomicU64,
    /// Fetches that had to download.
    pub cache_misses: AtomicU64,
    /// Body bytes received, retries and failed attempts included.
    pub downloaded_bytes: AtomicU64,
}

/// Downloads and caches tools. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: LazyClient,
    settings: Arc<FetchSettings>,
    cache: Arc<Cache>,
    in_flight: Arc<Mutex<HashMap<Sha256Digest, Arc<tokio::sync::Mutex<()>>>>>,
    stats: Arc<FetchStats>,
}

impl Fetcher {
    /// A fetcher whose connections and redirects obey `policy`.
    pub fn new(policy: UrlPolicy, settings: FetchSettings) -> Self {
        let cache = Cache::new(&settings.cache_dir);
        let (connect_timeout, read_timeout) = (settings.connect_timeout, settings.read_timeout);
        let client = LazyClient::new(move || {
            let policy = policy.clone();
            let resolver = Arc::new(resolver::PolicyResolver::new(policy.clone()));
            let redirect = reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match resolver::redirect_allowed(&policy, attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(reason) => attempt.error(reason),
                }
            });
            reqwest::Client::builder()
                .user_agent(concat!("headless-bridge/", env!("CARGO_PKG_VERSION")))
                .redirect(redirect)
                .dns_resolver(resolver)
                .no_proxy()
                .connect_timeout(connect_timeout)
                .read_timeout(read_timeout)
                .build()
                .expect("a client with static settings builds")
        });
        Self {
            client,
            settings: Arc::new(settings),
            cache: Arc::new(cache),
            in_flight: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// The settings this fetcher runs with.
    pub fn settings(&self) -> &FetchSettings {
        &self.settings
    }

    /// Cache hits, misses and bytes downloaded so far.
    pub fn stats(&self) -> &FetchStats {
        &self.stats
    }

    /// Fetches `source` into the cache, or finds it there.
    pub async fn fetch(&self, source: &ToolSource) -> Result<Fetched, FetchError> {
        let deadline = Instant::now() + self.settings.total_timeout;
        let Some(digest) = &source.sha256 else {
            self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
            return self.download_any(source, deadline).await;
        };
        if let Some(hit) = self.cached(digest) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }

        let flight = self.flight(digest);
        let guard = flight.lock().await;
        // Whoever held the lock before may have fetched this very digest.
        let result = match self.cached(digest) {
            Some(hit) => {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                Ok(hit)
            }
            None => {
                self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                self.download_any(source, deadline).await
            }
        };
        drop(guard);
        self.land(digest, flight);
        result
    }

    /// Fetches a tool and installs it at `dest`: a copy of the verified file, or, for an
    /// archive given as (path of the executable inside, directory to unpack into), a link to
    /// that executable. A cache file that no longer matches its digest is dropped and fetched
    /// again.
    pub async fn install(
        &self,
        source: &ToolSource,
        dest: &Path,
        archive: Option<(&str, &Path)>,
    ) -> Result<Fetched, FetchError> {
        let fetched = self.fetch(source).await?;
        if self.place(&fetched, dest, archive).await? {
            return Ok(fetched);
        }
        tracing::warn!(tool = %source.name, digest = %fetched.digest, "a cached tool no longer matches its digest; fetching it again");
        self.cache.evict(&fetched.digest);
        let fetched = self.fetch(source).await?;
        if self.place(&fetched, dest, archive).await? {
            return Ok(fetched);
        }
        let changed = std::io::Error::other("the cached file changed while it was installed");
        Err(cache::io_error(&fetched.path, changed))
    }

    /// Copies (and unpacks) a fetched file into place; `false` when the cached bytes no
    /// longer have their digest.
    async fn place(
        &self,
        fetched: &Fetched,
        dest: &Path,
        archive: Option<(&str, &Path)>,
    ) -> Result<bool, FetchError> {
        let Some((inner, tool_dir)) = archive else {
            return cache::copy_verified(&fetched.path, dest, &fetched.digest, 0o755);
        };
        // Unpacked from a verified private copy, so the cache file may change meanwhile.
        let copy = tool_dir.with_extension("archive");
        if let Some(parent) = copy.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cache::io_error(parent, e))?;
        }
        if !cache::copy_verified(&fetched.path, &copy, &fetched.digest, 0o600)? {
            return Ok(false);
        }
        // Archives are capped at four times the download limit once unpacked: tools compress
        // well, bombs compress better.
        let limit = self.settings.max_bytes.saturating_mul(4);
        let (from, into, inner) = (copy.clone(), tool_dir.to_owned(), inner.to_owned());
        let unpacked =
            tokio::task::spawn_blocking(move || archive::unpack(&from, &into, &inner, limit)).await;
        let _ = std::fs::remove_file(&copy);
        let exe = unpacked.map_err(|e| cache::io_error(dest, std::io::Error::other(e)))??;
        std::os::unix::fs::symlink(&exe, dest).map_err(|e| cache::io_error(dest, e))?;
        Ok(true)
    }

    /// A cache hit: one `stat`, no network.
    pub fn cached(&self, digest: &Sha256Digest) -> Option<Fetched> {
        let (path, size) = self.cache.lookup(digest)?;
        Some(Fetched {
            path,
            digest: digest.clone(),
            size,
            from: None,
        })
    }

    /// Tries each URL, the last good one first; the most telling failure is returned.
    async fn download_any(
        &self,
        source: &ToolSource,
        deadline: Instant,
    ) -> Result<Fetched, FetchError> {
        self.cache.ensure_dirs()?;
        let urls = ordered(&source.urls, self.cache.last_good(&source.name).as_deref());
        let mut worst: Option<FetchError> = None;
        for url in &urls {
            let download = Download {
                client: self.client.get(),
                settings: &self.settings,
                url,
                expected: source.sha256.as_ref(),
                partial: self.cache.partial_path(source.sha256.as_ref(), url),
                deadline,
                received: &self.stats.downloaded_bytes,
            };
            match download.run().await {
                Ok(done) => {
                    let path = self.cache.commit(&done.partial, &done.digest)?;
                    self.cache.remember(&source.name, url);
                    return Ok(Fetched {
                        path,
                        digest: done.digest,
                        size: done.size,
                        from: Some(shown_url(url)),
                    });
                }
                Err(err) if err.is_local() || matches!(err, FetchError::TimedOut { .. }) => {
                    return Err(err);
                }
                Err(err) => {
                    tracing::warn!(tool = %source.name, url = %shown_url(url), error = %err, "a tool URL failed");
                    if worst.as_ref().is_none_or(|w| err.weight() > w.weight()) {
                        worst = Some(err);
                    }
                }
            }
        }
        Err(worst.unwrap_or(FetchError::TimedOut {
            limit: self.settings.total_timeout,
        }))
    }

    /// The lock that makes one download serve every concurrent request for `digest`.
    fn flight(&self, digest: &Sha256Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(digest.clone()).or_default())
    }

    /// Forgets the lock for `digest` once nobody else holds or waits for it.
    fn land(&self, digest: &Sha256Digest, flight: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: ours and the map's. Any more means another request still waits.
        if Arc::strong_count(&flight) == 2 {
            map.remove(digest);
        }
    }
}

/// `urls` in order, with the one that last worked moved to the front, duplicates dropped.
fn ordered(urls: &[Url], last_good: Option<&str>) -> Vec<Url> {
    let mut ordered: Vec<Url> = Vec::with_capacity(urls.len());
    let first = urls.iter().find(|u| Some(u.as_str()) == last_good);
    for url in first.into_iter().chain(urls) {
        if !ordered.contains(url) {
            ordered.push(url.clone());
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    fn urls(raw: &[&str]) -> Vec<Url> {
        raw.iter().map(|u| u.parse().expect("a URL")).collect()
    }

    #[rstest]
    #[case::none(&["https://a/t", "https://b/t"], None, &["https://a/t", "https://b/t"])]
    #[case::mirror_first(&["https://a/t", "https://b/t"], Some("https://b/t"), &["https://b/t", "https://a/t"])]
    #[case::unknown_ignored(&["https://a/t"], Some("https://x/t"), &["https://a/t"])]
    #[case::duplicates(&["https://a/t", "https://a/t"], None, &["https://a/t"])]
    fn the_last_good_url_goes_first(
        #[case] given: &[&str],
        #[case] last_good: Option<&str>,
        #[case] expected: &[&str],
    ) {
        assert_eq!(ordered(&urls(given), last_good), urls(expected));
    }
}
