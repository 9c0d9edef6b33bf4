//! SHA-256 digests as they appear on the wire and on disk.
//!
//! Requests name a tool's expected digest either as `sha256:<64 hex>` or as bare hex, in either
//! case, optionally followed by a file name as a line of `sha256sum` output has it
//! (`<hex>  ak` or `<hex> *ak`), since that is what release pages publish and people paste.
//! [`Sha256Digest`] accepts those, keeps the canonical lowercase form, and is what the
//! fetcher compares a download against.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest, stored as 64 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sha256Digest(String);

/// Why a string is not a SHA-256 digest; the message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("unsupported digest algorithm `{0}`: only sha256 is accepted")]
    Algorithm(String),
    #[error("a sha256 digest has 64 hex characters, this one has {0}")]
    Length(usize),
    #[error("a sha256 digest holds only hex characters 0-9 and a-f")]
    NotHex,
}

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// Finishes an incremental hash.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hex::encode(hasher.finalize()))
    }

    /// The 64 lowercase hex characters.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = strip_file_name(raw);
        let hex_part = match raw.split_once(':') {
            Some((algorithm, rest)) if algorithm.eq_ignore_ascii_case("sha256") => rest,
            Some((algorithm, _)) => return Err(DigestError::Algorithm(algorithm.to_owned())),
            None => raw,
        };
        if hex_part.len() != 64 {
            return Err(DigestError::Length(hex_part.chars().count()));
        }
        if !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestError::NotHex);
        }
        Ok(Self(hex_part.to_ascii_lowercase()))
    }
}

/// `raw` without a trailing `sha256sum` file name: two spaces, or a space and '*', then a name.
fn strip_file_name(raw: &str) -> &str {
    match raw.find("  ").or_else(|| raw.find(" *")) {
        Some(at) if at > 0 && !raw[at + 2..].trim().is_empty() => &raw[..at],
        _ => raw,
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[rstest]
    #[case::bare_lower(HELLO)]
    #[case::bare_upper(&HELLO.to_uppercase())]
    #[case::prefixed(&format!("sha256:{HELLO}"))]
    #[case::prefixed_upper(&format!("SHA256:{}", HELLO.to_uppercase()))]
    #[case::sha256sum_text(&format!("{HELLO}  ak-linux-amd64"))]
    #[case::sha256sum_binary(&format!("{HELLO} *ak.tar.gz"))]
    #[case::prefixed_with_name(&format!("sha256:{HELLO}  ak"))]
    fn accepts_both_spellings_in_either_case(#[case] raw: &str) {
        let digest: Sha256Digest = raw.parse().expect("valid digest");
        assert_eq!(digest, Sha256Digest::of(b"hello"));
        assert_eq!(digest.to_string(), format!("sha256:{HELLO}"));
    }

    #[rstest]
    #[case::empty("", DigestError::Length(0))]
    #[case::short("abc123", DigestError::Length(6))]
    #[case::long(&format!("{HELLO}0"), DigestError::Length(65))]
    #[case::not_hex(&format!("{}z", &HELLO[..63]), DigestError::NotHex)]
    #[case::md5(&format!("md5:{HELLO}"), DigestError::Algorithm("md5".into()))]
    #[case::empty_after_prefix("sha256:", DigestError::Length(0))]
    #[case::whitespace(&format!(" {}", &HELLO[..63]), DigestError::NotHex)]
    #[case::sha512(&format!("sha512:{HELLO}{HELLO}"), DigestError::Algorithm("sha512".into()))]
    #[case::sha1("sha1:aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", DigestError::Algorithm("sha1".into()))]
    #[case::sha512_length_bare(&format!("{HELLO}{HELLO}"), DigestError::Length(128))]
    #[case::name_without_digest("  ak", DigestError::Length(4))]
    #[case::one_space_name(&format!("{HELLO} ak"), DigestError::Length(67))]
    #[case::truncated_with_name(&format!("{}  ak", &HELLO[..40]), DigestError::Length(40))]
    fn rejects_anything_else(#[case] raw: &str, #[case] expected: DigestError) {
        assert_eq!(raw.parse::<Sha256Digest>(), Err(expected));
    }
}
