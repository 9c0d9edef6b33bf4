//! Completion webhooks: the finished record POSTed to the run's `callback_url`.
//!
//! The body is the record as `GET /v1/runs/{id}` shows it. The receiver can check it came from
//! this bridge with the `X-HB-Signature` header, `t=<unix seconds>,v1=<hex>`, where the hex is
//! HMAC-SHA256 over `<t>.<body>` keyed with `HB_WEBHOOK_SECRET`; binding the time stops
//! replays of an old delivery. Network errors, 5xx and 429 are retried with exponential
//! backoff and jitter; any other answer ends the delivery. The URL is checked against the host
//! policy at every attempt and redirects are not followed.

use crate::lazy_client::LazyClient;
use std::time::Duration;

use hmac::{KeyInit as _, Mac as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::config::Secret;
use crate::policy::UrlPolicy;
use crate::run::RunRecord;

/// Attempts per delivery; with the backoff below the last one is about 30 s after the first.
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-hb-signature";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Delivers completion webhooks in the background.
#[derive(Clone)]
pub struct Webhooks {
    client: LazyClient,
    policy: UrlPolicy,
    secret: Option<Secret>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Webhooks {
    /// Webhooks checked by `policy` and signed with `secret`.
    pub fn new(policy: UrlPolicy, secret: Option<Secret>) -> Self {
        let client = LazyClient::new(|| {
            reqwest::Client::builder()
                .user_agent(concat!("headless-bridge/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("a client with static settings builds")
        });
        Self {
            client,
            policy,
            secret,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Whether a secret to sign with is configured.
    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// Starts delivering `record` to its callback URL, if it has one.
    pub fn deliver(&self, record: &RunRecord, _runs: &TaskTracker) {
        let (Some(url), Some(secret)) = (record.spec.callback_url.clone(), self.secret.clone())
        else {
            return;
        };
        let body = serde_json::to_vec(record).expect("a run record serializes");
        let this = self.clone();
        let run_id = record.id;
        self.tasks.spawn(async move {
            tokio::select! {
                delivered = this.send_with_retries(&url, &secret, body) => match delivered {
                    Ok(attempts) => tracing::info!(%run_id, attempts, "webhook delivered"),
                    Err(why) => tracing::warn!(%run_id, why, "webhook not delivered"),
                },
                () = this.stop.cancelled() => tracing::warn!(%run_id, "webhook not delivered: the bridge is shutting down"),
            }
        }.in_current_span());
    }

    /// Stops retrying and waits for deliveries in flight.
    pub async fn close(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn send_with_retries(
        &self,
        url: &str,
        secret: &Secret,
        body: Vec<u8>,
    ) -> Result<u32, String> {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let checked = self
                .policy
                .check(url)
                .await
                .map_err(|e| format!("the callback URL {e}"))?;
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
                Ok(response) if response.status().is_success() => return Ok(attempt),
                Ok(response) if response.status().is_server_error() || response.status() == 429 => {
                    format!("HTTP {}", response.status().as_u16())
                }
                Ok(response) => {
                    return Err(format!(
                        "the receiver answered HTTP {}",
                        response.status().as_u16()
                    ));
                }
                Err(e) => crate::error_chain(&e),
            };
            tracing::debug!(attempt, why = %retry, "webhook attempt failed");
            if attempt < ATTEMPTS {
                tokio::time::sleep(jitter(backoff)).await;
                backoff *= 2;
            }
        }
        Err(format!("{ATTEMPTS} attempts failed"))
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
