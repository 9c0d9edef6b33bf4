//! One URL, downloaded into a partial file with retries and resumption, and hashed on the way.
//!
//! A retry resumes with `Range: bytes=<len>-` where the partial file ends. The answer is
//! trusted only when it is a 206 whose `Content-Range` starts exactly there (RFC 9110 §14.4);
//! a 200 means the server ignored the range, so the file starts over; any other 206 or a 416
//! throws the partial file away and asks again from the start. Network errors, 5xx and 429
//! are retried with exponential backoff and jitter; anything else ends this URL's turn.
//! Choosing between URLs and moving the result into the cache are left to the caller.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use nix::fcntl::{Flock, FlockArg};
use reqwest::header::{self, HeaderMap};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;
use url::Url;

use super::FetchSettings;
use super::cache::io_error;
use super::error::{FetchError, PREVIEW_BYTES, ResponseFacts, shown_url};
use crate::digest::Sha256Digest;

/// A restart after a bad range answer is cheap but must not loop forever on a broken server.
const MAX_RESTARTS: u32 = 2;

/// A download of one URL that has finished and, if a digest was expected, matched it.
#[derive(Debug)]
pub struct Downloaded {
    /// The synced partial file, ready to be moved into the cache.
    pub partial: PathBuf,
    pub digest: Sha256Digest,
    pub size: u64,
}

/// One URL's download.
pub struct Download<'a> {
    pub client: &'a reqwest::Client,
    pub settings: &'a FetchSettings,
    pub url: &'a Url,
    pub expected: Option<&'a Sha256Digest>,
    pub partial: PathBuf,
    pub deadline: Instant,
    /// Counts every body byte received, for the metrics.
    pub received: &'a AtomicU64,
}

/// Why a single request did not finish the download.
enum Stop {
    /// The range answer was unusable; the partial file was emptied; ask again at once.
    Restart,
    Failed(FetchError, Option<Duration>),
}

/// How to treat the body of an answer to a request made at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The body is the file from its first byte.
    Fresh,
    /// The body continues the partial file.
    Resume,
    /// The answer cannot be used; start over.
    Restart,
}

