//! Runs as a service: the event stream, cancellation, the idle limit, idempotency, the queue
//! limit, listings, logs and completion webhooks, with the real Codex CLI.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use headless_bridge::run::supervisor::processes_with_env;
use serde_json::{Value, json};
use testkit::model::Behavior;
use tokio::sync::mpsc;

use crate::support::{BridgeBuilder, Model, TOKEN};

fn run_request(prompt: &str) -> Value {
    json!({"adapter": "codex", "prompt": prompt})
}

#[tokio::test]
async fn the_event_stream_replays_a_finished_run_and_resumes_after_an_id() {
    let model = Model::start(Behavior::Reply("streamed answer".into())).await;
    let bridge = model.bridge().await;
    let (_, run) = bridge.post("/v1/runs?wait=120", &run_request("hi")).await;
    let path = format!("/v1/runs/{}/events", run["id"].as_str().unwrap());

    let events = bridge.sse(&path, None).await;

    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "ids count up from 1"
    );
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "state")
        .filter_map(|e| e.data["data"]["state"].as_str())
        .collect();
    assert_eq!(states, ["queued", "preparing", "running"]);
    assert!(
        events
            .iter()
            .any(|e| e.event == "cli_event" && e.data["data"]["type"] == "turn.completed")
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_str(), &last.data["data"]["outcome"]),
        ("outcome", &json!("succeeded"))
    );

    let resumed = bridge.sse(&path, Some(3)).await;
    assert_eq!(
        resumed.first().unwrap().id,
        4,
        "resuming starts after Last-Event-ID"
    );
    assert_eq!(resumed.len(), events.len() - 3);
}

#[tokio::test]
async fn a_cancelled_run_stops_at_once_and_the_live_stream_ends_with_it() {
    let model = Model::start(Behavior::Hang).await;
    let bridge = model.bridge().await;
    let (status, run) = bridge.post("/v1/runs", &run_request("wait forever")).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    model.fake.wait_for_requests(1).await;

    let follower = {
        let (client, url) = (
            bridge.client.clone(),
            format!("{}/v1/runs/{id}/events", bridge.url),
        );
        tokio::spawn(async move {
            client
                .get(url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    let (status, cancelled) = bridge
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;

    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["outcome"], "cancelled");
    assert_eq!(cancelled["reason"], "cancelled");
    let marker = format!("HEADLESS_BRIDGE_RUN={id}");
    assert_eq!(
        processes_with_env(marker.as_bytes()),
        vec![],
        "the run's processes survived the cancel"
    );
    let streamed = crate::support::parse_sse(&follower.await.unwrap());
    assert_eq!(
        streamed.last().unwrap().data["data"]["outcome"],
        "cancelled"
    );

    let (status, again) = bridge
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (status.as_u16(), again["error"]["code"].as_str()),
        (409, Some("run_finished"))
    );
}

#[tokio::test]
async fn a_silent_cli_is_stopped_as_stalled() {
    let model = Model::start(Behavior::Hang).await;
    let bridge = model.bridge().await;

    let request = json!({"adapter": "codex", "prompt": "hang", "idle_timeout_s": 2});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["outcome"], "timed_out", "{run}");
    assert_eq!(run["reason"], "stalled");
}

#[tokio::test]
async fn the_same_key_and_body_return_the_same_run_and_a_different_body_conflicts() {
    let model = Model::start(Behavior::Reply("once".into())).await;
    let bridge = model.bridge().await;
    let post = |body: Value| {
        bridge
            .client
            .post(format!("{}/v1/runs?wait=120", bridge.url))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "job-7")
            .json(&body)
            .send()
    };

    let first = post(run_request("do it")).await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let second = post(run_request("do it")).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(model.fake.requests().len(), 1, "the CLI ran once");

    let conflict = post(run_request("do something else")).await.unwrap();
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_conflict");
}

