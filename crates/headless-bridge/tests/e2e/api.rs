//! Authentication and request validation: every bad request is refused with a 4xx and a stable
//! code before any work starts.

use serde_json::{Value, json};

use crate::support::{BridgeBuilder, TOKEN, TestBridge};

const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

fn legacy(overrides: &[(&str, Value)]) -> Value {
    let mut body = json!({
        "contract_id": "c-1",
        "repo_url": "http://127.0.0.1:9/repo.git",
        "failure_details": "tests fail",
        "ak_url": "http://127.0.0.1:9/ak",
        "ak_hash": HASH,
    });
    for (key, value) in overrides {
        if value.is_null() {
            body.as_object_mut().unwrap().remove(*key);
        } else {
            body[*key] = value.clone();
        }
    }
    body
}

async fn assert_no_runs(bridge: &TestBridge) {
    let (_, list) = bridge.get("/v1/runs").await;
    assert_eq!(
        list["runs"],
        json!([]),
        "a refused request must not start a run"
    );
}

#[tokio::test]
async fn requests_without_the_right_token_are_refused() {
    let bridge = BridgeBuilder::new().start().await;
    for (path, header) in [
        ("/v1/runs", None),
        ("/v1/runs", Some("Bearer wrong-token-0123456789")),
        ("/run_codex_session", Some("Basic abc")),
    ] {
        let mut request = bridge
            .client
            .post(format!("{}{path}", bridge.url))
            .json(&json!({}));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{path} {header:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let ok = bridge
        .client
        .get(format!("{}/v1/runs", bridge.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let health = bridge
        .client
        .get(format!("{}/health", bridge.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "liveness needs no token");
}

#[tokio::test]
async fn the_original_api_refuses_bad_requests_with_a_code() {
    let bridge = BridgeBuilder::new().start().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing contract_id",
            legacy(&[("contract_id", Value::Null)]),
            "missing_field",
        ),
        (
            "missing repo_url",
            legacy(&[("repo_url", Value::Null)]),
            "missing_field",
        ),
        (
            "missing failure_details",
            legacy(&[("failure_details", Value::Null)]),
            "missing_field",
        ),
        (
            "missing ak_url",
            legacy(&[("ak_url", Value::Null)]),
            "missing_field",
        ),
        (
            "missing ak_hash",
            legacy(&[("ak_hash", Value::Null)]),
            "missing_field",
        ),
        (
            "empty failure_details",
            legacy(&[("failure_details", json!("  "))]),
            "invalid_field",
        ),
        (
            "numeric contract_id",
            legacy(&[("contract_id", json!(42))]),
            "invalid_field",
        ),
        (
            "short hash",
            legacy(&[("ak_hash", json!("abc123"))]),
            "invalid_checksum_format",
        ),
        (
            "md5 prefix",
            legacy(&[("ak_hash", json!(format!("md5:{HASH}")))]),
            "invalid_checksum_format",
        ),
        (
            "non-hex hash",
            legacy(&[("ak_hash", json!(format!("{}g", &HASH[..63])))]),
            "invalid_checksum_format",
        ),
        (
            "hash with space",
            legacy(&[("ak_hash", json!(format!("sha256: {HASH}")))]),
            "invalid_checksum_format",
        ),
        (
            "option-like repo",
            legacy(&[("repo_url", json!("--upload-pack=touch /tmp/pwned"))]),
            "invalid_url",
        ),
        (
            "file repo",
            legacy(&[("repo_url", json!("file:///etc"))]),
            "invalid_url",
        ),
        (
            "ext transport",
            legacy(&[("repo_url", json!("ext::sh -c id"))]),
            "invalid_url",
        ),
        (
            "plain http public",
            legacy(&[("ak_url", json!("http://93.184.215.14/ak"))]),
            "url_not_allowed",
        ),
        (
            "metadata address",
            legacy(&[("ak_url", json!("https://169.254.169.254/latest"))]),
            "url_not_allowed",
        ),
        (
            "private address",
            legacy(&[("repo_url", json!("https://10.0.0.7/r.git"))]),
            "url_not_allowed",
        ),
        (
            "loopback not allowed",
            legacy(&[("repo_url", json!("https://127.0.0.2/r.git"))]),
            "url_not_allowed",
        ),
        (
            "credentials in url",
            legacy(&[("repo_url", json!("https://x:y@93.184.215.14/r.git"))]),
            "url_has_credentials",
        ),
    ];
    for (name, body, code) in cases {
        let (status, answer) = bridge.post("/run_codex_session", &body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{name}: {answer}");
        assert!(
            !answer["error"]["message"].as_str().unwrap().is_empty(),
            "{name}"
        );
    }
    assert_no_runs(&bridge).await;
}

#[tokio::test]
async fn the_run_api_refuses_bad_requests_with_a_code() {
    let bridge = BridgeBuilder::new().start().await;
    let tool =
        |name: &str, sha: &str| json!({"name": name, "url": "http://127.0.0.1:9/t", "sha256": sha});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no adapter", json!({"prompt": "p"}), "missing_field"),
        (
            "unknown adapter",
            json!({"adapter": "cobol", "prompt": "p"}),
            "unknown_adapter",
        ),
        (
            "empty prompt",
            json!({"adapter": "codex", "prompt": ""}),
            "invalid_field",
        ),
        (
            "zero timeout",
            json!({"adapter": "codex", "prompt": "p", "timeout_s": 0}),
            "invalid_timeout",
        ),
        (
            "huge timeout",
            json!({"adapter": "codex", "prompt": "p", "timeout_s": 99999}),
            "invalid_timeout",
        ),
        (
            "text timeout",
            json!({"adapter": "codex", "prompt": "p", "timeout_s": "10"}),
            "invalid_field",
        ),
        (
            "repo without url",
            json!({"adapter": "codex", "prompt": "p", "repo": {}}),
            "missing_field",
        ),
        (
            "option-like ref",
            json!({"adapter": "codex", "prompt": "p", "repo": {"url": "http://127.0.0.1:9/r", "ref": "--orphan"}}),
            "invalid_ref",
        ),
        (
            "bad ref",
            json!({"adapter": "codex", "prompt": "p", "repo": {"url": "http://127.0.0.1:9/r", "ref": "a..b"}}),
            "invalid_ref",
        ),
        (
            "tool path name",
            json!({"adapter": "codex", "prompt": "p", "tools": [tool("../ak", HASH)]}),
            "invalid_tool_name",
        ),
        (
            "tool dash name",
            json!({"adapter": "codex", "prompt": "p", "tools": [tool("-ak", HASH)]}),
            "invalid_tool_name",
        ),
        (
            "duplicate tool",
            json!({"adapter": "codex", "prompt": "p", "tools": [tool("ak", HASH), tool("ak", HASH)]}),
            "invalid_tool_name",
        ),
        (
            "tool bad hash",
            json!({"adapter": "codex", "prompt": "p", "tools": [tool("ak", "nope")]}),
            "invalid_checksum_format",
        ),
        (
            "tools not a list",
            json!({"adapter": "codex", "prompt": "p", "tools": "ak"}),
            "invalid_field",
        ),
    ];
    for (name, body, code) in cases {
        let (status, answer) = bridge.post("/v1/runs", &body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{name}: {answer}");
    }
    assert_no_runs(&bridge).await;
}

/// Regression: the host of a URL was resolved before the rest of the request was read, so a
/// request with a public host and a malformed digest or ref was refused for the DNS answer
/// (`url_host_unresolvable` off-line) instead of its own mistake.
#[tokio::test]
async fn syntax_errors_are_reported_before_any_host_lookup() {
    let bridge = BridgeBuilder::new().start().await;
    let cases = [
        (
            json!({"adapter": "codex", "prompt": "p",
                   "tools": [{"name": "ak", "url": "https://tools.example.com/ak", "sha256": "abc"}]}),
            "invalid_checksum_format",
        ),
        (
            json!({"adapter": "codex", "prompt": "p",
                   "repo": {"url": "https://github.com/a/b", "ref": "a..b"}}),
            "invalid_ref",
        ),
        (
            json!({"adapter": "codex", "prompt": "p",
                   "repo": {"url": "https://github.com/a/b"},
                   "tools": [{"name": "-ak", "url": "https://tools.example.com/ak", "sha256": HASH}]}),
            "invalid_tool_name",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = bridge.post("/v1/runs", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    assert_no_runs(&bridge).await;
}

/// Regression: unknown fields were ignored, so `repo_url` (the original API's name) started a
/// run with no repository, and a misspelt `promt` was reported only as `prompt` missing.
#[tokio::test]
async fn the_run_api_refuses_unknown_fields_by_name() {
    let bridge = BridgeBuilder::new().start().await;
    let repo = json!({"url": "http://127.0.0.1:9/r", "branch": "main"});
    let tool = json!({"name": "ak", "url": "http://127.0.0.1:9/t", "sha256": HASH, "sha": HASH});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"adapter": "codex", "prompt": "x", "repo_url": "https://github.com/a/b"}),
            "`repo_url` is not a field of this request",
            "adapter, prompt, repo, tools",
        ),
        (
            json!({"adapter": "codex", "promt": "x"}),
            "`promt` is not a field of this request",
            "callback_url",
        ),
        (
            json!({"adapter": "codex", "prompt": "x", "repo": repo}),
            "`repo.branch` is not a field of `repo`",
            "url, ref, submodules",
        ),
        (
            json!({"adapter": "codex", "prompt": "x", "tools": [tool]}),
            "`tools[0].sha` is not a field of `tools[0]`",
            "name, url, sha256, mirrors, archive_path",
        ),
    ];
    for (body, names_it, lists) in cases {
        let (status, answer) = bridge.post("/v1/runs", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "unknown_field", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(names_it), "{message}");
        assert!(message.contains(lists), "{message}");
    }
    assert_no_runs(&bridge).await;

    // The original API's contract is kept as it was: extra fields pass unremarked.
    let extra = legacy(&[("ak_hash", json!("nope")), ("note", json!("x"))]);
    let (status, answer) = bridge.post("/run_codex_session", &extra).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_checksum_format");
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused() {
    let bridge = BridgeBuilder::new().start().await;
    let post = |body: Vec<u8>, content_type: &'static str| {
        bridge
            .client
            .post(format!("{}/run_codex_session", bridge.url))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        (
            "not json",
            b"{contract_id".to_vec(),
            "application/json",
            400,
            "invalid_json",
        ),
        (
            "json array",
            b"[1,2]".to_vec(),
            "application/json",
            400,
            "invalid_json",
        ),
        (
            "form body",
            b"a=b".to_vec(),
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
        (
            "oversized",
            vec![b' '; 2 << 20],
            "application/json",
            413,
            "body_too_large",
        ),
    ];
    for (name, body, content_type, status, code) in cases {
        let response = post(body, content_type).await.unwrap();
        assert_eq!(response.status(), status, "{name}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{name}: {answer}");
    }
    assert_no_runs(&bridge).await;
}

#[tokio::test]
async fn unknown_runs_and_routes_are_404_json() {
    let bridge = BridgeBuilder::new().start().await;
    let (status, body) = bridge
        .get("/v1/runs/0190d7a0-0000-7000-8000-000000000000")
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (404, Some("run_not_found"))
    );
    let (status, body) = bridge.get("/v1/runs/not-an-id").await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (404, Some("run_not_found"))
    );
    let (status, body) = bridge.get("/v2/nothing").await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn an_open_bridge_refuses_foreign_hosts_and_origins() {
    let bridge = BridgeBuilder::new().var("HB_API_TOKEN", "").start().await;
    let list = |host: &'static str, origin: Option<&'static str>| {
        let mut request = bridge
            .client
            .get(format!("{}/v1/runs", bridge.url))
            .header("host", host);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };

    assert_eq!(list("127.0.0.1:8000", None).await.unwrap().status(), 200);
    assert_eq!(
        list("localhost", Some("http://localhost:3000"))
            .await
            .unwrap()
            .status(),
        200
    );
    let rebound = list("rebind.evil.example:8000", None).await.unwrap();
    assert_eq!(rebound.status(), 403);
    assert_eq!(
        rebound.json::<Value>().await.unwrap()["error"]["code"],
        "host_not_allowed"
    );
    let cross_site = list("127.0.0.1:8000", Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(
        cross_site.json::<Value>().await.unwrap()["error"]["code"],
        "origin_not_allowed"
    );
}

#[tokio::test]
async fn a_body_without_a_json_content_type_is_refused() {
    let bridge = BridgeBuilder::new().start().await;
    for content_type in [None, Some("text/plain"), Some("application/jsonp")] {
        let mut request = bridge
            .client
            .post(format!("{}/v1/runs", bridge.url))
            .bearer_auth(TOKEN)
            .body(r#"{"adapter":"codex","prompt":"p"}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 415, "{content_type:?}");
    }
    let upper = bridge
        .client
        .post(format!("{}/v1/runs", bridge.url))
        .header("authorization", format!("BEARER {TOKEN}"))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(r#"{"adapter":"codex","prompt":""}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        upper.status(),
        400,
        "an upper-case scheme and media type are accepted"
    );
    assert_no_runs(&bridge).await;
}

#[tokio::test]
async fn odd_requests_get_json_errors_before_any_work() {
    let bridge = BridgeBuilder::new().start().await;
    let (status, body) = bridge.get("/v1/runs?limit=lots").await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (status, body) = bridge.send(reqwest::Method::DELETE, "/v1/runs", None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = bridge
        .post(
            "/v1/runs",
            &json!({"adapter": "codex", "prompt": "a\u{0}b"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let (status, body) = bridge
        .post(
            "/v1/runs",
            &json!({"adapter": "codex", "prompt": "x".repeat(130 << 10)}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "one argument holds at most 128 KiB"
    );
    let (status, _) = bridge
        .post(
            "/v1/runs",
            &json!({"adapter": "codex", "prompt": "p", "contract_id": "a\nb"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_no_runs(&bridge).await;
}

/// Regression: a query parameter the route does not take was ignored, so a misspelt filter
/// (`status=` for `state=`) listed every run, and a misspelt `wait` answered at once.
#[tokio::test]
async fn unknown_query_parameters_are_refused_by_name() {
    let bridge = BridgeBuilder::new().start().await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/runs?status=running"),
        (reqwest::Method::POST, "/v1/runs?wiat=60"),
    ] {
        let body = json!({"adapter": "codex", "prompt": "p"});
        let (status, answer) = bridge.send(method, path, Some(&body)).await;
        assert_eq!(
            (status.as_u16(), answer["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}: {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("unknown field `") && message.contains("expected"),
            "{message}"
        );
    }
    let (status, listed) = bridge.get("/v1/runs?state=finished&limit=5").await;
    assert_eq!(status, 200, "{listed}");
    assert_no_runs(&bridge).await;
}
