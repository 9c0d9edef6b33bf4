//! Keeping secrets out of everything a run reports.
//!
//! A [`Redactor`] knows the secret values of one run (the credential it was given, the bridge's
//! own API tokens) and replaces them wherever they appear. It also masks strings shaped like
//! well-known token formats, for secrets the bridge was never told about (a token a CLI printed
//! from a file in the repository, say).

use std::sync::LazyLock;

use regex::Regex;

/// What a secret becomes in logs, outputs and diffs.
pub const MASK: &str = "[REDACTED]";

/// Values shorter than this are not treated as secrets: masking every "true" or "null" would
/// wreck the text and protect nothing.
const MIN_SECRET_LEN: usize = 8;

/// Token formats worth masking even when nobody told us the value: OpenAI and Anthropic keys,
/// GitHub tokens, JSON Web Tokens, bearer headers.
static TOKEN_SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"sk-[A-Za-z0-9_\-]{16,}",
        r"|gh[pousr]_[A-Za-z0-9]{20,}",
        r"|github_pat_[A-Za-z0-9_]{20,}",
        r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
        r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{12,}=*",
    ))
    .expect("token pattern is a valid regex")
});

/// Credentials in the proxy settings the bridge passes to CLIs (`http://user:pass@proxy`),
/// which would otherwise show up in any command's `env` output.
pub fn proxy_secrets() -> Vec<String> {
    const PROXY_VARS: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
    PROXY_VARS
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .filter_map(|value| url::Url::parse(&value).ok())
        .flat_map(|url| {
            [
                url.password().map(str::to_owned),
                Some(url.username().to_owned()),
            ]
        })
        .flatten()
        .filter(|s| !s.is_empty())
        .collect()
}

/// Replaces known secret values and token-shaped strings with [`MASK`].
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for these secret values; short or empty ones are ignored.
    pub fn new<I, S>(secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut redactor = Self::default();
        redactor.extend(secrets);
        redactor
    }

    /// Adds more secret values.
    pub fn extend<I, S>(&mut self, secrets: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.secrets.extend(
            secrets
                .into_iter()
                .map(Into::into)
                .filter(|s| s.trim().len() >= MIN_SECRET_LEN),
        );
        // Longest first, so a secret that contains another is masked whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
    }

    /// `text` with every secret masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        TOKEN_SHAPES.replace_all(&out, MASK).into_owned()
    }

    /// Masks every secret in the strings of `value`, keys included.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(text) => *text = self.redact(text),
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact_json(item)),
            Value::Object(map) => {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, mut item)| {
                        self.redact_json(&mut item);
                        (self.redact(&key), item)
                    })
                    .collect();
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// The length in bytes of the longest end of `text` that begins a known secret without
    /// completing it: a writer of a stream that comes in pieces holds that much back, so a
    /// secret cut between two pieces is still masked whole.
    pub fn partial_secret_suffix(&self, text: &str) -> usize {
        let longest = self.secrets.first().map_or(0, String::len);
        let from = text.len().saturating_sub(longest.saturating_sub(1));
        text.char_indices()
            .map(|(at, _)| at)
            .filter(|at| *at >= from)
            .find(|at| {
                let tail = &text[*at..];
                self.secrets
                    .iter()
                    .any(|secret| secret.len() > tail.len() && secret.starts_with(tail))
            })
            .map_or(0, |at| text.len() - at)
    }

    /// `bytes` with every secret masked: as text when they are UTF-8, else only the known
    /// values, byte for byte (token shapes mean nothing in a binary file).
    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        if let Ok(text) = std::str::from_utf8(bytes) {
            return self.redact(text).into_bytes();
        }
        let mut out = bytes.to_vec();
        for secret in &self.secrets {
            out = replace_bytes(&out, secret.as_bytes(), MASK.as_bytes());
        }
        out
    }
}

fn replace_bytes(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|w| w == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_strings_and_keys_of_json_and_nothing_else() {
        let r = Redactor::new(["hunter2-is-long"]);
        let mut value = serde_json::json!({
            "a": ["x hunter2-is-long y", 12, true, null],
            "hunter2-is-long": {"b": "hunter2-is-long"},
        });
        r.redact_json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "a": ["x [REDACTED] y", 12, true, null],
                "[REDACTED]": {"b": "[REDACTED]"},
            })
        );
    }

    #[test]
    fn masks_known_values_wherever_they_appear() {
        let r = Redactor::new(["hunter2-is-long", "short"]);
        assert_eq!(
            r.redact("pw=hunter2-is-long;x=short"),
            "pw=[REDACTED];x=short"
        );
    }

    #[test]
    fn masks_the_longer_secret_first() {
        let r = Redactor::new(["abcdefgh", "abcdefgh-and-more"]);
        assert_eq!(
            r.redact("abcdefgh-and-more abcdefgh"),
            "[REDACTED] [REDACTED]"
        );
    }

    #[test]
    fn masks_token_shapes_nobody_declared() {
        let r = Redactor::default();
        let text = "key sk-proj-abcdefghijklmnop1234 gh ghp_abcdefghijklmnopqrstuvwxyz \
                    jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig_nature \
                    Authorization: Bearer abcdefghijklmnopqrst";
        let masked = r.redact(text);
        assert!(!masked.contains("sk-proj"), "{masked}");
        assert!(!masked.contains("ghp_"), "{masked}");
        assert!(!masked.contains("eyJ"), "{masked}");
        assert!(!masked.contains("abcdefghijklmnopqrst"), "{masked}");
    }

    #[test]
    fn masks_known_values_in_binary_files() {
        let r = Redactor::new(["hunter2-is-long"]);
        let masked = r.redact_bytes(b"\xff\x00hunter2-is-long\x00");
        assert_eq!(masked, b"\xff\x00[REDACTED]\x00");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let r = Redactor::new(["not-in-the-text"]);
        let text = "ran `cargo test`: 3 passed; skipped tasks in sk-8";
        assert_eq!(r.redact(text), text);
    }
}
