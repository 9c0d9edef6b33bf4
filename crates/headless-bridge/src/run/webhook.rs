//! Completion webhooks: the finished record POSTed to the run's `callback_url`.
//!
//! The body is the record as `GET /v1/runs/{id}` shows it. The receiver can check it came from
//! this bridge with the `X-HB-Signature` header, `t=<unix seconds>,v1=<hex>`, where the hex is
//! HMAC-SHA256 over `<t>.<body>` keyed with `HB_WEBHOOK_SECRET`; binding the time stops
//! replays of an old delivery. Network errors, 5xx and 429 are retried with exponential
//! backoff and jitter; any other answer ends the delivery. The URL is checked against the host
//! policy at every attempt, its name is resolved within the policy again for the connection
//! (so a DNS answer that changes in between cannot aim it at a private address), and
//! redirects are not followed.
//!
//! Nothing is lost to a stop or a crash: the store writes a pending delivery with the finished
//! record, and it is removed only once the delivery has ended. A bridge that stops lets
//! attempts in flight finish for a moment and leaves the rest pending; the next start resumes
//! them with the attempts already made. A receiver may therefore see a delivery twice, and
//! should take the run id as the key.

use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::Secret;
use crate::fetch::resolver::PolicyResolver;
use crate::lazy_client::LazyClient;
use crate::policy::UrlPolicy;
use crate::run::RunRecord;
use crate::store::Store;

