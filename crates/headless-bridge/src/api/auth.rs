//! Bearer-token authentication for every route but `/health`.
//!
//! Tokens are compared through their SHA-256 digests in constant time, so neither a token's
//! content nor its length leaks through response timing, and every configured token is
//! compared whatever the outcome of the others.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
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
    if state.token_digests.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(token) if token_matches(&state.token_digests, token) => next.run(request).await,
        _ => ApiError::unauthorized().into_response(),
    }
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
    fn only_a_configured_token_matches() {
        let known = digests(&["first-token-0123456".into(), "second-token-012345".into()]);
        assert!(token_matches(&known, "second-token-012345"));
        assert!(!token_matches(&known, "second-token-01234"));
        assert!(!token_matches(&known, ""));
    }
}