impl Download<'_> {
    /// Downloads until done, retrying what may be retried within the settings' limits.
    pub async fn run(mut self) -> Result<Downloaded, FetchError> {
        let (lock, shared) = self.claim_partial();
        let result = self.attempts().await;
        if result.is_err() && !shared {
            let _ = std::fs::remove_file(&self.partial);
        }
        // The lock outlives the run only beside a partial file kept for a later resume.
        if lock.is_some() && (result.is_ok() || !self.partial.exists()) {
            let _ = std::fs::remove_file(self.partial.with_extension("lock"));
        }
        result
    }

    /// Locks the partial file against other processes sharing the cache (a `fetch` command
    /// beside the server). When another holds it, this download writes a file of its own,
    /// which nobody will resume; the second value says whether the shared one was claimed.
    fn claim_partial(&mut self) -> (Option<Flock<File>>, bool) {
        let lock_path = self.partial.with_extension("lock");
        let opened = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path);
        let Ok(file) = opened else {
            return (None, true);
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => (Some(lock), true),
            Err(_) => {
                let own = format!("{}.part", uuid::Uuid::now_v7());
                self.partial = self.partial.with_extension(own);
                (None, false)
            }
        }
    }

    async fn attempts(&self) -> Result<Downloaded, FetchError> {
        let (mut attempt, mut restarts) = (1u32, 0u32);
        loop {
            let result = tokio::time::timeout_at(self.deadline, self.once()).await;
            let stop = match result {
                // The partial file stays: a later fetch may resume it.
                Err(_) => return Err(self.timed_out()),
                Ok(Ok(done)) => return Ok(done),
                Ok(Err(stop)) => stop,
            };
            match stop {
                Stop::Restart if restarts < MAX_RESTARTS => restarts += 1,
                Stop::Restart => {
                    return Err(self.network("the server's range answers were unusable"));
                }
                Stop::Failed(err, retry_after)
                    if err.is_retryable() && attempt < self.settings.attempts =>
                {
                    tracing::debug!(url = %shown_url(self.url), attempt, error = %err, "retrying a download");
                    let delay = retry_after.unwrap_or_else(|| backoff(self.settings, attempt));
                    if Instant::now() + delay >= self.deadline {
                        return Err(self.timed_out());
                    }
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Stop::Failed(err, _) => {
                    if !err.is_retryable() {
                        let _ = std::fs::remove_file(&self.partial);
                    }
                    return Err(err);
                }
            }
        }
    }

    async fn once(&self) -> Result<Downloaded, Stop> {
        let offset = std::fs::metadata(&self.partial).map_or(0, |m| m.len());
        let mut request = self.client.get(self.url.clone());
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        let response = request.send().await.map_err(|e| self.request_error(&e))?;
        let start = self.usable_start(offset, &response)?;
        let (response, facts) = self.refuse_error_answers(response).await?;

        if response
            .content_length()
            .is_some_and(|len| start + len > self.settings.max_bytes)
        {
            return Err(self.fail(self.too_large()));
        }
        let (mut file, hasher) = self.open_partial(start).map_err(|e| self.fail(e))?;
        let (hasher, size) = self.stream(response, &mut file, hasher, start).await?;
        file.sync_all()
            .map_err(|e| self.fail(io_error(&self.partial, e)))?;
        self.verify(Sha256Digest::from_hasher(hasher), size, facts)
            .map_err(|e| self.fail(e))
    }

    /// Where the body of `response` to a request made at `offset` starts in the file; a
    /// range answer that cannot be used empties the partial file and asks for a restart.
    fn usable_start(&self, offset: u64, response: &reqwest::Response) -> Result<u64, Stop> {
        let status = response.status().as_u16();
        let content_range = header_str(response.headers(), header::CONTENT_RANGE);
        match range_answer(offset, status, content_range) {
            RangeAnswer::Resume => Ok(offset),
            RangeAnswer::Fresh => Ok(0),
            RangeAnswer::Restart => {
                tracing::debug!(url = %shown_url(self.url), status, offset, "unusable range answer");
                let _ = std::fs::remove_file(&self.partial);
                Err(Stop::Restart)
            }
        }
    }

    /// Turns an error status or an HTML page into a failure that shows what the server said;
    /// anything else is a body to download.
    async fn refuse_error_answers(
        &self,
        response: reqwest::Response,
    ) -> Result<(reqwest::Response, ResponseFacts), Stop> {
        let facts = ResponseFacts {
            status: response.status().as_u16(),
            final_host: response.url().host_str().unwrap_or("unknown").to_owned(),
            content_type: header_str(response.headers(), header::CONTENT_TYPE)
                .unwrap_or("unknown")
                .to_owned(),
            ..ResponseFacts::default()
        };
        let url = shown_url(self.url);
        if !response.status().is_success() {
            let retry_after = retry_after(response.headers(), self.settings.backoff_max);
            let facts = Box::new(with_body_preview(facts, response).await);
            return Err(Stop::Failed(FetchError::Status { url, facts }, retry_after));
        }
        let html = facts
            .content_type
            .to_ascii_lowercase()
            .starts_with("text/html");
        if html {
            let facts = Box::new(with_body_preview(facts, response).await);
            return Err(self.fail(FetchError::HtmlPage { url, facts }));
        }
        Ok((response, facts))
    }

    /// Opens the partial file at `start`, hashing what it already holds.
    fn open_partial(&self, start: u64) -> Result<(File, Sha256), FetchError> {
        let io = |e| io_error(&self.partial, e);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.partial)
            .map_err(io)?;
        file.set_len(start).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.seek(SeekFrom::Start(start)).map_err(io)?;
        Ok((file, hasher))
    }

    /// Streams the body into `file`. A broken connection keeps what arrived, for a resume.
    async fn stream(
        &self,
        response: reqwest::Response,
        file: &mut File,
        mut hasher: Sha256,
        mut size: u64,
    ) -> Result<(Sha256, u64), Stop> {
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| Stop::Failed(self.network(&crate::error_chain(&e)), None))?;
            size += chunk.len() as u64;
            self.received
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if size > self.settings.max_bytes {
                return Err(self.fail(self.too_large()));
            }
            hasher.update(&chunk);
            // A write to the page cache takes microseconds; tokio::fs would add a thread
            // hop per chunk and cost more throughput than it saves.
            file.write_all(&chunk)
                .map_err(|e| self.fail(io_error(&self.partial, e)))?;
        }
        Ok((hasher, size))
    }

    fn verify(
        &self,
        actual: Sha256Digest,
        size: u64,
        facts: ResponseFacts,
    ) -> Result<Downloaded, FetchError> {
        let Some(expected) = self.expected.filter(|e| **e != actual) else {
            return self.accept(actual, size, facts);
        };
        let facts = Box::new(ResponseFacts {
            size,
            preview: ResponseFacts::preview_of(&self.head()),
            ..facts
        });
        let url = shown_url(self.url);
        if looks_like_html(&self.head()) {
            return Err(FetchError::HtmlPage { url, facts });
        }
        Err(FetchError::Mismatch {
            url,
            expected: expected.clone(),
            actual,
            facts,
        })
    }

    /// Accepts a finished download. Without an expected digest an HTML page is still refused:
    /// nothing else would catch it.
    fn accept(
        &self,
        digest: Sha256Digest,
        size: u64,
        facts: ResponseFacts,
    ) -> Result<Downloaded, FetchError> {
        let head = self.head();
        if self.expected.is_none() && looks_like_html(&head) {
            let facts = Box::new(ResponseFacts {
                size,
                preview: ResponseFacts::preview_of(&head),
                ..facts
            });
            return Err(FetchError::HtmlPage {
                url: shown_url(self.url),
                facts,
            });
        }
        Ok(Downloaded {
            partial: self.partial.clone(),
            digest,
            size,
        })
    }

    /// The first bytes of the partial file.
    fn head(&self) -> Vec<u8> {
        let mut head = Vec::with_capacity(PREVIEW_BYTES);
        if let Ok(file) = File::open(&self.partial) {
            let _ = file.take(PREVIEW_BYTES as u64).read_to_end(&mut head);
        }
        head
    }

    fn request_error(&self, err: &reqwest::Error) -> Stop {
        let reason = crate::error_chain(err);
        if refused_by_policy(err) {
            let url = shown_url(self.url);
            return self.fail(FetchError::NotAllowed { url, reason });
        }
        if err.is_redirect() {
            let url = shown_url(self.url);
            return self.fail(FetchError::Redirect { url, reason });
        }
        Stop::Failed(self.network(&reason), None)
    }

    /// A final failure for this URL.
    fn fail(&self, err: FetchError) -> Stop {
        Stop::Failed(err, None)
    }

    fn network(&self, reason: &str) -> FetchError {
        FetchError::Network {
            url: shown_url(self.url),
            reason: reason.to_owned(),
        }
    }

    fn too_large(&self) -> FetchError {
        FetchError::TooLarge {
            url: shown_url(self.url),
            limit: self.settings.max_bytes,
        }
    }

    fn timed_out(&self) -> FetchError {
        FetchError::TimedOut {
            limit: self.settings.total_timeout,
        }
    }
}