/// Attempts per delivery; with the backoff below the last one is about 30 s after the first.
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping bridge lets attempts in flight finish; the rest resume at the next start.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-hb-signature";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Delivers completion webhooks in the background.
#[derive(Clone)]
pub struct Webhooks {
    client: LazyClient,
    policy: UrlPolicy,
    secret: Option<Secret>,
    store: Store,
    /// No new attempt starts once this is cancelled; attempts in flight go on.
    closing: CancellationToken,
    /// Abandons attempts in flight.
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// How a delivery ended.
enum Delivery {
    Delivered {
        attempts: u32,
    },
    Failed(String),
    /// Left pending for the next start: the bridge is stopping.
    Deferred,
}

impl Webhooks {
    /// Webhooks checked by `policy`, signed with `secret`, their pending deliveries in `store`.
    pub fn new(policy: UrlPolicy, secret: Option<Secret>, store: Store) -> Self {
        let resolver = Arc::new(PolicyResolver::new(policy.clone()));
        let client = LazyClient::new(move || {
            reqwest::Client::builder()
                .user_agent(concat!("headless-bridge/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(resolver.clone())
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("a client with static settings builds")
        });
        Self {
            client,
            policy,
            secret,
            store,
            closing: CancellationToken::new(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Whether a secret to sign with is configured.
    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// Starts delivering the finished `record` to its callback URL, if it has one, counting
    /// the `attempts_made` before (by a previous process).
    pub fn deliver(&self, record: &RunRecord, attempts_made: u32) {
        let Some(url) = record.spec.callback_url.clone() else {
            return;
        };
        let body = serde_json::to_vec(record).expect("a run record serializes");
        let this = self.clone();
        let run_id = record.id;
        self.tasks.spawn(
            async move {
                let delivery = match this.secret.clone() {
                    Some(secret) => tokio::select! {
                        delivery = this.send_with_retries(run_id, &url, &secret, body, attempts_made) => delivery,
                        () = this.stop.cancelled() => Delivery::Deferred,
                    },
                    // Submissions with a callback need a secret, but the operator may have
                    // removed it since this one was made.
                    None => Delivery::Failed("HB_WEBHOOK_SECRET is no longer set".into()),
                };
                match delivery {
                    Delivery::Delivered { attempts } => {
                        tracing::info!(%run_id, attempts, "webhook delivered")
                    }
                    Delivery::Failed(why) => tracing::warn!(%run_id, why, "webhook not delivered"),
                    Delivery::Deferred => {
                        tracing::info!(%run_id, "webhook delivery left for the next start");
                        return;
                    }
                }
                if let Err(e) = this.store.webhook_settled(run_id).await {
                    tracing::error!(%run_id, error = %crate::error_chain(&e), "failed to record a webhook delivery as ended");
                }
            }
            .in_current_span(),
        );
    }

    /// Starts no more attempts, gives those in flight up to `grace`, and leaves every delivery
    /// not ended pending in the store.
    pub async fn close(&self, grace: Duration) {
        self.closing.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            self.stop.cancel();
            self.tasks.wait().await;
        }
    }

    async fn send_with_retries(
        &self,
        run_id: crate::run::RunId,
        url: &str,
        secret: &Secret,
        body: Vec<u8>,
        attempts_made: u32,
    ) -> Delivery {
        let mut backoff = FIRST_BACKOFF;
        for attempt in attempts_made + 1..=ATTEMPTS {
            if self.closing.is_cancelled() {
                return Delivery::Deferred;
            }
            let checked = match self.policy.check(url).await {
                Ok(checked) => checked,
                Err(e) => return Delivery::Failed(format!("the callback URL {e}")),
            };
            let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
            let request = self
                .client
                .get()
                .post(checked)
                .header("content-type", "application/json")
                .header(
                    SIGNATURE_HEADER,
                    signature(secret.expose(), timestamp, &body),
                )
                .body(body.clone());
            let retry = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    return Delivery::Delivered { attempts: attempt };
                }
                Ok(response) if response.status().is_server_error() || response.status() == 429 => {
                    format!("HTTP {}", response.status().as_u16())
                }
                Ok(response) => {
                    return Delivery::Failed(format!(
                        "the receiver answered HTTP {}",
                        response.status().as_u16()
                    ));
                }
                Err(e) => crate::error_chain(&e),
            };
            tracing::debug!(attempt, why = %retry, "webhook attempt failed");
            if let Err(e) = self.store.webhook_attempted(run_id, attempt).await {
                tracing::error!(%run_id, error = %crate::error_chain(&e), "failed to record a webhook attempt");
            }
            if attempt < ATTEMPTS {
                tokio::select! {
                    () = tokio::time::sleep(jitter(backoff)) => {}
                    () = self.closing.cancelled() => return Delivery::Deferred,
                }
                backoff *= 2;
            }
        }
        Delivery::Failed(format!("{ATTEMPTS} attempts failed"))
    }
}

/// The `X-HB-Signature` value for `body` sent at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// `base` plus up to half of it again, so retries from many runs do not arrive in step.
fn jitter(base: Duration) -> Duration {
    let nanos = time::OffsetDateTime::now_utc().nanosecond() as u64;
    base + Duration::from_millis(nanos % (base.as_millis() as u64 / 2 + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_callback_host_is_resolved_within_the_policy_for_the_connection() {
        // The receiver is on loopback, reached by name: had the name passed the check and
        // then been answered with a private address (DNS rebinding), this is the connection
        // that would reach it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let hook = axum::Router::new().route("/", axum::routing::post(|| async { "ok" }));
            axum::serve(listener, hook).await
        });
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("runs.sqlite3")).unwrap();
        let url = format!("http://localhost:{port}/");

        let refused = Webhooks::new(UrlPolicy::default(), None, store.clone());
        let error = refused.client.get().post(&url).send().await.unwrap_err();
        assert!(
            crate::error_chain(&error).contains("non-public address"),
            "{error:?}"
        );
        let allowed = Webhooks::new(UrlPolicy::new(["localhost"]), None, store);
        let response = allowed.client.get().post(&url).send().await.unwrap();
        assert!(response.status().is_success());
    }

    #[test]
    fn the_signature_covers_time_and_body() {
        let a = signature("secret-0123456789", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(a, signature("secret-0123456789", 1_700_000_001, b"{}"));
        assert_ne!(a, signature("secret-0123456789", 1_700_000_000, b"[]"));
        assert_ne!(a, signature("another-secret-000", 1_700_000_000, b"{}"));
    }
}
