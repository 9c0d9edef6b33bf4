//! Prometheus metrics, served on a listener of their own (`HB_METRICS_LISTEN`), never on the
//! API's port: a scraper needs no API token, and a network policy can open one port to the
//! monitoring system without opening the other.
//!
//! Counters and histograms that events move live in [`Metrics`], owned by the run engine and
//! updated where the events happen (a run finishing, a line of CLI output, a tool fetched).
//! Gauges are computed when scraped, from what the engine and the credential checks already
//! know: the queue, the runs holding a slot, and each credential's expiry read from its file,
//! so a scrape never refreshes a token or calls the network. Each bridge has its own
//! registry (no global recorder), so several bridges in one process count apart.

pub mod exposition;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use time::OffsetDateTime;

use self::exposition::{Exposition, Kind};
use crate::adapter::{Adapter, health};
use crate::credentials::CredentialError;
use crate::run::RunRecord;
use crate::run::engine::Engine;
use crate::run::supervisor::Stream;

/// Upper bounds of the run duration buckets, in seconds: runs take from seconds (a trivial
/// CLI) to the longest timeout a request may ask for (an hour by default).
const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// The metrics that events move. Cheap to share; every method takes `&self`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Finished runs by adapter, outcome and reason.
    runs: Family<3>,
    /// Run durations by adapter and outcome.
    durations: Mutex<BTreeMap<[String; 2], Histogram>>,
    /// CLI output bytes read by the run pipeline, by adapter and stream.
    output_bytes: Family<2>,
}

impl Metrics {
    /// Counts a finished run, and observes its duration if it got past the queue.
    pub fn run_finished(&self, record: &RunRecord) {
        let adapter = record.spec.adapter.as_str();
        let outcome = record
            .outcome
            .map_or_else(|| "unknown".to_owned(), |o| snake(&o));
        let reason = record
            .reason
            .map_or_else(|| "none".to_owned(), |r| r.as_str());
        self.runs
            .counter([adapter, &outcome, &reason])
            .fetch_add(1, Ordering::Relaxed);

        if let (Some(started), Some(finished)) = (record.started_at, record.finished_at) {
            let seconds = (finished - started).as_seconds_f64().max(0.0);
            let mut durations = lock(&self.durations);
            durations
                .entry([adapter.to_owned(), outcome])
                .or_insert_with(Histogram::new)
                .observe(seconds);
        }
    }

    /// The counter of CLI output bytes for `adapter` and `stream`, resolved once per run so
    /// each line costs one atomic add.
    pub fn output_bytes(&self, adapter: &str, stream: Stream) -> Arc<AtomicU64> {
        let stream = match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        self.output_bytes.counter([adapter, stream])
    }
}

/// Series of one counter family, by label values.
#[derive(Debug)]
struct Family<const N: usize> {
    series: Mutex<BTreeMap<[String; N], Arc<AtomicU64>>>,
}

impl<const N: usize> Default for Family<N> {
    fn default() -> Self {
        Self {
            series: Mutex::default(),
        }
    }
}

impl<const N: usize> Family<N> {
    fn counter(&self, labels: [&str; N]) -> Arc<AtomicU64> {
        let key = labels.map(str::to_owned);
        Arc::clone(lock(&self.series).entry(key).or_default())
    }

    fn snapshot(&self) -> Vec<([String; N], u64)> {
        lock(&self.series)
            .iter()
            .map(|(labels, value)| (labels.clone(), value.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Observations per bucket (not cumulative; the exposition adds them up) and their sum.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; DURATION_BUCKETS.len() + 1],
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A unit enum variant as it is spelled on the wire.
fn snake(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => "unknown".to_owned(),
    }
}

/// The metrics listener's application: `GET /metrics`, and 404 for anything else.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(engine)
}

async fn scrape(State(engine): State<Engine>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || render(&engine))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], text)
}

