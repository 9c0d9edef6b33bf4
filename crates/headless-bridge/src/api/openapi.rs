//! `GET /openapi.json`: the API's OpenAPI 3.1 document, generated from the code.
//!
//! The routes and their documentation come from one table ([`super::routes`]): each handler's
//! `#[utoipa::path]` gives both its axum route and its operation in the document, so a route
//! cannot be served without being documented, nor documented without being served (the Job
//! workers' internal routes, which are no part of the API, are the one exception). This module
//! adds what is common to every operation (bearer authentication, the error answers every route
//! can give) and turns axum's wildcard syntax into OpenAPI's.
//!
//! The document is public, like `/health`: it describes the API's shape, which the README
//! publishes anyway, and a client or tool needs it before it has a token. It holds nothing
//! about this bridge's configuration.

use std::sync::OnceLock;

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, ResponseBuilder,
};

use super::error::ErrorBody;
use crate::run::events::RunEvent;
use utoipa::{PartialSchema as _, ToSchema as _};

/// The name of the bearer security scheme in the document.
const BEARER: &str = "bearer";
/// The name of the attach ticket's security scheme, which only a session's attach takes.
const TICKET: &str = "ticket";

/// The document, built once: it depends on the code alone, never on the configuration.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(finish(super::routes().into_openapi()))
            .expect("the document serializes");
        describe_event_data(&mut doc);
        doc
    })
}

/// An event's `data` in `GET /v1/runs/{id}/events` is a `RunEvent` as JSON: JSON Schema's
/// `contentSchema`, which utoipa's model cannot express, so it is added to the JSON.
fn describe_event_data(doc: &mut Value) {
    let data = &mut doc["components"]["schemas"]["RunEventSse"]["properties"]["data"];
    data["contentSchema"] = json!({ "$ref": "#/components/schemas/RunEvent" });
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta",
    summary = "This document",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)),
    security(()),
)]
pub async fn serve() -> Response {
    let mut response = Json(document()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// Completes the document the routes produced: metadata, the security scheme and the answers
/// every operation shares.
fn finish(routes: OpenApi) -> OpenApi {
    let mut doc = OpenApiBuilder::from(routes)
        .info(
            InfoBuilder::new()
                .title("headless-bridge")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Runs developer CLIs headless behind an HTTP API. Every operation but \
                     `/health`, `/openapi.json` and the runs page's files needs \
                     `Authorization: Bearer <token>` (a session's attach takes a single-use \
                     `?ticket=` instead). Errors are `{\"error\": {\"code\", \"message\"}}` \
                     with a stable `code`.",
                ))
                .build(),
        )
        .tags(Some([
            tag("runs", "runs of any adapter"),
            tag("adapters", "the CLIs this bridge offers"),
            tag(
                "legacy",
                "the original service's contract, kept byte for byte",
            ),
            tag("mcp", "the Model Context Protocol server (streamable HTTP)"),
            tag("health", "liveness and the deep check"),
            tag("meta", "this document"),
        ]))
        .build();
    let components = doc
        .components
        .get_or_insert_with(|| ComponentsBuilder::new().build());
    // Named by the events' documentation (as `contentSchema`), not by an annotation.
    let (name, schema) = (RunEvent::name(), RunEvent::schema());
    components.schemas.insert(name.into_owned(), schema);
    let mut nested = Vec::new();
    RunEvent::schemas(&mut nested);
    components.schemas.extend(nested);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.add_security_scheme(
        TICKET,
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "ticket",
            "a single-use ticket from `POST /v1/sessions/{id}/attach-ticket`, for clients \
             that cannot send headers on a WebSocket; it names one session and expires after \
             60 s",
        ))),
    );
    let protected = SecurityRequirement::new(BEARER, Vec::<String>::new());
    doc.security = Some(vec![protected]);

    doc.paths.paths = std::mem::take(&mut doc.paths.paths)
        .into_iter()
        .map(|(path, mut item)| {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                add_common_answers(operation);
            }
            (openapi_path(&path), item)
        })
        .collect();
    doc
}

fn tag(name: &str, description: &str) -> utoipa::openapi::tag::Tag {
    TagBuilder::new()
        .name(name)
        .description(Some(description))
        .build()
}

/// The answers any operation can give besides its own: a 400 for a malformed path or query,
/// a 500 for our own fault, and for protected operations 401 (no valid token) and 403
/// (without configured tokens: a request for a non-loopback host, or from a foreign origin).
fn add_common_answers(operation: &mut Operation) {
    let public = operation
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(is_empty_requirement));
    let mut common = vec![
        ("400", "a malformed request: see `code`"),
        (
            "500",
            "`internal_error`: the bridge's own fault; its log says why",
        ),
    ];
    // Every JSON body passes the same limit and content-type check before its handler.
    if operation.request_body.is_some() {
        common.push(("413", "`body_too_large`"));
        common.push(("415", "`unsupported_media_type`: the body must be JSON"));
    }
    if !public {
        common.push(("401", "`unauthorized`: no valid bearer token"));
        common.push((
            "403",
            "`host_not_allowed` or `origin_not_allowed`: a bridge without tokens serves only loopback",
        ));
    }
    for (status, description) in common {
        if operation.responses.responses.contains_key(status) {
            continue;
        }
        let response = ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(
                        <ErrorBody as utoipa::ToSchema>::name(),
                    )))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .insert(status.to_owned(), response.into());
    }
}

/// `security(())` in an annotation: the operation needs no token.
fn is_empty_requirement(requirement: &SecurityRequirement) -> bool {
    serde_json::to_value(requirement).is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
}

/// axum's catch-all segment `{*name}` is OpenAPI's `{name}`.
pub fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_error_code() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let codes = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"];
        let codes: Vec<&str> = codes
            .as_array()
            .expect("codes are an enum")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        assert_eq!(codes, super::super::error::ERROR_CODES);
    }

    #[test]
    fn protected_operations_need_the_token_and_public_ones_do_not() {
        let doc = document();
        assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
        assert_eq!(
            doc["paths"]["/health"]["get"]["security"],
            serde_json::json!([{}])
        );
        assert!(doc["paths"]["/health"]["get"]["responses"]["401"].is_null());
        let get_run = &doc["paths"]["/v1/runs/{id}"]["get"];
        assert!(get_run["security"].is_null(), "inherits the document's");
        assert!(get_run["responses"]["401"].is_object());
    }

    #[test]
    fn attach_is_a_websocket_handshake_with_the_token_or_a_ticket() {
        let doc = document();
        let attach = &doc["paths"]["/v1/sessions/{id}/attach"]["get"];
        let statuses: Vec<&str> = attach["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(String::as_str)
            .collect();
        for status in ["101", "401", "403", "404", "409", "426"] {
            assert!(statuses.contains(&status), "{status} in {statuses:?}");
        }
        assert_eq!(
            attach["security"],
            serde_json::json!([{ "bearer": [] }, { "ticket": [] }])
        );
        let ticket = &doc["components"]["securitySchemes"]["ticket"];
        assert_eq!(
            (&ticket["type"], &ticket["in"]),
            (&json!("apiKey"), &json!("query"))
        );
        let headers: Vec<&str> = attach["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["in"] == "header" && p["required"] == true)
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            headers,
            [
                "Connection",
                "Upgrade",
                "Sec-WebSocket-Version",
                "Sec-WebSocket-Key"
            ]
        );
    }

    #[test]
    fn wildcard_segments_become_plain_parameters() {
        assert_eq!(
            openapi_path("/v1/runs/{id}/artifacts/{*path}"),
            "/v1/runs/{id}/artifacts/{path}"
        );
    }
}