/// Whether the resolver refused the connection: a final answer, not a network hiccup.
fn refused_by_policy(err: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if cause.is::<super::resolver::AddressRefused>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Decides how to use an answer with `status` to a request made at `offset`.
pub fn range_answer(offset: u64, status: u16, content_range: Option<&str>) -> RangeAnswer {
    let start = content_range.and_then(content_range_start);
    match (offset, status) {
        (0, 206) if start == Some(0) => RangeAnswer::Fresh,
        (0, 206) => RangeAnswer::Restart,
        (0, _) => RangeAnswer::Fresh,
        (_, 206) if start == Some(offset) => RangeAnswer::Resume,
        (_, 206) | (_, 416) => RangeAnswer::Restart,
        (_, _) => RangeAnswer::Fresh,
    }
}

/// The first byte position of `bytes <start>-<end>/<total>`.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes ")?;
    let (start, rest) = range.split_once('-')?;
    rest.split_once('/')?;
    start.trim().parse().ok()
}

/// Whether bytes begin like an HTML document: what an error page or a login wall sends.
pub fn looks_like_html(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let text = text
        .trim_start_matches('\u{feff}')
        .trim_start()
        .to_ascii_lowercase();
    text.starts_with("<!doctype html") || text.starts_with("<html") || text.starts_with("<head")
}

