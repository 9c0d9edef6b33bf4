//! A download server on loopback that misbehaves on purpose, standing in for the release hosts
//! and mirrors a fetcher meets in the real world.
//!
//! [`FaultServer`] serves files with honest `Range` support, and for each file a queue of
//! [`Fault`]s: each request takes the next fault from the queue, and once the queue is empty
//! requests are served honestly. It records what each request asked for, so a test can check
//! that a retry resumed where the last one stopped. Judging what the client did with the
//! answers is left to the test.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::loopback::Loopback;

/// One way to answer a request badly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answers 200 with the whole file whatever the `Range` asked.
    IgnoreRange,
    /// Answers a range request with 206 and a `Content-Range` that starts at 0, not where
    /// asked.
    WrongRangeStart,
    /// Promises the whole (remaining) file, sends half of it, and drops the connection.
    CloseHalfway,
    /// Redirects (302) to this URL.
    RedirectTo(String),
    /// Answers with this status and an HTML error page.
    HtmlErrorPage(u16),
    /// Answers 200 with an HTML page labelled `application/octet-stream`, as a misconfigured
    /// host does.
    HtmlAsBinary,
    /// Answers with this status and a short text body.
    Status(u16),
    /// Sends the file one byte at a time with this pause between bytes.
    Trickle(Duration),
}

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Whether an `Authorization` header came along.
    pub authorization: bool,
}

struct File {
    bytes: Bytes,
    faults: VecDeque<Fault>,
    seen: Vec<Seen>,
}

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, File>>,
}

/// A running fault server on 127.0.0.1; dropping it shuts the server down and ends the
/// responses it is still trickling.
pub struct FaultServer {
    server: Loopback,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultServer")
            .field("origin", &self.server.origin())
            .finish_non_exhaustive()
    }
}

impl FaultServer {
    /// Starts a server with no files.
    pub async fn start() -> FaultServer {
        let shared = Arc::new(Shared::default());
        let shutdown = CancellationToken::new();
        let router = Router::new()
            .fallback(serve)
            .with_state((Arc::clone(&shared), shutdown.clone()));
        let server = Loopback::serve(router, shutdown).await;
        FaultServer { server, shared }
    }

    /// Serves `bytes` at `path`, answering the first requests with `faults`, in order.
    pub fn add(&self, path: &str, bytes: impl Into<Bytes>, faults: Vec<Fault>) {
        let file = File {
            bytes: bytes.into(),
            faults: faults.into(),
            seen: Vec::new(),
        };
        self.lock().insert(normalize(path), file);
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.server.origin(), normalize(path))
    }

    /// The requests for `path` so far.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.lock()
            .get(&normalize(path))
            .map(|f| f.seen.clone())
            .unwrap_or_default()
    }

    /// How many requests asked for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.seen(path).len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, File>> {
        self.shared
            .files
            .lock()
            .expect("no code panics holding the file table")
    }
}

async fn serve(
    State((shared, shutdown)): State<(Arc<Shared>, CancellationToken)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let taken = {
        let mut files = shared
            .files
            .lock()
            .expect("no code panics holding the file table");
        files.get_mut(&normalize(uri.path())).map(|file| {
            file.seen.push(Seen {
                range: range.clone(),
                authorization: headers.contains_key(header::AUTHORIZATION),
            });
            (file.bytes.clone(), file.faults.pop_front())
        })
    };
    let Some((bytes, fault)) = taken else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let start = range.as_deref().and_then(range_start);
    match fault {
        None => honest(bytes, start),
        Some(fault) => faulty(fault, bytes, start, shutdown),
    }
}

/// The file, or its tail from `start` as a 206.
fn honest(bytes: Bytes, start: Option<u64>) -> Response {
    let len = bytes.len() as u64;
    match start {
        Some(start) if start < len => {
            let content_range = format!("bytes {start}-{}/{len}", len - 1);
            let tail = bytes.slice(start as usize..);
            let headers = [
                (header::CONTENT_RANGE, content_range),
                (header::CONTENT_TYPE, "application/octet-stream".into()),
            ];
            (StatusCode::PARTIAL_CONTENT, headers, tail).into_response()
        }
        Some(_) => {
            let headers = [(header::CONTENT_RANGE, format!("bytes */{len}"))];
            (StatusCode::RANGE_NOT_SATISFIABLE, headers).into_response()
        }
        None => binary(StatusCode::OK, bytes),
    }
}

fn faulty(fault: Fault, bytes: Bytes, start: Option<u64>, shutdown: CancellationToken) -> Response {
    match fault {
        Fault::IgnoreRange => binary(StatusCode::OK, bytes),
        Fault::WrongRangeStart => {
            let len = bytes.len();
            let content_range = format!("bytes 0-{}/{len}", len - 1);
            let headers = [(header::CONTENT_RANGE, content_range)];
            (StatusCode::PARTIAL_CONTENT, headers, bytes).into_response()
        }
        Fault::CloseHalfway => close_halfway(bytes, start),
        Fault::RedirectTo(location) => {
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        Fault::HtmlErrorPage(status) => {
            let status = StatusCode::from_u16(status).expect("a valid status");
            let page = "<!DOCTYPE html><html><body><h1>Error</h1></body></html>\n";
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                page,
            )
                .into_response()
        }
        Fault::HtmlAsBinary => {
            let page = "<!doctype html><html><body>Sign in to continue</body></html>\n";
            binary(StatusCode::OK, Bytes::from_static(page.as_bytes()))
        }
        Fault::Status(status) => {
            let status = StatusCode::from_u16(status).expect("a valid status");
            (status, [(header::RETRY_AFTER, "0")], "not now\n").into_response()
        }
        Fault::Trickle(pause) => trickle(bytes, pause, shutdown),
    }
}

fn binary(status: StatusCode, bytes: Bytes) -> Response {
    let content_type = [(header::CONTENT_TYPE, "application/octet-stream")];
    (status, content_type, bytes).into_response()
}

/// Promises the tail from `start`, sends half of it, then fails the body so the connection
/// is dropped mid-response.
fn close_halfway(bytes: Bytes, start: Option<u64>) -> Response {
    let tail = bytes.slice(start.unwrap_or(0) as usize..);
    let half = tail.slice(..tail.len() / 2);
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(half) });
    // hyper flushes what it buffered only when the body stream is pending; an error that came
    // at once would drop the connection before the half ever left. The pause is the fault
    // being modelled (a connection that stalls, then dies), not a wait for the client.
    let then_fail = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(std::io::Error::other("connection dropped on purpose"))
    });
    let mut response = Response::new(Body::from_stream(first.chain(then_fail)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(tail.len()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(start) = start {
        let len = bytes.len();
        let value = format!("bytes {start}-{}/{len}", len - 1);
        headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("ASCII"),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

/// One byte per `pause`, until the file is sent or the server stops.
fn trickle(bytes: Bytes, pause: Duration, shutdown: CancellationToken) -> Response {
    let ticks = tokio_stream_interval(pause);
    let stream = futures::stream::iter(0..bytes.len())
        .zip(ticks)
        .map(move |(i, ())| Ok::<_, std::io::Error>(bytes.slice(i..=i)))
        .take_until(shutdown.cancelled_owned());
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// A stream that yields once per `period`.
fn tokio_stream_interval(period: Duration) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(tokio::time::interval(period), |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}

/// The first byte of `bytes=N-`.
fn range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes=")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn normalize(path: &str) -> String {
    path.trim_start_matches('/').to_owned()
}
