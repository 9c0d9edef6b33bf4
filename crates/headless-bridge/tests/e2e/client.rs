//! The client in the binary (`submit`, `runs`, `logs`, `cancel`), run as a real process
//! against a bridge running the real Codex CLI.

use std::process::Output;

use serde_json::{Value, json};
use testkit::faults::FaultServer;
use testkit::git::GitServer;
use testkit::model::Behavior;

use crate::support::{Model, TOKEN, TestBridge, tar_gz};

/// Runs `headless-bridge ARGS` as a client of `bridge`, with `HB_TOKEN` set to `token`.
async fn client(bridge_url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_headless-bridge"));
    command
        .args(args)
        .env_remove("HB_TOKEN")
        .env("HB_URL", bridge_url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("HB_TOKEN", token);
    }
    command.output().await.expect("the client runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "stdout is not JSON: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

#[tokio::test]
async fn submit_follows_a_real_run_and_prints_its_result() {
    let git = GitServer::start().await;
    let repo_url = git.create_repo("widget", &[("README.md", "readme-client-5e2\n")]);
    let model = Model::start(Behavior::RunThenReply {
        command: "cat README.md".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;

    let out = client(
        &bridge.url,
        Some(TOKEN),
        &[
            "submit",
            "--adapter",
            "codex",
            "--repo",
            &repo_url,
            "--ref",
            "main",
            "--contract-id",
            "c-client-1",
            "show the readme",
        ],
    )
    .await;

    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let record = stdout_json(&out);
    assert_eq!(record["outcome"], "succeeded", "{record}");
    assert_eq!(record["spec"]["repo"]["ref"], "main");
    assert!(
        record["output"]
            .as_str()
            .unwrap()
            .contains("readme-client-5e2")
    );
    for shown in ["submitted", "preparing", "running", "$ ", "succeeded"] {
        assert!(
            stderr.contains(shown),
            "progress lacks {shown:?}:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains('\x1b'),
        "no terminal codes when stderr is a pipe"
    );
    assert!(!stderr.contains(TOKEN) && !text(&out.stdout).contains(TOKEN));

    // The same run, through the other commands.
    let id = record["id"].as_str().unwrap();
    let listed = client(
        &bridge.url,
        Some(TOKEN),
        &["runs", "--contract-id", "c-client-1"],
    )
    .await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let table = text(&listed.stdout);
    assert!(table.contains(id) && table.contains("succeeded"), "{table}");
    let none = client(
        &bridge.url,
        Some(TOKEN),
        &["runs", "--adapter", "gemini", "--json"],
    )
    .await;
    assert_eq!(stdout_json(&none)["runs"], json!([]));
    let log = client(&bridge.url, Some(TOKEN), &["logs", id]).await;
    assert!(log.status.success());
    assert!(
        text(&log.stdout).contains("turn.completed"),
        "{}",
        text(&log.stdout)
    );
}

#[tokio::test]
async fn submit_prints_the_final_message_and_exits_nonzero_when_the_run_fails() {
    let model = Model::start(Behavior::Reply("just-the-message-81".into())).await;
    let bridge = model.bridge().await;
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), format!("{TOKEN}\n")).unwrap();
    let token_path = token_file.path().to_str().unwrap();

    let out = client(
        &bridge.url,
        None,
        &[
            "submit",
            "--token-file",
            token_path,
            "--final-message",
            "say it",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "just-the-message-81\n");

    let failing = Model::start(Behavior::Fail {
        code: "server_error".into(),
        message: "the model is down".into(),
    })
    .await;
    let bridge = failing.bridge().await;
    let out = client(&bridge.url, Some(TOKEN), &["submit", "try"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(stdout_json(&out)["outcome"], "failed");
    assert!(
        text(&out.stderr).contains("failed ("),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn logs_follow_a_run_to_its_end() {
    let model = Model::start(Behavior::RunThenReply {
        command: "for i in 1 2 3; do echo tick-$i; sleep 0.3; done".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;
    let (status, run) = bridge
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "tick"}))
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap();

    let out = client(&bridge.url, Some(TOKEN), &["logs", "-f", id]).await;

    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("tick-3"), "{stdout}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "turn.completed", "followed to the last event");
    assert!(text(&out.stderr).contains("succeeded"));
    let (_, after) = bridge.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(after["state"], "finished", "the follow ended with the run");
}

#[tokio::test]
async fn cancel_stops_a_run_that_hangs() {
    let model = Model::start(Behavior::Hang).await;
    let bridge = model.bridge().await;
    let (status, run) = bridge
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "hang"}))
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap();
    model.fake.wait_for_requests(1).await;

    let out = client(&bridge.url, Some(TOKEN), &["cancel", id]).await;

    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = stdout_json(&out);
    assert_eq!(record["outcome"], "cancelled", "{record}");
    assert_eq!(record["reason"], "cancelled");
    let again = client(&bridge.url, Some(TOKEN), &["cancel", id]).await;
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("409 run_finished"),
        "{}",
        text(&again.stderr)
    );
}

#[tokio::test]
async fn refusals_and_an_unreachable_bridge_are_clear_errors() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge: TestBridge = model.bridge().await;
    let wrong = "wrong-token-0123456789-canary";

    let out = client(&bridge.url, Some(wrong), &["runs"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refused the token") && stderr.contains("unauthorized"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "the token is never printed");

    let out = client(
        &bridge.url,
        Some(TOKEN),
        &["submit", "--adapter", "nope", "x"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("400 unknown_adapter"),
        "{}",
        text(&out.stderr)
    );
    assert!(model.fake.requests().is_empty(), "nothing ran");

    let out = client(&bridge.url, Some(TOKEN), &["logs", "not-a-run"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("404 run_not_found"));

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = client(&url, Some(TOKEN), &["runs"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("cannot reach the bridge"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn submit_gives_a_run_tools_from_a_mirror_archive_artifacts_and_an_idle_timeout() {
    let files = FaultServer::start().await;
    let archive = tar_gz("ak-2.0/bin/ak", b"#!/bin/sh\necho \"ak-client-ok $*\"\n");
    files.add("/mirror/ak.tar.gz", archive.clone(), vec![]);
    let digest = headless_bridge::digest::Sha256Digest::of(&archive);
    let model = Model::start(Behavior::RunThenReply {
        command: "ak hello > fix.patch && cat fix.patch".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;
    let (primary, mirror) = (
        files.url("/missing/ak.tar.gz"),
        files.url("/mirror/ak.tar.gz"),
    );

    let out = client(
        &bridge.url,
        Some(TOKEN),
        &[
            "submit",
            "--tool",
            &format!("ak={primary}"),
            "--tool-mirror",
            &format!("ak={mirror}"),
            "--tool-sha256",
            &format!("ak={}", digest.hex()),
            "--tool-archive-path",
            "ak=ak-2.0/bin/ak",
            "--artifact",
            "fix.patch",
            "--timeout",
            "120",
            "--idle-timeout",
            "90",
            "make a patch",
        ],
    )
    .await;

    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = stdout_json(&out);
    assert_eq!(record["outcome"], "succeeded", "{record}");
    let spec = &record["spec"];
    assert_eq!(
        spec["tools"],
        json!([{"name": "ak", "url": primary, "sha256": digest.to_string(),
                "mirrors": [mirror], "archive_path": "ak-2.0/bin/ak"}])
    );
    assert_eq!(
        (
            &spec["timeout_s"],
            &spec["idle_timeout_s"],
            &spec["artifacts"]
        ),
        (&json!(120), &json!(90), &json!(["fix.patch"]))
    );
    let id = record["id"].as_str().unwrap();
    let (status, patch) = bridge
        .get_bytes(&format!("/v1/runs/{id}/artifacts/fix.patch"))
        .await;
    assert_eq!(
        (status.as_u16(), patch.as_slice()),
        (200, b"ak-client-ok hello\n".as_slice())
    );
    assert_eq!(files.hits("/mirror/ak.tar.gz"), 1);
}

/// A flag the bridge would refuse is an error naming the flag, and nothing is sent: the
/// client is pointed at a listener that would hold any connection it made.
#[tokio::test]
async fn submit_refuses_a_bad_tool_artifact_or_idle_timeout_before_sending_anything() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let digest = format!("ak={}", "ab".repeat(32));
    let cases: [(&[&str], &str); 6] = [
        (&["--tool", "ak"], "'--tool <NAME=URL>'"),
        (
            &["--tool", "ak=tools.example.com/ak"],
            "'--tool <NAME=URL>'",
        ),
        (
            &["--tool", "ak=https://tools.example.com/ak"],
            "--tool-sha256 ak=",
        ),
        (&["--tool-sha256", &digest], "--tool-sha256 names tool `ak`"),
        (&["--artifact", "../etc/passwd"], "'--artifact <PATH>'"),
        (
            &["--timeout", "60", "--idle-timeout", "120"],
            "--idle-timeout 120",
        ),
    ];
    for (flags, named) in cases {
        let mut args = vec!["submit"];
        args.extend(flags);
        args.push("x");
        let out = client(&url, Some(TOKEN), &args).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{flags:?} should name {named}: {stderr}"
        );
    }
    let connected = listener.accept();
    assert!(
        connected
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "a client connected: {connected:?}"
    );
}
