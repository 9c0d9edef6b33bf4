//! Bearer-token authentication for every route but `/health` and `/openapi.json`, which say
//! nothing a caller needs a token to know.
//!
//! Tokens are compared through their SHA-256 digests in constant time, so neither a token's
//! content nor its length leaks through response timing, and every configured token is
//! compared whatever the outcome of the others.

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::AppState;
use super::error::ApiError;

/// Refuses requests without a known bearer token; passes everything when no token is
/// configured (the configuration only allows that on loopback).
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match check(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// The check [`require_token`] makes, for a route that also takes another credential.
pub fn check(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.token_digests.is_empty() {
        return local_only(headers);
    }
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented {
        Some(token) if token_matches(&state.token_digests, token) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110, section 11.1).
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Without tokens the API is open to anything that can reach loopback, which includes web
/// pages in the operator's browser: a page can POST without a preflight, and a DNS-rebinding
/// page can read the answer. So an open API serves only requests that name a loopback host
/// and carry no foreign `Origin`.
fn local_only(headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !is_loopback_authority(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "without API tokens the bridge only answers requests for a loopback host; configure HB_API_TOKEN",
        ));
    }
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let foreign =
        origin.is_some_and(|o| !is_loopback_authority(o.split("://").nth(1).unwrap_or(o)));
    if foreign {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "browser requests from other origins are refused; configure HB_API_TOKEN to use the API remotely",
        ));
    }
    Ok(())
}

/// Whether `host[:port]` names a loopback host.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => {
            host
        }
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// SHA-256 digests of the configured tokens.
pub fn digests(tokens: &[String]) -> Vec<[u8; 32]> {
    tokens.iter().map(|t| digest(t)).collect()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn token_matches(known: &[[u8; 32]], presented: &str) -> bool {
    let presented = digest(presented);
    known
        .iter()
        .fold(subtle::Choice::from(0), |found, k| {
            found | k.ct_eq(&presented)
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }

    #[test]
    fn only_loopback_hosts_reach_an_open_api() {
        for host in ["127.0.0.1:8000", "localhost", "[::1]:80", "LOCALHOST:1"] {
            assert!(is_loopback_authority(host), "{host}");
        }
        for host in [
            "rebind.evil.example:8000",
            "10.0.0.1",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback_authority(host), "{host}");
        }
    }

    #[test]
    fn only_a_configured_token_matches() {
        let known = digests(&["first-token-0123456".into(), "second-token-012345".into()]);
        assert!(token_matches(&known, "second-token-012345"));
        assert!(!token_matches(&known, "second-token-01234"));
        assert!(!token_matches(&known, ""));
    }
}
