//! Downloading the tools a run needs, verified by sha256 before anyone may execute them.
//!
//! A download streams into a temporary file beside its destination while being hashed. Only
//! when the digest matches is the file synced, renamed into place and made executable, so
//! nothing exists at the final path unless it was verified. Redirects are followed a few hops,
//! each hop checked again against the [`UrlPolicy`].

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::digest::Sha256Digest;
use crate::policy::UrlPolicy;

/// The largest tool accepted; a bigger download is cut off, not buffered.
const MAX_TOOL_BYTES: u64 = 512 << 20;
/// A whole download, from connect to last byte.
const TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;
/// How many leading bytes of a wrong download to show, to tell an error page from a tool.
const PREVIEW_BYTES: usize = 64;

/// Why a tool could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "checksum mismatch for {url}: expected {expected}, got {actual} \
         ({size} bytes, content type {content_type}, first bytes {preview:?})"
    )]
    Mismatch {
        url: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
        size: u64,
        content_type: String,
        preview: String,
    },
    #[error("failed to download {url}: the server answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("failed to download {url}: the server sent an HTML page, not a tool")]
    HtmlPage { url: String },
    #[error("failed to download {url}: larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("failed to download {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("failed to write the tool to {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A verified tool on disk.
#[derive(Debug, Clone)]
pub struct FetchedTool {
    pub path: PathBuf,
    pub digest: Sha256Digest,
    pub size: u64,
}

/// Downloads tools for runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
}

impl Fetcher {
    /// A fetcher whose redirects obey `policy`.
    pub fn new(policy: UrlPolicy) -> Self {
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match redirect_allowed(&policy, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(reason) => attempt.error(reason),
            }
        });
        let client = reqwest::Client::builder()
            .user_agent(concat!("headless-bridge/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect)
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TOTAL_TIMEOUT)
            .build()
            .expect("a client with static settings builds");
        Self { client }
    }

    /// Downloads `url` to `dest`, which exists afterwards only if its sha256 is `expected`.
    /// The file is made executable.
    pub async fn fetch(
        &self,
        url: &Url,
        expected: &Sha256Digest,
        dest: &Path,
    ) -> Result<FetchedTool, FetchError> {
        let shown = url.as_str().to_owned();
        let network = |e: reqwest::Error| FetchError::Network {
            url: shown.clone(),
            reason: error_chain(&e),
        };
        let response = self.client.get(url.clone()).send().await.map_err(network)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: shown,
                status: status.as_u16(),
            });
        }
        let content_type = header_text(&response, reqwest::header::CONTENT_TYPE);
        if content_type.starts_with("text/html") {
            return Err(FetchError::HtmlPage { url: shown });
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_TOOL_BYTES)
        {
            return Err(FetchError::TooLarge {
                url: shown,
                limit: MAX_TOOL_BYTES,
            });
        }

        let partial = dest.with_extension("partial");
        let io = |source| FetchError::Io {
            path: partial.clone(),
            source,
        };
        let mut file = std::fs::File::create(&partial).map_err(io)?;
        let mut hasher = Sha256::new();
        let (mut size, mut preview) = (0u64, Vec::new());
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(network)?;
            size += chunk.len() as u64;
            if size > MAX_TOOL_BYTES {
                drop(file);
                let _ = std::fs::remove_file(&partial);
                return Err(FetchError::TooLarge {
                    url: shown,
                    limit: MAX_TOOL_BYTES,
                });
            }
            let room = PREVIEW_BYTES.saturating_sub(preview.len()).min(chunk.len());
            preview.extend_from_slice(&chunk[..room]);
            hasher.update(&chunk);
            file.write_all(&chunk).map_err(io)?;
        }

        let actual = Sha256Digest::from_hasher(hasher);
        if &actual != expected {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            let preview = String::from_utf8_lossy(&preview).into_owned();
            return Err(FetchError::Mismatch {
                url: shown,
                expected: expected.clone(),
                actual,
                size,
                content_type,
                preview,
            });
        }
        file.sync_all().map_err(io)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o755))
            .map_err(io)?;
        drop(file);
        std::fs::rename(&partial, dest).map_err(io)?;
        Ok(FetchedTool {
            path: dest.to_owned(),
            digest: actual,
            size,
        })
    }
}

/// The policy check for a redirect target. It runs inside the HTTP client's synchronous
/// redirect hook, so a host name is resolved with the blocking resolver.
fn redirect_allowed(policy: &UrlPolicy, url: &Url) -> Result<(), String> {
    policy
        .check_syntax(url.as_str())
        .map_err(|e| format!("redirect to a URL that {e}"))?;
    if policy.allows_any_address(url) {
        return Ok(());
    }
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|_| format!("redirect to host `{host}`, which did not resolve"))?;
    for addr in addrs {
        if !crate::policy::is_public(addr.ip()) {
            return Err(format!(
                "redirect to the non-public address {} of `{host}`",
                addr.ip()
            ));
        }
    }
    Ok(())
}

fn header_text(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned()
}

/// The error and its causes in one line, as reqwest's top-level message alone is vague.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
