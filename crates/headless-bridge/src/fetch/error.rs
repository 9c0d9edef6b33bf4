//! What can go wrong fetching a tool, with the facts a person needs to tell a wrong hash from
//! a wrong page: the HTTP status, the host that finally answered, the content type, the size
//! and the first bytes. Which failures are worth another try is decided here too.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::digest::Sha256Digest;

/// How many leading bytes of a wrong download to show, to tell an error page from a tool.
pub const PREVIEW_BYTES: usize = 64;

/// What the server said about a download that went wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseFacts {
    /// The HTTP status of the last answer.
    pub status: u16,
    /// The host of the last hop, after redirects.
    pub final_host: String,
    pub content_type: String,
    /// Bytes received (for a resumed download, the whole file).
    pub size: u64,
    /// The first bytes, printable characters kept and the rest escaped.
    pub preview: String,
}

impl ResponseFacts {
    /// Renders `bytes` as readable text, escaping whatever is not printable ASCII.
    pub fn preview_of(bytes: &[u8]) -> String {
        let shown = &bytes[..bytes.len().min(PREVIEW_BYTES)];
        shown.escape_ascii().to_string()
    }
}

impl fmt::Display for ResponseFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HTTP {} from {}, content type {}, {} bytes, first bytes \"{}\"",
            self.status, self.final_host, self.content_type, self.size, self.preview
        )
    }
}

/// Why a tool could not be fetched. URLs are shown without their query, which may hold a
/// signature.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("checksum mismatch for {url}: expected {expected}, got {actual} ({facts})")]
    Mismatch {
        url: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
        facts: Box<ResponseFacts>,
    },
    #[error("failed to download {url}: the server answered with an error ({facts})")]
    Status {
        url: String,
        facts: Box<ResponseFacts>,
    },
    #[error("failed to download {url}: the server sent an HTML page, not a tool ({facts})")]
    HtmlPage {
        url: String,
        facts: Box<ResponseFacts>,
    },
    #[error("failed to download {url}: larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("failed to download {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("failed to download {url}: a redirect was refused: {reason}")]
    Redirect { url: String, reason: String },
    #[error("failed to download {url}: the URL policy refused a connection: {reason}")]
    NotAllowed { url: String, reason: String },
    #[error("failed to download the tool within {}s", .limit.as_secs_f32())]
    TimedOut { limit: Duration },
    #[error("failed to unpack the tool: {0}")]
    Archive(#[from] super::archive::ArchiveError),
    #[error("failed to write {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether the same URL may give a different answer a moment later: network errors,
    /// 5xx and 429. A checksum mismatch never is: the same server sends the same bytes.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Network { .. } => true,
            Self::Status { facts, .. } => facts.status == 429 || facts.status >= 500,
            _ => false,
        }
    }

    /// What the server answered, for the errors that have an answer, as JSON for a run's
    /// `details`.
    pub fn details(&self) -> Option<serde_json::Value> {
        let (url, facts) = match self {
            Self::Mismatch { url, facts, .. }
            | Self::Status { url, facts }
            | Self::HtmlPage { url, facts } => (url, facts),
            _ => return None,
        };
        let mut details = serde_json::json!({
            "url": url,
            "http_status": facts.status,
            "final_host": facts.final_host,
            "content_type": facts.content_type,
            "size": facts.size,
            "first_bytes": facts.preview,
        });
        if let Self::Mismatch {
            expected, actual, ..
        } = self
        {
            details["expected_sha256"] = expected.to_string().into();
            details["actual_sha256"] = actual.to_string().into();
        }
        Some(details)
    }

    /// Whether this is our own disk's fault rather than the download's.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Archive(_))
    }

    /// How telling an error is when several URLs failed: a mismatch says most (someone
    /// served the wrong bytes), then an answer from a server, then a network failure.
    pub(super) fn weight(&self) -> u8 {
        match self {
            Self::Mismatch { .. } => 5,
            Self::Io { .. } | Self::Archive(_) => 4,
            Self::HtmlPage { .. } | Self::TooLarge { .. } => 3,
            Self::Status { .. } | Self::Redirect { .. } | Self::NotAllowed { .. } => 2,
            Self::Network { .. } => 1,
            Self::TimedOut { .. } => 0,
        }
    }
}

/// A URL as it may be shown: no query or fragment, which may carry a signature or token.
pub fn shown_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    if had_query {
        format!("{shown}?…")
    } else {
        shown.to_string()
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::plain("https://h.example/tool", "https://h.example/tool")]
    #[case::signed("https://h.example/t?X-Amz-Signature=secret", "https://h.example/t?…")]
    #[case::fragment("https://h.example/t#frag", "https://h.example/t")]
    fn urls_are_shown_without_their_query(#[case] raw: &str, #[case] shown: &str) {
        assert_eq!(shown_url(&raw.parse().expect("a URL")), shown);
    }

    #[test]
    fn a_preview_escapes_binary_bytes() {
        assert_eq!(
            ResponseFacts::preview_of(b"<html>\x00\x7f"),
            "<html>\\x00\\x7f"
        );
    }

    #[rstest]
    #[case(500, true)]
    #[case(503, true)]
    #[case(429, true)]
    #[case(404, false)]
    #[case(403, false)]
    fn only_server_errors_and_throttling_are_retried(#[case] status: u16, #[case] retry: bool) {
        let err = FetchError::Status {
            url: "u".into(),
            facts: Box::new(ResponseFacts {
                status,
                ..ResponseFacts::default()
            }),
        };
        assert_eq!(err.is_retryable(), retry);
    }
}
