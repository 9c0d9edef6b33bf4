//! Writing a refreshed login back into its Kubernetes Secret.
//!
//! The working copy on the data volume keeps a refreshed login across runs, but a pod that
//! loses its volume (a new node, a new Deployment) starts again from the Secret, whose
//! refresh token the CLI has already spent. With `HB_CREDENTIAL_SECRET` set, each refresh
//! the working copy takes in is also written into that Secret's `auth.json` through the API:
//! read the Secret, replace the key, and put it back under the `resourceVersion` just read,
//! so a concurrent change (an operator rotating the login) is never overwritten blindly; on a
//! conflict the write starts over from a fresh read, a few times.
//!
//! A failed write-back never fails the run (the working copy holds the tokens), but it is
//! logged as an error and shown by the deep health check until a later write succeeds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::config::{KubeApi, SecretRef};

/// The key of the login in the Secret, as `secret create` and `kubectl create secret
/// --from-file=auth.json=...` name it.
pub const AUTH_KEY: &str = "auth.json";
/// Attempts when the Secret changes between the read and the write.
const CONFLICT_ATTEMPTS: usize = 3;
/// One write-back, every attempt included: a run's end waits for it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Kubernetes' HTTP status for a stale `resourceVersion`.
const CONFLICT: u16 = 409;

/// Why a write-back failed. Never holds the login.
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error("no Kubernetes client: {0}")]
    NoClient(String),
    #[error("the API server refused to {verb} Secret {secret} ({code} {reason}): {message}")]
    Refused {
        verb: &'static str,
        secret: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("failed to {verb} Secret {secret}")]
    Api {
        verb: &'static str,
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {secret} kept changing under the write ({CONFLICT_ATTEMPTS} conflicts)")]
    Conflicts { secret: String },
    #[error("writing Secret {secret} took longer than {}s", WRITE_TIMEOUT.as_secs())]
    Timeout { secret: String },
}

/// The last attempt and how it went.
#[derive(Debug, Clone)]
struct Attempt {
    at: OffsetDateTime,
    error: Option<String>,
}

/// Writes refreshed logins into one Secret and remembers how the last attempt went.
pub struct WriteBack {
    secret: SecretRef,
    client: Result<kube::Client, String>,
    last: Mutex<Option<Attempt>>,
}

impl WriteBack {
    /// A writer for `secret`, through the API `api` names. A client that cannot be made is
    /// not fatal at start-up: each write then fails, loudly.
    pub fn new(secret: SecretRef, api: &KubeApi) -> Self {
        let client = crate::k8s::client(api).map_err(|e| crate::error_chain(&e));
        if let Err(e) = &client {
            tracing::error!(error = %e, %secret, "credential write-back cannot reach the Kubernetes API");
        }
        Self::with_client(secret, client)
    }

    /// A writer over an existing client (tests use a mock service).
    pub fn with_client(secret: SecretRef, client: Result<kube::Client, String>) -> Self {
        Self {
            secret,
            client,
            last: Mutex::new(None),
        }
    }

    /// Puts `auth` into the Secret's `auth.json`, records the result, and logs a failure.
    pub async fn write(&self, auth: &[u8]) -> Result<(), WriteBackError> {
        let result = tokio::time::timeout(WRITE_TIMEOUT, self.replace(auth))
            .await
            .unwrap_or_else(|_| {
                Err(WriteBackError::Timeout {
                    secret: self.secret.to_string(),
                })
            });
        let error = result.as_ref().err().map(|e| crate::error_chain(e));
        match &error {
            None => {
                tracing::info!(secret = %self.secret, "wrote the refreshed login back to its Secret")
            }
            Some(e) => tracing::error!(
                error = %e, secret = %self.secret,
                "failed to write the refreshed login back to its Secret; a pod that starts from the \
                 Secret will find a spent refresh token"
            ),
        }
        *self.lock() = Some(Attempt {
            at: OffsetDateTime::now_utc(),
            error,
        });
        result
    }

    /// What health shows: the Secret, and when and how the last write went.
    pub fn status(&self) -> Value {
        let last = self.lock().clone();
        json!({
            "secret": self.secret.to_string(),
            "ok": last.as_ref().is_none_or(|a| a.error.is_none()),
            "last_attempt": last.map(|a| json!({
                "at": a.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "ok": a.error.is_none(),
                "error": a.error,
            })),
        })
    }

    /// Whether the latest write failed.
    pub fn failing(&self) -> bool {
        self.lock().as_ref().is_some_and(|a| a.error.is_some())
    }