/// Exponential backoff with equal jitter: half the step fixed, half random, so many fetchers
/// that failed together do not retry together.
fn backoff(settings: &FetchSettings, attempt: u32) -> Duration {
    let step = settings
        .backoff_base
        .saturating_mul(1 << attempt.min(16))
        .min(settings.backoff_max);
    let half = step / 2;
    half + half.mul_f64(jitter_fraction())
}

/// A number in [0, 1) that differs between calls; std's hasher keys are random per instance.
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A `Retry-After` in seconds, capped; HTTP dates are ignored (the backoff applies instead).
fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let secs: u64 = header_str(headers, header::RETRY_AFTER)?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(cap))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Adds the first bytes of an error answer's body to `facts`, reading no more than that.
async fn with_body_preview(mut facts: ResponseFacts, response: reqwest::Response) -> ResponseFacts {
    let mut head = Vec::new();
    let mut body = response.bytes_stream();
    while head.len() < PREVIEW_BYTES {
        match body.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            _ => break,
        }
    }
    facts.size = head.len() as u64;
    facts.preview = ResponseFacts::preview_of(&head);
    facts
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::fresh(0, 200, None, RangeAnswer::Fresh)]
    #[case::resumed(100, 206, Some("bytes 100-199/200"), RangeAnswer::Resume)]
    #[case::range_ignored(100, 200, None, RangeAnswer::Fresh)]
    #[case::wrong_start(100, 206, Some("bytes 50-199/200"), RangeAnswer::Restart)]
    #[case::no_content_range(100, 206, None, RangeAnswer::Restart)]
    #[case::garbled(100, 206, Some("bytes x-y/z"), RangeAnswer::Restart)]
    #[case::unsatisfiable(100, 416, Some("bytes */100"), RangeAnswer::Restart)]
    #[case::unasked_partial(0, 206, Some("bytes 10-19/20"), RangeAnswer::Restart)]
    #[case::error_status(100, 503, None, RangeAnswer::Fresh)]
    fn range_answers_are_trusted_only_when_they_start_where_we_stopped(
        #[case] offset: u64,
        #[case] status: u16,
        #[case] content_range: Option<&str>,
        #[case] expected: RangeAnswer,
    ) {
        assert_eq!(range_answer(offset, status, content_range), expected);
    }

    #[rstest]
    #[case(b"<!DOCTYPE html><html>".as_slice(), true)]
    #[case(b"  \n<html lang=en>".as_slice(), true)]
    #[case(b"\xef\xbb\xbf<!doctype html>".as_slice(), true)]
    #[case(b"#!/bin/sh\necho".as_slice(), false)]
    #[case(b"\x7fELF\x02\x01".as_slice(), false)]
    fn html_is_recognised_by_its_first_bytes(#[case] head: &[u8], #[case] html: bool) {
        assert_eq!(looks_like_html(head), html);
    }

    #[test]
    fn backoff_grows_and_stays_under_its_cap() {
        let settings = FetchSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..FetchSettings::default()
        };
        for attempt in 1..10 {
            let delay = backoff(&settings, attempt);
            assert!(delay <= Duration::from_secs(1), "{delay:?}");
            assert!(delay >= Duration::from_millis(100).min(Duration::from_secs(1) / 2));
        }
    }
}
