//! Runs of the real Codex CLI through both APIs.

use headless_bridge::run::supervisor::processes_with_env;
use serde_json::{Value, json};
use testkit::files::FileServer;
use testkit::git::GitServer;
use testkit::model::Behavior;

use crate::support::{Model, assert_no_canary};

/// The `ak` tool the original service hands Codex.
const AK_SCRIPT: &str = "#!/bin/sh\necho \"ak-tool-ok $*\"\n";
const README: &str = "# widget\nreadme-canary-7c1d: the widget repository\n";

fn sha256_hex(bytes: &[u8]) -> String {
    headless_bridge::digest::Sha256Digest::of(bytes)
        .hex()
        .to_owned()
}

struct Fixtures {
    git: GitServer,
    files: FileServer,
    repo_url: String,
}

async fn fixtures() -> Fixtures {
    let git = GitServer::start().await;
    let repo_url = git.create_repo(
        "widget",
        &[
            ("README.md", README),
            ("widget.py", "def add(a, b):\n    return a - b\n"),
        ],
    );
    let files = FileServer::start(vec![("/tools/ak".into(), AK_SCRIPT.as_bytes().to_vec())]).await;
    Fixtures {
        git,
        files,
        repo_url,
    }
}

fn legacy_request(fx: &Fixtures, ak_hash: &str) -> Value {
    json!({
        "contract_id": "contract-42",
        "repo_url": fx.repo_url,
        "failure_details": "test_add fails: add(2, 2) returned 0",
        "ak_url": fx.files.url("/tools/ak"),
        "ak_hash": ak_hash,
    })
}

#[tokio::test]
async fn a_plain_answer_succeeds_with_the_final_message_and_usage() {
    let model = Model::start(Behavior::Reply("Fixed the bug".into())).await;
    let bridge = model.bridge().await;

    let run = bridge
        .run_to_end(&json!({"adapter": "codex", "prompt": "fix it"}))
        .await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["output"], "Fixed the bug");
    assert!(run["usage"]["input_tokens"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(run["exit_code"], 0);
    let requests = model.fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(format!("Bearer {}", crate::support::CANARY_KEY).as_str())
    );
    assert_no_canary(&run);
}