    async fn replace(&self, auth: &[u8]) -> Result<(), WriteBackError> {
        let client = self.client.clone().map_err(WriteBackError::NoClient)?;
        let api: Api<Secret> = Api::namespaced(client, &self.secret.namespace);
        let name = &self.secret.name;
        for _ in 0..CONFLICT_ATTEMPTS {
            let mut secret = api.get(name).await.map_err(|e| self.error("get", e))?;
            let data = secret.data.get_or_insert_with(BTreeMap::new);
            data.insert(AUTH_KEY.to_owned(), ByteString(auth.to_vec()));
            // `stringData` would win over `data` on the server; a Secret read back has none.
            secret.string_data = None;
            // The resourceVersion from the read stays in the object: a write over a newer
            // version is refused with 409 instead of undoing someone else's change.
            match api.replace(name, &PostParams::default(), &secret).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.code == CONFLICT => {
                    tracing::debug!(secret = %self.secret, "the Secret changed under the write; reading it again");
                }
                Err(e) => return Err(self.error("update", e)),
            }
        }
        Err(WriteBackError::Conflicts {
            secret: self.secret.to_string(),
        })
    }

    fn error(&self, verb: &'static str, e: kube::Error) -> WriteBackError {
        let secret = self.secret.to_string();
        match e {
            kube::Error::Api(status) => WriteBackError::Refused {
                verb,
                secret,
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            source => WriteBackError::Api {
                verb,
                secret,
                source,
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Attempt>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    fn secret_json(version: &str, auth: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "login", "namespace": "ns", "resourceVersion": version},
            "data": {"auth.json": base64_of(auth), "config.toml": base64_of("model = 'x'")},
        }))
        .unwrap()
    }

    fn base64_of(text: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(text)
    }

    fn conflict() -> Vec<u8> {
        serde_json::to_vec(
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "the object has been modified", "reason": "Conflict", "code": 409}),
        )
        .unwrap()
    }

    /// A mock API server: answers each request in turn, and hands back what was PUT.
    fn mock(
        answers: Vec<(u16, Vec<u8>)>,
    ) -> (kube::Client, tokio::task::JoinHandle<Vec<(String, Value)>>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (request, send) = handle.next_request().await.expect("a request");
                let line = format!("{} {}", request.method(), request.uri().path());
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let sent = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                seen.push((line, sent));
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(body))
                        .unwrap(),
                );
            }
            seen
        });
        (kube::Client::new(service, "default"), server)
    }

    fn writer(client: kube::Client) -> WriteBack {
        let secret = SecretRef {
            namespace: "ns".into(),
            name: "login".into(),
        };
        WriteBack::with_client(secret, Ok(client))
    }

    #[tokio::test]
    async fn replaces_auth_json_under_the_version_it_read_and_keeps_other_keys() {
        let (client, server) = mock(vec![
            (200, secret_json("7", "old")),
            (200, secret_json("8", "new")),
        ]);
        let writer = writer(client);
        writer.write(b"new").await.unwrap();

        let seen = server.await.unwrap();
        assert_eq!(seen[0].0, "GET /api/v1/namespaces/ns/secrets/login");
        let (line, put) = &seen[1];
        assert_eq!(line, "PUT /api/v1/namespaces/ns/secrets/login");
        assert_eq!(put["metadata"]["resourceVersion"], "7");
        assert_eq!(put["data"]["auth.json"], base64_of("new"));
        assert_eq!(put["data"]["config.toml"], base64_of("model = 'x'"));
        assert_eq!(writer.status()["ok"], true);
    }

    #[tokio::test]
    async fn a_conflict_reads_the_secret_again_before_writing() {
        let (client, server) = mock(vec![
            (200, secret_json("7", "old")),
            (409, conflict()),
            (200, secret_json("9", "rotated by an operator")),
            (200, secret_json("10", "new")),
        ]);
        writer(client).write(b"new").await.unwrap();
        let seen = server.await.unwrap();
        assert_eq!(seen[3].1["metadata"]["resourceVersion"], "9");
    }

    #[tokio::test]
    async fn a_refusal_is_recorded_for_health_without_the_login() {
        let forbidden = serde_json::to_vec(&json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "Forbidden", "code": 403,
            "message": "secrets \"login\" is forbidden"}))
        .unwrap();
        let (client, _server) = mock(vec![(403, forbidden)]);
        let writer = writer(client);
        let err = writer.write(b"sk-secret-token").await.unwrap_err();
        assert!(
            matches!(err, WriteBackError::Refused { code: 403, .. }),
            "{err}"
        );

        let status = writer.status();
        assert_eq!(status["ok"], false);
        let error = status["last_attempt"]["error"].as_str().unwrap();
        assert!(
            error.contains("403") && error.contains("ns/login"),
            "{error}"
        );
        assert!(!status.to_string().contains("sk-secret-token"));
        assert!(writer.failing());
    }
}