/// Every metric of `engine`'s bridge, as a scrape answer.
pub fn render(engine: &Engine) -> String {
    let metrics = engine.metrics();
    let mut out = Exposition::default();

    out.family(
        "headless_bridge_runs_total",
        Kind::Counter,
        "Finished runs by adapter, outcome and reason code (reason \"none\" for a success).",
    );
    for ([adapter, outcome, reason], value) in metrics.runs.snapshot() {
        let labels = [
            ("adapter", adapter.as_str()),
            ("outcome", outcome.as_str()),
            ("reason", reason.as_str()),
        ];
        out.sample("headless_bridge_runs_total", &labels, value as f64);
    }

    out.family(
        "headless_bridge_run_duration_seconds",
        Kind::Histogram,
        "Time from a run leaving the queue to its end, by adapter and outcome.",
    );
    let durations = lock(&metrics.durations).clone();
    for ([adapter, outcome], histogram) in durations {
        let labels = [("adapter", adapter.as_str()), ("outcome", outcome.as_str())];
        out.histogram(
            "headless_bridge_run_duration_seconds",
            &labels,
            DURATION_BUCKETS,
            &histogram.counts,
            histogram.sum,
        );
    }

    let (queued, running) = engine.unfinished();
    out.family(
        "headless_bridge_runs_queued",
        Kind::Gauge,
        "Runs waiting for a slot (HB_MAX_CONCURRENT_RUNS).",
    );
    out.sample("headless_bridge_runs_queued", &[], queued as f64);
    out.family(
        "headless_bridge_runs_running",
        Kind::Gauge,
        "Runs past the queue that have not finished: preparing or running their CLI.",
    );
    out.sample("headless_bridge_runs_running", &[], running as f64);

    credential_gauges(engine, &mut out);

    let fetch = engine.fetch_stats();
    let counters = [
        (
            "headless_bridge_fetch_cache_hits_total",
            "Tool fetches answered from the verified cache.",
            &fetch.cache_hits,
        ),
        (
            "headless_bridge_fetch_cache_misses_total",
            "Tool fetches that had to download.",
            &fetch.cache_misses,
        ),
        (
            "headless_bridge_fetch_downloaded_bytes_total",
            "Bytes of tool downloads received, retries and failed attempts included.",
            &fetch.downloaded_bytes,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, Kind::Counter, help);
        out.sample(name, &[], value.load(Ordering::Relaxed) as f64);
    }

    out.family(
        "headless_bridge_cli_output_bytes_total",
        Kind::Counter,
        "Bytes of CLI output (lines and their line feeds) read from runs, by adapter and stream.",
    );
    for ([adapter, stream], value) in metrics.output_bytes.snapshot() {
        let labels = [("adapter", adapter.as_str()), ("stream", stream.as_str())];
        out.sample(
            "headless_bridge_cli_output_bytes_total",
            &labels,
            value as f64,
        );
    }
    out.finish()
}

/// Per login: whether a run could authenticate with it now, and the seconds until its access
/// token expires (negative once expired; absent for logins without an expiry, such as API
/// keys). Read from the credential files as the health check reads them. Labelled by adapter
/// and credential: each Codex login by its name (`default`, or a name from
/// `HB_CODEX_CREDENTIALS`), each profile's secrets by the profile's name.
fn credential_gauges(engine: &Engine, out: &mut Exposition) {
    let now = OffsetDateTime::now_utc();
    let mut facts: Vec<CredentialFacts> = Vec::new();
    for (name, login) in engine.logins().iter() {
        let (healthy, expires) = match login.copy.current() {
            Ok(auth) => (
                auth.facts.usable_at(now) && login.copy.dead_reason().is_none(),
                auth.facts.access_token_expires_at,
            ),
            Err(CredentialError::NotConfigured) => continue,
            Err(_) => (false, None),
        };
        facts.push((
            crate::adapter::CODEX.to_owned(),
            name.to_owned(),
            healthy,
            expires,
        ));
    }
    let adapters = engine.adapters();
    for name in adapters.names() {
        let Some(Adapter::Profile(profile)) = adapters.get(name) else {
            continue;
        };
        let checked = health::credentials(&profile, now);
        let expires = checked["expires_at"]
            .as_i64()
            .and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok());
        facts.push((
            name.to_owned(),
            name.to_owned(),
            checked["ok"] == true,
            expires,
        ));
    }

    out.family(
        "headless_bridge_credential_healthy",
        Kind::Gauge,
        "1 when a login would let a run authenticate now (as /health?deep=1 judges it), else 0.",
    );
    for (adapter, credential, healthy, _) in &facts {
        let labels = [
            ("adapter", adapter.as_str()),
            ("credential", credential.as_str()),
        ];
        let value = if *healthy { 1.0 } else { 0.0 };
        out.sample("headless_bridge_credential_healthy", &labels, value);
    }
    out.family(
        "headless_bridge_credential_expires_in_seconds",
        Kind::Gauge,
        "Seconds until a login's access token expires, negative once it has; only logins with an expiry.",
    );
    for (adapter, credential, _, expires) in &facts {
        if let Some(expires) = expires {
            let labels = [
                ("adapter", adapter.as_str()),
                ("credential", credential.as_str()),
            ];
            let seconds = (*expires - now).as_seconds_f64().round();
            out.sample(
                "headless_bridge_credential_expires_in_seconds",
                &labels,
                seconds,
            );
        }
    }
}

/// A login's adapter, credential name, health and access token expiry.
type CredentialFacts = (String, String, bool, Option<OffsetDateTime>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut histogram = Histogram::new();
        for value in [0.1, 0.5, 0.51, 7200.0] {
            histogram.observe(value);
        }
        assert_eq!(histogram.counts[0], 2, "0.1 and 0.5 (bounds are inclusive)");
        assert_eq!(histogram.counts[1], 1);
        assert_eq!(
            histogram.counts[DURATION_BUCKETS.len()],
            1,
            "past the last bound"
        );
        assert!((histogram.sum - 7201.11).abs() < 1e-9, "{}", histogram.sum);
    }

    #[test]
    fn a_counter_handle_and_its_family_share_one_value() {
        let metrics = Metrics::default();
        let stdout = metrics.output_bytes("codex", Stream::Stdout);
        stdout.fetch_add(10, Ordering::Relaxed);
        metrics
            .output_bytes("codex", Stream::Stdout)
            .fetch_add(5, Ordering::Relaxed);
        assert_eq!(
            metrics.output_bytes.snapshot(),
            vec![(["codex".to_owned(), "stdout".to_owned()], 15)]
        );
    }
}
