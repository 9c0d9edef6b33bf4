//! Reading request bodies: a JSON object, read within a size limit, and its fields checked one
//! by one so each problem gets its own code and a message naming the field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use serde_json::{Map, Value};

use super::error::ApiError;
use crate::digest::Sha256Digest;

/// The largest request body accepted. A prompt or failure report is text, and 1 MiB of it is
/// more than any model context the CLIs take.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A request body that is a JSON object.
#[derive(Debug)]
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !content_type.is_some_and(is_json) {
            let given = content_type.unwrap_or("none");
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "send the body as JSON with `Content-Type: application/json` (got: {given})"
                ),
            ));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    let message = format!("the body is larger than {MAX_BODY_BYTES} bytes");
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
                } else {
                    ApiError::bad_request(
                        "invalid_body",
                        format!("failed to read the body: {rejection}"),
                    )
                }
            })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::bad_request(
                "invalid_json",
                "the body must be a JSON object",
            )),
            Err(e) => Err(ApiError::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )),
        }
    }
}

/// `application/json` or a `+json` type, in any case, with any parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl JsonObject {
    /// A required non-empty string field of at most `max_len` bytes.
    pub fn string(&self, field: &str, max_len: usize, what: &str) -> Result<String, ApiError> {
        self.optional_string(field, max_len)?.ok_or_else(|| {
            ApiError::bad_request("missing_field", format!("`{field}` is required: {what}"))
        })
    }

    /// An optional string field; present but empty or too long is an error.
    pub fn optional_string(&self, field: &str, max_len: usize) -> Result<Option<String>, ApiError> {
        optional_string(&self.0, field, max_len)
    }

    /// An optional whole number field.
    pub fn optional_u64(&self, field: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_field",
                    format!("`{field}` must be a positive whole number"),
                )
            }),
        }
    }
}

/// Refuses a field of `object` that is not in `allowed`, naming it and listing those there
/// are: a misspelt optional field would otherwise be ignored without a word. `within` names
/// the object when it is nested in the body (`repo`, `tools[0]`).
pub fn only_fields(
    object: &Map<String, Value>,
    within: Option<&str>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) else {
        return Ok(());
    };
    let (field, of) = match within {
        Some(parent) => (format!("{parent}.{unknown}"), format!("`{parent}`")),
        None => (unknown.clone(), "this request".to_owned()),
    };
    Err(ApiError::bad_request(
        "unknown_field",
        format!(
            "`{field}` is not a field of {of}; these are: {}",
            allowed.join(", ")
        ),
    ))
}

/// Reads an optional string field of `object`.
pub fn optional_string(
    object: &Map<String, Value>,
    field: &str,
    max_len: usize,
) -> Result<Option<String>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(ApiError::bad_request(
            "invalid_field",
            format!("`{field}` is empty"),
        )),
        Some(Value::String(s)) if s.len() > max_len => Err(ApiError::bad_request(
            "invalid_field",
            format!("`{field}` is longer than {max_len} bytes"),
        )),
        Some(Value::String(s)) if s.contains('\0') => Err(ApiError::bad_request(
            "invalid_field",
            format!("`{field}` contains a NUL character, which no command line can carry"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(
            "invalid_field",
            format!("`{field}` must be a string"),
        )),
    }
}

/// Parses a digest field, with a message that shows the accepted forms.
pub fn digest(field: &str, raw: &str) -> Result<Sha256Digest, ApiError> {
    raw.parse().map_err(|e| {
        ApiError::bad_request(
            "invalid_checksum_format",
            format!("`{field}` is not a sha256 digest ({e}); write it as sha256:<64 hex> or as the 64 hex characters alone"),
        )
    })
}

/// The URL fields of a request whose syntax passed, waiting for the host checks, which may
/// resolve names. Those run after every other check of the request, so a request hears of
/// its syntax errors first, whatever the DNS says and without waiting for it.
#[derive(Debug, Default)]
pub struct UrlChecks(Vec<(String, url::Url)>);

impl UrlChecks {
    /// Checks the syntax of the URL field `field` now, and its host in [`UrlChecks::hosts`].
    pub fn syntax(
        &mut self,
        policy: &crate::policy::UrlPolicy,
        field: &str,
        raw: &str,
    ) -> Result<(), ApiError> {
        self.add(field, policy.check_syntax(raw))
    }

    /// Like [`UrlChecks::syntax`], for a repository URL (which may use ssh).
    pub fn repo_syntax(
        &mut self,
        policy: &crate::policy::UrlPolicy,
        field: &str,
        raw: &str,
    ) -> Result<(), ApiError> {
        self.add(field, policy.check_repo_syntax(raw))
    }

    fn add(
        &mut self,
        field: &str,
        checked: Result<url::Url, crate::policy::UrlError>,
    ) -> Result<(), ApiError> {
        let url = checked.map_err(|e| url_error(field, &e))?;
        self.0.push((field.to_owned(), url));
        Ok(())
    }

    /// The host checks, in the order the fields were read.
    pub async fn hosts(self, policy: &crate::policy::UrlPolicy) -> Result<(), ApiError> {
        for (field, url) in self.0 {
            policy
                .check_addresses(&url)
                .await
                .map_err(|e| url_error(&field, &e))?;
        }
        Ok(())
    }
}

fn url_error(field: &str, err: &crate::policy::UrlError) -> ApiError {
    ApiError::bad_request(err.code(), format!("`{field}` {err}"))
}

/// Checks a URL field against the policy, with the field's name in the message.
pub async fn url(
    policy: &crate::policy::UrlPolicy,
    field: &str,
    raw: &str,
) -> Result<url::Url, ApiError> {
    policy.check(raw).await.map_err(|e| url_error(field, &e))
}

/// A query string, refused with a JSON error when it does not parse.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(query)) => Ok(Self(query)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_query",
                format!("the query string is invalid: {}", rejection.body_text()),
            )),
        }
    }
}

/// Path parameters, refused with a JSON error when they do not decode (percent-encoded bytes
/// that are not UTF-8, say), instead of axum's plain-text rejection.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(params)) => Ok(Self(params)),
            Err(rejection) => Err(ApiError::bad_request(
                "invalid_path",
                format!("the path is invalid: {}", rejection.body_text()),
            )),
        }
    }
}