#[tokio::test]
async fn the_original_api_runs_codex_with_the_clone_and_the_verified_tool() {
    let fx = fixtures().await;
    let model = Model::start(Behavior::RunThenReply {
        command: "ak --version && cat README.md".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;

    let (status, body) = bridge
        .post(
            "/run_codex_session",
            &legacy_request(&fx, &sha256_hex(AK_SCRIPT.as_bytes())),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(body["meta"]["contract_id"], "contract-42");
    let output = body["output"].as_str().unwrap();
    assert!(
        output.contains("ak-tool-ok --version"),
        "the tool did not run by its name: {output}"
    );
    assert!(
        output.contains("readme-canary-7c1d"),
        "the clone was not Codex's working directory: {output}"
    );
    let logs = body["logs"].as_str().unwrap();
    assert!(logs.contains("$ ") && logs.contains("(exit 0)"), "{logs}");
    assert!(logs.contains("fetched tool ak"), "{logs}");
    assert_eq!(fx.files.hits("/tools/ak"), 1);
    assert_no_canary(&body);
    drop(fx.git);
}

#[tokio::test]
async fn a_checksum_mismatch_stops_the_run_before_codex_starts() {
    let fx = fixtures().await;
    let model = Model::start(Behavior::Reply("should never be asked".into())).await;
    let bridge = model.bridge().await;
    let wrong = sha256_hex(b"some other tool");

    let (status, body) = bridge
        .post(
            "/run_codex_session",
            &legacy_request(&fx, &format!("sha256:{}", wrong.to_uppercase())),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "error");
    assert_eq!(body["meta"]["reason"], "checksum_mismatch");
    assert_eq!(body["meta"]["expected_sha256"], format!("sha256:{wrong}"));
    assert_eq!(
        body["meta"]["actual_sha256"],
        format!("sha256:{}", sha256_hex(AK_SCRIPT.as_bytes()))
    );
    assert!(
        model.fake.requests().is_empty(),
        "Codex must never start on a mismatch"
    );
}

#[tokio::test]
async fn a_model_error_is_a_failure_whatever_the_exit_code() {
    let model = Model::start(Behavior::Fail {
        code: "insufficient_quota".into(),
        message: "no quota left".into(),
    })
    .await;
    let bridge = model.bridge().await;

    let run = bridge
        .run_to_end(&json!({"adapter": "codex", "prompt": "fix it"}))
        .await;
    assert_eq!(run["outcome"], "failed", "{run}");
    assert_eq!(run["reason"], "upstream_error");
    assert!(
        run["message"].as_str().unwrap().contains("Quota exceeded"),
        "{run}"
    );
    assert!(
        run["logs"].as_str().unwrap().contains("turn failed"),
        "{run}"
    );
}

#[tokio::test]
async fn a_run_past_its_timeout_is_stopped_and_leaves_no_process() {
    let model = Model::start(Behavior::RunThenReply {
        command: "sleep 300".into(),
        yield_time_ms: 300_000,
    })
    .await;
    let bridge = model.bridge().await;

    let run = bridge
        .run_to_end(&json!({"adapter": "codex", "prompt": "wait", "timeout_s": 3}))
        .await;
    assert_eq!(run["outcome"], "timed_out", "{run}");
    assert_eq!(run["reason"], "timed_out");
    assert!(
        run["logs"]
            .as_str()
            .unwrap()
            .contains("started $ /bin/bash -lc 'sleep 300'"),
        "{run}"
    );
    let marker = format!("HEADLESS_BRIDGE_RUN={}", run["id"].as_str().unwrap());
    assert_eq!(
        processes_with_env(marker.as_bytes()),
        vec![],
        "processes of the run survived it"
    );
    assert!(
        !model.fake.requests().is_empty(),
        "Codex reached the model before the timeout"
    );
}

#[tokio::test]
async fn a_missing_repository_ends_as_a_clone_failure() {
    let fx = fixtures().await;
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;
    let mut request = legacy_request(&fx, &sha256_hex(AK_SCRIPT.as_bytes()));
    request["repo_url"] = json!(fx.repo_url.replace("widget", "no-such-repo"));

    let (_, body) = bridge.post("/run_codex_session", &request).await;

    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["meta"]["reason"], "repo_clone_failed", "{body}");
    assert!(model.fake.requests().is_empty());
}

#[tokio::test]
async fn a_run_reports_the_diff_it_made() {
    let fx = fixtures().await;
    let fix = "sed -i 's/a - b/a + b/' widget.py && echo new > NOTES.md";
    let model = Model::start(Behavior::RunThenReply {
        command: fix.into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;

    let request = json!({"adapter": "codex", "prompt": "fix add", "repo": {"url": fx.repo_url, "ref": "main"}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    let diff = run["diff"].as_str().unwrap();
    assert!(
        diff.contains("-    return a - b") && diff.contains("+    return a + b"),
        "{diff}"
    );
    assert!(
        diff.contains("+++ b/NOTES.md"),
        "untracked files belong in the diff: {diff}"
    );
}

#[tokio::test]
async fn a_missing_login_fails_before_any_work() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    std::fs::remove_file(model.codex_dir.path().join("auth.json")).unwrap();
    let bridge = model.bridge().await;

    let (_, run) = bridge
        .post(
            "/v1/runs?wait=60",
            &json!({"adapter": "codex", "prompt": "hi"}),
        )
        .await;

    assert_eq!(run["outcome"], "failed", "{run}");
    assert_eq!(run["reason"], "credentials_missing");
    assert!(
        run["message"].as_str().unwrap().contains("auth.json"),
        "{run}"
    );
}

#[tokio::test]
async fn the_time_limit_covers_a_clone_that_never_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/stuck.git", listener.local_addr().unwrap());
    // Accept connections and never answer, as a wedged git server would.
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;

    let request = json!({"adapter": "codex", "prompt": "p", "repo": {"url": url}, "timeout_s": 2});
    let (_, run) = bridge.post("/v1/runs?wait=60", &request).await;

    assert_eq!(
        (&run["outcome"], &run["reason"]),
        (&json!("timed_out"), &json!("timed_out")),
        "{run}"
    );
    assert!(model.fake.requests().is_empty());
    held.abort();
}
