//! What an operator watches: the Prometheus metrics on their own listener, scraped over real
//! HTTP after real Codex runs and checked by Prometheus' own `promtool`, and the JSON log of a
//! real bridge process, which carries each request's and run's ids on every line and never a
//! secret.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Value, json};
use testkit::files::FileServer;
use testkit::model::Behavior;

use crate::support::{BridgeBuilder, BridgeProcess, CANARY_KEY, Model, TOKEN, TestBridge};

const AK_SCRIPT: &str = "#!/bin/sh\necho \"ak-tool-ok $*\"\n";

/// promtool, installed by `scripts/install-promtool.sh`.
fn promtool() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/promtool/promtool");
    assert!(
        bin.exists(),
        "promtool is not installed: run scripts/install-promtool.sh (scripts/test.sh does)"
    );
    bin
}

/// One sample of a scrape: its name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape parsed strictly: every family has HELP and TYPE before its samples, every sample
/// belongs to the family declared last, and every line is one of the three kinds.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut scrape = Scrape::default();
        let mut helped = None;
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has a name and text");
                helped = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and type");
                assert_eq!(
                    helped.as_deref(),
                    Some(name),
                    "HELP comes right before TYPE"
                );
                assert!(
                    scrape
                        .types
                        .insert(name.to_owned(), kind.to_owned())
                        .is_none(),
                    "{name} is declared once"
                );
                current = Some((name.to_owned(), kind.to_owned()));
            } else {
                let sample = parse_sample(line);
                let (family, kind) = current.as_ref().expect("a sample follows its TYPE");
                let suffixes: &[&str] = match kind.as_str() {
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                assert!(
                    suffixes
                        .iter()
                        .any(|s| sample.name == format!("{family}{s}")),
                    "{} belongs to {family}",
                    sample.name
                );
                scrape.samples.push(sample);
            }
        }
        scrape
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

/// `name{a="b",c="d"} value`, with the format's escapes in label values.
fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => line.split_once(' ').expect("a sample has a value"),
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if line.contains('{') {
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after.strip_prefix(' ').expect("a space before the value");
                break;
            }
            let (label, after) = rest.split_once("=\"").expect("label=\"value\"");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("a closed label value") {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().expect("an escape").1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("unknown escape \\{c} in {line}"),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(label.trim_start_matches(',').to_owned(), value);
            rest = &after[end + 1..];
        }
    }
    let value = match rest.trim() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        number => number
            .parse()
            .unwrap_or_else(|_| panic!("a number: {line}")),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

async fn scrape(bridge: &TestBridge) -> (String, Scrape) {
    let url = bridge.metrics_url.as_ref().expect("metrics were asked for");
    let response = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("the metrics listener answers");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.expect("a body");
    let parsed = Scrape::parse(&text);
    (text, parsed)
}

/// `promtool check metrics` reads the exposition as Prometheus does and lints the names.
fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}

#[tokio::test]
async fn metrics_count_real_runs_on_their_own_listener_in_the_prometheus_format() {
    let files = FileServer::start(vec![("/tools/ak".into(), AK_SCRIPT.as_bytes().to_vec())]).await;
    let model = Model::start(Behavior::RunThenReply {
        command: "ak hello".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .metrics()
        .start()
        .await;
    let (_, before) = scrape(&bridge).await;
    assert_eq!(before.value("headless_bridge_runs_running", &[]), Some(0.0));

    let sha256 = headless_bridge::digest::Sha256Digest::of(AK_SCRIPT.as_bytes());
    let request = json!({"adapter": "codex", "prompt": "run ak",
        "tools": [{"name": "ak", "url": files.url("/tools/ak"), "sha256": sha256.hex()}]});
    for _ in 0..2 {
        let run = bridge.run_to_end(&request).await;
        assert_eq!(run["outcome"], "succeeded", "{run}");
    }
    let (text, after) = scrape(&bridge).await;

    promtool_accepts(&text);
    let codex_ok = [
        ("adapter", "codex"),
        ("outcome", "succeeded"),
        ("reason", "none"),
    ];
    assert_eq!(
        after.value("headless_bridge_runs_total", &codex_ok),
        Some(2.0),
        "{text}"
    );
    let hits = after.value("headless_bridge_fetch_cache_hits_total", &[]);
    let misses = after.value("headless_bridge_fetch_cache_misses_total", &[]);
    assert_eq!((hits, misses), (Some(1.0), Some(1.0)), "the second run hit");
    assert_eq!(
        after.value("headless_bridge_fetch_downloaded_bytes_total", &[]),
        Some(AK_SCRIPT.len() as f64)
    );
    let stdout = [("adapter", "codex"), ("stream", "stdout")];
    let streamed = after
        .value("headless_bridge_cli_output_bytes_total", &stdout)
        .expect("codex's JSON lines are counted");
    assert!(streamed > 200.0, "two runs of JSON events: {streamed}");
    assert_eq!(after.value("headless_bridge_runs_queued", &[]), Some(0.0));
    assert_eq!(after.value("headless_bridge_runs_running", &[]), Some(0.0));
    let default_login = [("adapter", "codex"), ("credential", "default")];
    assert_eq!(
        after.value("headless_bridge_credential_healthy", &default_login),
        Some(1.0)
    );
    assert_eq!(
        after.value(
            "headless_bridge_credential_expires_in_seconds",
            &[("adapter", "codex")]
        ),
        None,
        "an API key has no expiry"
    );
    assert_eq!(
        after.types["headless_bridge_run_duration_seconds"],
        "histogram"
    );
    assert_eq!(after.types["headless_bridge_runs_total"], "counter");

    // Buckets are cumulative and end in +Inf, which is the count.
    let buckets: Vec<&Sample> = after
        .samples
        .iter()
        .filter(|s| s.name == "headless_bridge_run_duration_seconds_bucket")
        .collect();
    assert!(buckets.len() > 2, "{text}");
    assert!(buckets.windows(2).all(|w| {
        let bound = |s: &Sample| s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY);
        w[0].value <= w[1].value && bound(w[0]) < bound(w[1])
    }));
    let last = buckets.last().unwrap();
    assert_eq!(last.labels["le"], "+Inf");
    let count = after.value("headless_bridge_run_duration_seconds_count", &codex_ok[..2]);
    assert_eq!(Some(last.value), count);
    assert_eq!(count, Some(2.0));
    let sum = after
        .value("headless_bridge_run_duration_seconds_sum", &codex_ok[..2])
        .unwrap();
    assert!(sum > 0.0 && sum < 240.0, "{sum}");

    // The API's port serves no metrics, with or without a token.
    let (status, body) = bridge.get("/metrics").await;
    assert_eq!(status, 404, "{body}");
    let unauthenticated = reqwest::get(format!("{}/metrics", bridge.url))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 404);
}

