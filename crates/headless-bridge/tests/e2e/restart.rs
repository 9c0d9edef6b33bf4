//! Run records live in SQLite under the data directory and survive the bridge.

use serde_json::json;
use testkit::model::Behavior;

use crate::support::{BridgeBuilder, Model};

#[tokio::test]
async fn a_finished_run_is_still_there_after_a_restart() {
    let model = Model::start(Behavior::Reply("persisted answer".into())).await;
    let bridge = model.bridge().await;
    let run = bridge
        .run_to_end(&json!({"adapter": "codex", "prompt": "hi"}))
        .await;
    assert_eq!(run["outcome"], "succeeded", "{run}");

    let bridge = bridge
        .restart(BridgeBuilder::new().codex_dir(model.codex_dir.path()))
        .await;
    let (status, again) = bridge
        .get(&format!("/v1/runs/{}", run["id"].as_str().unwrap()))
        .await;

    assert_eq!(status, 200);
    assert_eq!(again, run);
}

#[tokio::test]
async fn a_run_cut_short_by_shutdown_is_recorded_as_interrupted() {
    let model = Model::start(Behavior::Hang).await;
    let bridge = model.bridge().await;
    let (status, run) = bridge
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "hi"}))
        .await;
    assert_eq!(status, 202, "{run}");
    model.fake.wait_for_requests(1).await;
    let id = run["id"].as_str().unwrap().to_owned();

    let bridge = bridge
        .restart(BridgeBuilder::new().codex_dir(model.codex_dir.path()))
        .await;
    let (_, after) = bridge.get(&format!("/v1/runs/{id}")).await;

    assert_eq!(after["outcome"], "interrupted", "{after}");
    assert_eq!(after["reason"], "interrupted");
}

#[tokio::test]
async fn while_runs_drain_the_api_refuses_new_ones_and_serves_the_rest() {
    let model = Model::start(Behavior::Hang).await;
    let mut bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_SHUTDOWN_GRACE", "600")
        .start()
        .await;
    let request = json!({"adapter": "codex", "prompt": "hang"});
    let (_, run) = bridge.post("/v1/runs", &request).await;
    let id = run["id"].as_str().unwrap().to_owned();
    model.fake.wait_for_requests(1).await;

    bridge.begin_stop();
    // The drain has begun once submissions are refused.
    let refused = loop {
        let (status, body) = bridge.post("/v1/runs", &request).await;
        if status != 202 {
            break (status, body);
        }
        let id = body["id"].as_str().unwrap();
        bridge
            .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
            .await;
    };
    assert_eq!(
        (refused.0.as_u16(), refused.1["error"]["code"].as_str()),
        (503, Some("shutting_down"))
    );
    let (status, going) = bridge.get(&format!("/v1/runs/{id}")).await;
    assert_eq!((status.as_u16(), &going["state"]), (200, &json!("running")));
    // Cancelling the last run ends the drain, long before its grace period.
    let (_, cancelled) = bridge
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled["outcome"], "cancelled");
    bridge.stopped().await;
}

#[tokio::test]
async fn after_a_kill_9_the_restarted_bridge_records_the_run_and_kills_what_it_left() {
    use headless_bridge::run::supervisor::{RUN_MARKER, processes_with_env};

    use crate::support::BridgeProcess;

    let model = Model::start(Behavior::Hang).await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut bridge = BridgeProcess::start(model.codex_dir.path(), data_dir.path()).await;
    let (status, run) = bridge
        .client()
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "hang"}))
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    model.fake.wait_for_requests(1).await;

    bridge.child.kill().await.expect("SIGKILL the bridge");
    let marker = format!("{RUN_MARKER}={id}");

    let restarted = BridgeProcess::start(model.codex_dir.path(), data_dir.path()).await;
    let (_, after) = restarted.client().get(&format!("/v1/runs/{id}")).await;

    assert_eq!(after["outcome"], "interrupted", "{after}");
    // The run's shim stops the CLI when the bridge dies; the restart sweeps what is left.
    assert_eq!(
        processes_with_env(marker.as_bytes()),
        vec![],
        "nothing of the killed bridge's run survives its restart"
    );
    let workspaces = std::fs::read_dir(data_dir.path().join("workspaces"))
        .unwrap()
        .count();
    assert_eq!(workspaces, 0, "the dead run's workspace was removed");
    let events = restarted
        .client()
        .sse(&format!("/v1/runs/{id}/events"), None)
        .await;
    assert_eq!(events.last().unwrap().event, "outcome");
}

#[tokio::test]
async fn a_second_bridge_on_the_same_data_dir_is_refused() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = |dir: &std::path::Path| {
        let mut raw = headless_bridge::config::RawConfig::default();
        let dir = dir.display().to_string();
        raw.merge_env(|name| (name == "HB_DATA_DIR").then(|| dir.clone()));
        raw.build().unwrap()
    };
    let first = headless_bridge::server::Bridge::open(config(data_dir.path()))
        .await
        .expect("the first bridge opens");

    let second = headless_bridge::server::Bridge::open(config(data_dir.path())).await;

    let err = second
        .err()
        .expect("the second bridge must not open")
        .to_string();
    assert!(
        err.contains("another headless-bridge is using the data directory"),
        "{err}"
    );
    drop(first);
    assert!(
        headless_bridge::server::Bridge::open(config(data_dir.path()))
            .await
            .is_ok(),
        "the lock goes with the bridge"
    );
}