#[tokio::test]
async fn a_full_queue_answers_429_and_a_queued_run_can_be_cancelled() {
    let model = Model::start(Behavior::Hang).await;
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_MAX_CONCURRENT_RUNS", "1")
        .var("HB_MAX_QUEUED_RUNS", "1")
        .start()
        .await;

    let (_, running) = bridge.post("/v1/runs", &run_request("one")).await;
    model.fake.wait_for_requests(1).await;
    let (_, queued) = bridge.post("/v1/runs", &run_request("two")).await;
    assert_eq!(queued["state"], "queued");
    let response = bridge
        .client
        .post(format!("{}/v1/runs", bridge.url))
        .bearer_auth(TOKEN)
        .json(&run_request("three"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");

    let queued_id = queued["id"].as_str().unwrap();
    let (_, cancelled) = bridge
        .post(&format!("/v1/runs/{queued_id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled["outcome"], "cancelled");
    assert!(
        cancelled["started_at"].is_null(),
        "a run cancelled in the queue never started"
    );
    let running_id = running["id"].as_str().unwrap();
    bridge
        .post(&format!("/v1/runs/{running_id}/cancel"), &json!({}))
        .await;
    assert_eq!(model.fake.requests().len(), 1);
}

#[tokio::test]
async fn submissions_sent_all_at_once_cannot_overrun_the_queue() {
    let model = Model::start(Behavior::Hang).await;
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_MAX_CONCURRENT_RUNS", "1")
        .var("HB_MAX_QUEUED_RUNS", "2")
        .start()
        .await;

    let submissions = (0..24).map(|n| {
        bridge
            .client
            .post(format!("{}/v1/runs", bridge.url))
            .bearer_auth(TOKEN)
            .json(&run_request(&format!("burst {n}")))
            .send()
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for response in futures::future::join_all(submissions).await {
        let response = response.unwrap();
        match response.status().as_u16() {
            202 => admitted.push(response.json::<Value>().await.unwrap()),
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }

    // One run holds the slot and two wait; every other submission is refused.
    assert_eq!((admitted.len(), refused), (3, 21));
    let (_, listed) = bridge.get("/v1/runs?state=queued").await;
    assert!(listed["runs"].as_array().unwrap().len() <= 2, "{listed}");
    for run in &admitted {
        let id = run["id"].as_str().unwrap();
        let (_, cancelled) = bridge
            .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(cancelled["outcome"], "cancelled");
    }
    // Places are given back as runs finish: the queue takes new work again.
    let (status, _) = bridge.post("/v1/runs", &run_request("after")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn listings_filter_and_page_and_logs_hold_the_raw_stream() {
    let model = Model::start(Behavior::Reply("listed".into())).await;
    let bridge = model.bridge().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({"adapter": "codex", "prompt": format!("p{i}"), "contract_id": format!("list-{i}")});
        let (_, run) = bridge.post("/v1/runs?wait=120", &body).await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }

    let (_, page) = bridge.get("/v1/runs?limit=2").await;
    let first: Vec<&str> = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(first, [ids[2].as_str(), ids[1].as_str()]);
    let (_, rest) = bridge
        .get(&format!(
            "/v1/runs?limit=2&cursor={}",
            page["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(rest["runs"][0]["id"], ids[0].as_str());
    let (_, filtered) = bridge
        .get("/v1/runs?contract_id=list-1&state=finished")
        .await;
    assert_eq!(filtered["runs"].as_array().unwrap().len(), 1);
    assert_eq!(filtered["runs"][0]["id"], ids[1].as_str());
    let (status, bad) = bridge.get("/v1/runs?state=sleeping").await;
    assert_eq!(
        (status.as_u16(), bad["error"]["code"].as_str()),
        (400, Some("invalid_filter"))
    );

    let logs = bridge
        .client
        .get(format!("{}/v1/runs/{}/logs", bridge.url, ids[0]))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(logs.headers()["content-type"], "text/plain; charset=utf-8");
    let text = logs.text().await.unwrap();
    assert!(text.contains(r#""type":"turn.completed""#), "{text}");
}

#[tokio::test]
async fn a_webhook_receives_the_signed_record_after_two_failures() {
    const SECRET: &str = "webhook-secret-0123456789";
    let attempts = Arc::new(AtomicUsize::new(0));
    let (delivered_tx, mut delivered) = mpsc::unbounded_channel::<(HeaderMap, String)>();
    let receiver = {
        let attempts = attempts.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let attempts = attempts.clone();
                let delivered_tx = delivered_tx.clone();
                async move {
                    if attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let _ = delivered_tx.send((headers, body));
                    StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let model = Model::start(Behavior::Reply("hooked".into())).await;
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_WEBHOOK_SECRET", SECRET)
        .start()
        .await;
    let request = json!({"adapter": "codex", "prompt": "p", "callback_url": hook_url});
    let (_, run) = bridge.post("/v1/runs", &request).await;

    let (headers, body) = delivered.recv().await.expect("the webhook arrives");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let signature = headers["x-hb-signature"].to_str().unwrap();
    let timestamp: i64 = signature
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("t=")
        .parse()
        .unwrap();
    assert_eq!(
        signature,
        headless_bridge::run::webhook::signature(SECRET, timestamp, body.as_bytes())
    );
    let record: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&record["id"], &record["outcome"]),
        (&run["id"], &json!("succeeded"))
    );
}

/// A webhook receiver on loopback that answers 503 until it is opened, then takes deliveries.
struct Receiver {
    url: String,
    open: Arc<std::sync::atomic::AtomicBool>,
    attempts: mpsc::UnboundedReceiver<()>,
    delivered: mpsc::UnboundedReceiver<(HeaderMap, String)>,
}

impl Receiver {
    async fn start() -> Self {
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (attempt_tx, attempts) = mpsc::unbounded_channel();
        let (delivered_tx, delivered) = mpsc::unbounded_channel();
        let router = {
            let open = open.clone();
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: String| {
                    let (open, attempt_tx, delivered_tx) =
                        (open.clone(), attempt_tx.clone(), delivered_tx.clone());
                    async move {
                        let _ = attempt_tx.send(());
                        if !open.load(Ordering::SeqCst) {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let _ = delivered_tx.send((headers, body));
                        StatusCode::NO_CONTENT
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url,
            open,
            attempts,
            delivered,
        }
    }

    /// The record of the next delivery, its signature checked.
    async fn next_record(&mut self, secret: &str) -> Value {
        let (headers, body) = tokio::time::timeout(Duration::from_secs(120), self.delivered.recv())
            .await
            .expect("a delivery within two minutes")
            .expect("the receiver is running");
        let signature = headers["x-hb-signature"].to_str().unwrap();
        let timestamp: i64 = signature[2..signature.find(',').unwrap()].parse().unwrap();
        assert_eq!(
            signature,
            headless_bridge::run::webhook::signature(secret, timestamp, body.as_bytes())
        );
        serde_json::from_str(&body).unwrap()
    }
}

#[tokio::test]
async fn a_webhook_still_failing_when_the_bridge_stops_is_delivered_after_its_restart() {
    const SECRET: &str = "webhook-secret-0123456789";
    let mut receiver = Receiver::start().await;
    let model = Model::start(Behavior::Reply("hooked".into())).await;
    let builder = || {
        BridgeBuilder::new()
            .codex_dir(model.codex_dir.path())
            .var("HB_WEBHOOK_SECRET", SECRET)
    };
    let bridge = builder().start().await;
    let request = json!({"adapter": "codex", "prompt": "p", "callback_url": receiver.url});
    let (_, run) = bridge.post("/v1/runs", &request).await;
    receiver.attempts.recv().await.expect("a first attempt");

    // The stop finds the delivery waiting to retry; the next start takes it up again.
    let bridge = bridge.restart(builder()).await;
    receiver.open.store(true, Ordering::SeqCst);
    let record = receiver.next_record(SECRET).await;

    assert_eq!(
        (&record["id"], &record["outcome"]),
        (&run["id"], &json!("succeeded"))
    );
    let (_, stored) = bridge
        .get(&format!("/v1/runs/{}", run["id"].as_str().unwrap()))
        .await;
    assert_eq!(record, stored, "the delivery is the stored record");
}

#[tokio::test]
async fn a_run_cut_short_by_a_kill_9_still_calls_its_webhook() {
    use crate::support::BridgeProcess;
    const SECRET: &str = "webhook-secret-0123456789";
    let mut receiver = Receiver::start().await;
    receiver.open.store(true, Ordering::SeqCst);
    let model = Model::start(Behavior::Hang).await;
    let data_dir = tempfile::tempdir().unwrap();
    let vars: [(&str, &std::path::Path); 3] = [
        ("HB_CODEX_DIR", model.codex_dir.path()),
        ("HB_WEBHOOK_SECRET", std::path::Path::new(SECRET)),
        ("HB_ALLOWED_HOSTS", std::path::Path::new("127.0.0.1")),
    ];
    let mut bridge = BridgeProcess::start_with(data_dir.path(), &vars).await;
    let request = json!({"adapter": "codex", "prompt": "hang", "callback_url": receiver.url});
    let (status, run) = bridge.client().post("/v1/runs", &request).await;
    assert_eq!(status, 202, "{run}");
    model.fake.wait_for_requests(1).await;

    bridge.child.kill().await.expect("SIGKILL the bridge");
    let _restarted = BridgeProcess::start_with(data_dir.path(), &vars).await;
    let record = receiver.next_record(SECRET).await;

    assert_eq!(
        (&record["id"], &record["outcome"]),
        (&run["id"], &json!("interrupted"))
    );
}

#[tokio::test]
async fn a_callback_needs_a_secret_and_an_allowed_url() {
    let bridge = BridgeBuilder::new().start().await;
    let request =
        json!({"adapter": "codex", "prompt": "p", "callback_url": "http://127.0.0.1:9/hook"});
    let (status, body) = bridge.post("/v1/runs", &request).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("webhooks_disabled"))
    );

    let bridge = BridgeBuilder::new()
        .var("HB_WEBHOOK_SECRET", "webhook-secret-0123456789")
        .start()
        .await;
    let request =
        json!({"adapter": "codex", "prompt": "p", "callback_url": "https://169.254.169.254/hook"});
    let (status, body) = bridge.post("/v1/runs", &request).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("url_not_allowed"))
    );
}
