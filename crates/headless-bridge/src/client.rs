//! A client of a bridge's `/v1` API, for the `submit`, `runs`, `logs` and `cancel` commands:
//! requests with the bearer token, the API's error body turned into a [`ClientError`], and a
//! run's Server-Sent Events read one by one, resumed with `Last-Event-ID` when the connection
//! drops. The token is only ever put in the `Authorization` header; no error shows it.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

/// How often a dropped event stream is reopened before giving up.
const RECONNECTS: u32 = 5;
/// Reconnect backoff; the bridge replays from the last event id, so nothing is lost meanwhile.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Why a request to the bridge failed, classified by what the user does next.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the bridge at {url}: {reason} (is it running? set HB_URL or --url)")]
    Unreachable { url: String, reason: String },
    #[error("the bridge refused the token ({code}: {message}); set HB_TOKEN or --token-file")]
    Unauthorized { code: String, message: String },
    #[error("the bridge refused the request with {status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the bridge failed with {status} {code}: {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    #[error("`{0}` is not a valid bridge URL")]
    BadUrl(String),
    #[error("the bridge answered something unexpected: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The exit code the commands use: 2 the request was refused (401 and other 4xx),
    /// 3 the bridge could not be reached or failed (5xx, an unreadable answer).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Unauthorized { .. } | Self::Refused { .. } | Self::BadUrl(_) => 2,
            Self::Unreachable { .. } | Self::Server { .. } | Self::Protocol(_) => 3,
        }
    }
}

/// One Server-Sent Event of a run: its sequence number, kind and the stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    pub id: u64,
    pub kind: String,
    /// The event's `data` object (a `line`, a `state`, a CLI event, an outcome).
    pub data: Value,
}

/// A connection to one bridge.
pub struct Client {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the bridge at `base` (such as `http://127.0.0.1:8000`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let mut base = Url::parse(base).map_err(|_| ClientError::BadUrl(base.to_owned()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ClientError::BadUrl(base.to_string()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("headless-bridge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .expect("a client with static settings builds");
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// Sends a request to `path` (relative, such as `v1/runs`) and returns the answer's JSON.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let response = self.send(method, path, body, None).await?;
        response
            .json()
            .await
            .map_err(|e| ClientError::Protocol(format!("the answer is not JSON: {e}")))
    }

    /// A text resource, such as a run's log.
    pub async fn text(&self, path: &str) -> Result<String, ClientError> {
        let response = self.send(Method::GET, path, None, None).await?;
        response
            .text()
            .await
            .map_err(|e| self.unreachable(&e.to_string()))
    }

    /// Follows a run's events from the start to its `outcome` event, calling `on_event` for
    /// each. A dropped connection is reopened after the last event seen.
    pub async fn follow(
        &self,
        run_id: &str,
        mut on_event: impl FnMut(&RunEvent),
    ) -> Result<(), ClientError> {
        let path = format!("v1/runs/{run_id}/events");
        let mut last_id = None;
        let mut reconnects = 0;
        loop {
            let response = self.send(Method::GET, &path, None, last_id).await?;
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            let mut dropped = None;
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        dropped = Some(e.to_string());
                        break;
                    }
                };
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let Some(event) = parse_frame(&frame) else {
                        continue;
                    };
                    last_id = Some(event.id);
                    on_event(&event);
                    if event.kind == "outcome" {
                        return Ok(());
                    }
                }
            }
            reconnects += 1;
            if reconnects > RECONNECTS {
                let reason = dropped.unwrap_or_else(|| "the stream ended early".to_owned());
                return Err(self.unreachable(&reason));
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        last_event_id: Option<u64>,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self
            .base
            .join(path)
            .map_err(|_| ClientError::BadUrl(path.to_owned()))?;
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.unreachable(&crate::error_chain(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("no_code")
            .to_owned();
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("the answer carried no error message")
            .to_owned();
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized { code, message },
            s if s.is_client_error() => ClientError::Refused {
                status: s.as_u16(),
                code,
                message,
            },
            s => ClientError::Server {
                status: s.as_u16(),
                code,
                message,
            },
        })
    }

    fn unreachable(&self, reason: &str) -> ClientError {
        ClientError::Unreachable {
            url: self.base.to_string(),
            reason: reason.to_owned(),
        }
    }
}

/// One SSE frame: `id:`, `event:` and `data:` lines; comments (keep-alives) and frames without
/// an id are skipped. The data is the stored event; its `data` member is what is returned.
fn parse_frame(frame: &str) -> Option<RunEvent> {
    let mut id = None;
    let mut kind = None;
    let mut data = String::new();
    for line in frame.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => kind = Some(value.to_owned()),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    let stored: Value = serde_json::from_str(&data).ok()?;
    Some(RunEvent {
        id: id?,
        kind: kind?,
        data: stored.get("data").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_gives_its_id_kind_and_data_and_comments_are_skipped() {
        let frame = "id: 7\nevent: output\ndata: {\"seq\":7,\"kind\":\"output\",\"data\":{\"line\":\"hi\"}}\n\n";
        assert_eq!(
            parse_frame(frame),
            Some(RunEvent {
                id: 7,
                kind: "output".into(),
                data: serde_json::json!({"line": "hi"}),
            })
        );
        assert_eq!(parse_frame(":\n\n"), None);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let client = Client::new("http://127.0.0.1:8000", Some("tok-secret-123".into())).unwrap();
        assert!(!format!("{client:?}").contains("tok-secret-123"));
    }

    #[test]
    fn only_http_urls_are_bridges() {
        assert!(Client::new("ftp://x", None).is_err());
        assert!(Client::new("127.0.0.1:8000", None).is_err());
        let client = Client::new("http://h:1/prefix", None).unwrap();
        assert_eq!(client.base.as_str(), "http://h:1/prefix/");
    }
}