#[tokio::test]
async fn the_metrics_show_seconds_until_each_logins_access_token_expires_without_refreshing() {
    let encode = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let in_an_hour = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let access = format!(
        "{}.{}.sig",
        encode(json!({"alg": "none"})),
        encode(json!({"exp": in_an_hour}))
    );
    let login = json!({"auth_mode": "chatgpt", "tokens": {"access_token": access,
        "refresh_token": "rt-canary-31f0", "account_id": "acct-1"}});
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("auth.json"), login.to_string()).unwrap();
    let api_key = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = BridgeBuilder::new()
        .codex_dir(api_key.codex_dir.path())
        .var(
            "HB_CODEX_CREDENTIALS",
            format!("team={}", dir.path().display()),
        )
        .metrics()
        .start()
        .await;

    let (text, scrape) = scrape(&bridge).await;

    promtool_accepts(&text);
    let team = [("adapter", "codex"), ("credential", "team")];
    let left = scrape
        .value("headless_bridge_credential_expires_in_seconds", &team)
        .expect("a ChatGPT login has an expiry");
    assert!((3500.0..=3600.0).contains(&left), "{left}");
    let default = [("adapter", "codex"), ("credential", "default")];
    assert_eq!(
        scrape.value("headless_bridge_credential_expires_in_seconds", &default),
        None,
        "the default login is an API key, without an expiry"
    );
    assert_eq!(
        scrape.value("headless_bridge_credential_healthy", &team),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("headless_bridge_credential_healthy", &default),
        Some(1.0)
    );
    let auth = std::fs::read_to_string(dir.path().join("auth.json")).unwrap();
    assert_eq!(auth, login.to_string(), "a scrape never touches the login");
    assert!(!text.contains("rt-canary-31f0"));
}

#[tokio::test]
async fn every_json_log_line_of_a_real_run_carries_its_ids_and_no_secret() {
    let model = Model::start(Behavior::RunThenReply {
        command: "echo logged-run".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let rust_log = Path::new("headless_bridge=debug");
    let bridge = BridgeProcess::start_with(
        data_dir.path(),
        &[
            ("HB_CODEX_DIR", model.codex_dir.path()),
            ("RUST_LOG", rust_log),
        ],
    )
    .await;
    let request = json!({"adapter": "codex", "prompt": "echo", "contract_id": "c-logs-7"});
    let client = bridge.client();
    let response = client
        .client
        .post(format!("{}/v1/runs?wait=120", client.url))
        .bearer_auth(TOKEN)
        .header("x-request-id", "req-e2e-41")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-e2e-41");
    let run: Value = response.json().await.unwrap();
    assert_eq!(run["outcome"], "succeeded", "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();

    let log = bridge.stop_and_read_log().await;

    let lines: Vec<Value> = log
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    for line in &log {
        assert!(
            !line.contains(CANARY_KEY),
            "the model API key leaked: {line}"
        );
        assert!(!line.contains(TOKEN), "the API token leaked: {line}");
    }
    let of_run: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"] == "run" || l["run_id"] == run_id.as_str())
        .collect();
    let messages: Vec<&str> = of_run
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    for expected in ["run queued", "run started", "run finished"] {
        assert!(
            messages.contains(&expected),
            "{expected} missing: {messages:?}"
        );
    }
    for line in &of_run {
        assert_eq!(line["run_id"], run_id.as_str(), "{line}");
        assert_eq!(line["adapter"], "codex", "{line}");
    }
    let in_run_span: Vec<&&Value> = of_run.iter().filter(|l| l["span"] == "run").collect();
    assert!(in_run_span.len() >= 2, "{of_run:?}");
    assert!(
        in_run_span.iter().all(|l| l["contract_id"] == "c-logs-7"),
        "{in_run_span:?}"
    );
    // Every line the run engine and pipeline wrote is in the run's span or names the run.
    for line in &lines {
        let target = line["target"].as_str().unwrap_or_default();
        if target.starts_with("headless_bridge::run::") {
            assert_eq!(line["run_id"], run_id.as_str(), "{line}");
        }
    }

    let served = lines
        .iter()
        .find(|l| l["message"] == "request served" && l["route"] == "/v1/runs")
        .expect("the request is logged");
    assert_eq!(served["request_id"], "req-e2e-41");
    assert_eq!(served["method"], "POST");
    assert_eq!(served["span"], "request");
    let queued = lines.iter().find(|l| l["message"] == "run queued").unwrap();
    assert_eq!(
        queued["request_id"], "req-e2e-41",
        "the run is tied to its request"
    );
}
