//! `/openapi.json` against the live router: the document and the routes must agree.
//!
//! The router and the document are built from one table (`api::route_table`), but a route
//! can still be added to the router beside it, undocumented (the session attach route once
//! was). So both directions are checked: on a live bridge, every documented operation is
//! answered by a handler (never by the router's own 404 or 405), every undocumented method of
//! a documented path gets the router's 405, and a path the document does not list gets the
//! router's 404; and every route the router itself holds, with each of its methods, is in the
//! document.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use reqwest::Method;
use serde_json::Value;

use crate::support::{BridgeBuilder, Model, TOKEN};
use testkit::model::Behavior;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The `code` of a JSON error body, if the answer is one.
async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, code)
}

#[tokio::test]
async fn every_documented_operation_is_served_and_nothing_else() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;

    // The document needs no token.
    let response = bridge
        .client
        .get(format!("{}/openapi.json", bridge.url))
        .send()
        .await
        .expect("the bridge answers");
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("the document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 11, "{:?}", paths.keys());

    let unknown_run = "0193aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee";
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", unknown_run)
            .replace("{path}", "reports/summary.md");
        for method in METHODS {
            let response = bridge
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    format!("{}{concrete}", bridge.url),
                )
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body("{}")
                .send()
                .await
                .expect("the bridge answers");
            let (status, code) = error_code(response).await;
            if item.get(method).is_some() {
                assert!(
                    !(status == 404 && code == "not_found") && status != 405,
                    "{method} {path} is documented but not served ({status} {code})"
                );
            } else {
                assert_eq!(
                    (status, code.as_str()),
                    (405, "method_not_allowed"),
                    "{method} {path} is served but not documented"
                );
            }
        }
    }

    let (status, code) = error_code(
        bridge
            .client
            .get(format!("{}/v1/undocumented", bridge.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the bridge answers"),
    )
    .await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    bridge.stop().await;
}

#[tokio::test]
async fn the_document_lists_every_error_code_the_api_uses() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;
    let (status, doc) = bridge.get("/openapi.json").await;
    assert_eq!(status, 200);
    let codes: Vec<&str> =
        doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
            .as_array()
            .expect("an enum of codes")
            .iter()
            .filter_map(Value::as_str)
            .collect();
    assert_eq!(codes, headless_bridge::api::ERROR_CODES);
    for code in [
        "run_not_found",
        "invalid_checksum_format",
        "url_not_allowed",
        "queue_full",
    ] {
        assert!(codes.contains(&code), "{code}");
    }
    bridge.stop().await;
}

/// The routes the router serves, each with its methods (without the HEAD axum adds to every
/// GET). axum has no API that lists them, but its `Debug` output names each route's path
/// (`RouteId(n): "/path"`) and the `Allow` header its method router answers a wrong method
/// with (`RouteId(n): MethodRouter(... allow_header: Bytes(b"GET,HEAD") })`). A route that
/// cannot be read so fails the test rather than go unchecked.
fn served_routes(router: &axum::Router) -> BTreeMap<String, BTreeSet<String>> {
    let text = format!("{router:?}");
    // The fallback router serves every path the others do not; it is the router's 404.
    let (routes, _fallback) = text
        .split_once("fallback_router:")
        .expect("the router's Debug output names its fallback router");
    let allow = Regex::new(r#"RouteId\((\d+)\): MethodRouter\(MethodRouter \{[^}]*?allow_header: Bytes\(b"([A-Z,]+)"\)"#)
        .expect("a valid pattern");
    let path = Regex::new(r#"RouteId\((\d+)\): "([^"]+)""#).expect("a valid pattern");
    let methods: BTreeMap<&str, BTreeSet<String>> = allow
        .captures_iter(routes)
        .map(|c| {
            let id = c.get(1).unwrap().as_str();
            let methods = c[2]
                .split(',')
                .filter(|m| *m != "HEAD")
                .map(str::to_lowercase)
                .collect();
            (id, methods)
        })
        .collect();
    path.captures_iter(routes)
        .map(|c| {
            let id = c.get(1).unwrap().as_str();
            let served = methods
                .get(id)
                .unwrap_or_else(|| panic!("no methods read for {}: {routes}", &c[2]))
                .clone();
            (c[2].to_owned(), served)
        })
        .collect()
}

/// The other direction of `every_documented_operation_is_served_and_nothing_else`, which can
/// only try the paths the document names: every route the router serves, with every method,
/// is in the document, but for the Job workers' internal routes.
#[tokio::test]
async fn every_route_the_router_serves_is_in_the_document() {
    let (bridge, _data_dir) = BridgeBuilder::new().open().await;
    let served = served_routes(&headless_bridge::api::router(bridge.state));
    let doc = headless_bridge::api::openapi::document();
    let paths = doc["paths"].as_object().expect("paths");
    assert!(
        served.len() >= paths.len(),
        "only {} routes read from the router: {served:?}",
        served.len()
    );

    let internal = [
        headless_bridge::k8s::report::REPORT_ROUTE,
        headless_bridge::k8s::report::ARTIFACT_ROUTE,
    ];
    let mut undocumented = Vec::new();
    for (path, methods) in &served {
        if internal.contains(&path.as_str()) {
            continue;
        }
        let item = &doc["paths"][headless_bridge::api::openapi::openapi_path(path)];
        for method in methods {
            if item.get(method).is_none() {
                undocumented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert_eq!(
        undocumented,
        Vec::<String>::new(),
        "served but not documented"
    );
}
