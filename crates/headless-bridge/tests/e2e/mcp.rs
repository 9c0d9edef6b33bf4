//! `/mcp` with a real MCP client: the official Python SDK (`mcp` from PyPI, installed by
//! `scripts/install-python-tools.sh`) drives a live bridge whose Codex runs go to the fake
//! model, through `mcp_client.py`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::{BridgeBuilder, Model, TOKEN};
use testkit::model::Behavior;

/// The venv's interpreter, with the pinned SDK.
fn mcp_python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/mcp-client/bin/python");
    assert!(
        python.exists(),
        "the MCP Python SDK is not installed: run scripts/install-python-tools.sh (scripts/test.sh does)"
    );
    python
}

/// A profile adapter that runs until it is stopped, to have something to cancel.
fn slow_profile(dir: &Path) {
    let text = "description = \"waits\"\nexecutable = \"/bin/sh\"\nargs = [\"-c\", \"echo waiting; exec sleep 300\"]\n";
    std::fs::write(dir.join("slow.toml"), text).expect("write the profile");
}

#[tokio::test]
async fn a_real_mcp_client_runs_reads_the_log_and_cancels() {
    let model = Model::start(Behavior::Reply("Hello from the fake model".into())).await;
    let profiles = tempfile::tempdir().expect("a temp dir");
    slow_profile(profiles.path());
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_ADAPTERS_DIR", profiles.path().display().to_string())
        .start()
        .await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/mcp_client.py");
    let output = tokio::process::Command::new(mcp_python())
        .arg(&script)
        .arg(&bridge.url)
        .arg("slow")
        .env("HB_TOKEN", TOKEN)
        .kill_on_drop(true)
        .output()
        .await
        .expect("the client runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the MCP client failed: {stderr}");
    let out: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}): {stderr}"));

    assert_eq!(
        out["tools"],
        json!(["cancel_run", "get_run", "list_adapters", "start_run"])
    );
    let run = &out["start_run"];
    assert_eq!(run["is_error"], false, "{run}");
    assert_eq!(run["value"]["state"], "finished", "{run}");
    assert_eq!(run["value"]["outcome"], "succeeded", "{run}");
    assert_eq!(run["value"]["output"], "Hello from the fake model");
    let id = run["value"]["id"].as_str().expect("the run has an id");
    // The client asked for progress while it waited: at least the first report came.
    let progress = out["progress"].as_array().expect("recorded");
    assert!(!progress.is_empty(), "no progress notification");
    assert!(
        progress[0]["message"].as_str().unwrap().contains(id),
        "{progress:?}"
    );
    assert_eq!(out["get_run"]["value"]["id"], id);

    assert_eq!(out["templates"], json!(["run://{id}/log"]));
    let uri = format!("run://{id}/log");
    assert!(
        out["resources"].as_array().unwrap().contains(&json!(uri)),
        "{}",
        out["resources"]
    );
    // The log resource is the run's whole output stream: Codex's JSON events.
    let (_, direct) = bridge.get_bytes(&format!("/v1/runs/{id}/logs")).await;
    assert_eq!(out["log"], json!([String::from_utf8_lossy(&direct)]));
    assert!(
        out["log"][0].as_str().unwrap().contains("turn.completed"),
        "{}",
        out["log"]
    );

    let slow = &out["slow_run"]["value"];
    assert_ne!(slow["state"], "finished", "{slow}");
    let cancelled = &out["cancel_run"];
    assert_eq!(cancelled["is_error"], false, "{cancelled}");
    assert_eq!(cancelled["value"]["outcome"], "cancelled");
    assert_eq!(cancelled["value"]["id"], slow["id"]);
    let again = &out["cancel_again"];
    assert_eq!(again["is_error"], true);
    assert_eq!(again["value"]["error"]["code"], "run_finished");

    let refused = &out["refused"];
    assert_eq!(refused["is_error"], true);
    assert_eq!(refused["value"]["error"]["code"], "unknown_adapter");
    let adapters: Vec<&str> = out["list_adapters"]["value"]["adapters"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(adapters, ["codex", "claude", "gemini", "slow"]);
    assert_eq!(
        out["list_adapters"]["value"]["adapters"][0]["health"]["ok"],
        true
    );

    // The SDK tries the handshake (and, giving up, may say goodbye): every answer is a 401.
    let wrong = &out["wrong_token"];
    assert_eq!(wrong["connected"], false, "{wrong}");
    let statuses = wrong["statuses"].as_array().expect("recorded");
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| s == 401),
        "{wrong}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn mcp_without_the_token_is_refused_with_401() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "1"}},
    });
    let response = bridge
        .client
        .post(format!("{}/mcp", bridge.url))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .expect("the bridge answers");
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "unauthorized");

    // With the token the same request starts a session.
    let response = bridge
        .client
        .post(format!("{}/mcp", bridge.url))
        .bearer_auth(TOKEN)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .expect("the bridge answers");
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("mcp-session-id"));
    bridge.stop().await;
}
