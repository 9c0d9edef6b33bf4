//! `/openapi.json` against the live router: the document and the routes must agree.
//!
//! The router and the document are built from one table (`api::route_table`), so a route
//! cannot be added to one without the other; this test checks the result from outside, on
//! a live bridge: every documented operation is answered by a handler (never by the router's
//! own 404 or 405), every undocumented method of a documented path gets the router's 405,
//! and a path the document does not list gets the router's 404.

use reqwest::Method;
use serde_json::Value;

use crate::support::{Model, TOKEN};
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
