//! Workspaces that hold up: private repositories behind basic auth, submodules pinned to a
//! commit that is no branch tip, disk limits, tools from mirrors and archives, and artifacts,
//! each through a real run of the Codex CLI.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::faults::FaultServer;
use testkit::git::GitServer;
use testkit::model::Behavior;

use crate::support::{BridgeBuilder, LogCapture, Model, TestBridge, assert_no_canary, tar_gz};

/// The private repository's token: must show up nowhere but in git's Authorization header.
const TOKEN_CANARY: &str = "git-token-canary-8d2f61b7e4";
const README: &str = "private-readme-3b9e\n";

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .expect("a host")
        .to_owned()
}

/// An operator's credentials directory with `token` for the host of `repo_url`.
pub(crate) fn credentials_dir(repo_url: &str, token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join(host_port(repo_url));
    std::fs::write(&path, format!("{token}\n")).expect("write the token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    dir
}

async fn bridge_with(model: &Model, vars: &[(&'static str, String)]) -> TestBridge {
    let mut builder = BridgeBuilder::new().codex_dir(model.codex_dir.path());
    for (name, value) in vars {
        builder = builder.var(name, value.clone());
    }
    builder.start().await
}

#[tokio::test]
async fn a_private_repository_is_cloned_with_the_operators_token_which_leaks_nowhere() {
    let logs = LogCapture::start();
    let git = GitServer::start_with_password(TOKEN_CANARY).await;
    let repo_url = git.create_repo("private", &[("README.md", README)]);
    let creds = credentials_dir(&repo_url, TOKEN_CANARY);
    // The CLI tries hard to find the token: its environment, the workspace, git's config.
    let snoop = "cat README.md; (env; ls -la ..; cat ../secrets/* ../../*/secrets/*; \
                 git config --list --show-origin) > report.txt 2>&1; echo snooped";
    let model = Model::start(Behavior::RunThenReply {
        command: snoop.into(),
        yield_time_ms: 10_000,
    })
    .await;
    let creds_var = creds.path().display().to_string();
    let bridge = bridge_with(&model, &[("HB_GIT_CREDENTIALS_DIR", creds_var)]).await;

    let request = json!({"adapter": "codex", "prompt": "look around",
        "repo": {"url": repo_url}, "artifacts": ["report.txt"]});
    let (status, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(status, 200, "{run}");
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(
        run["output"]
            .as_str()
            .unwrap()
            .contains("private-readme-3b9e"),
        "{run}"
    );
    assert!(git.refused() >= 1, "the server asked for credentials first");
    let id = run["id"].as_str().unwrap();
    let (status, report) = bridge
        .get_bytes(&format!("/v1/runs/{id}/artifacts/report.txt"))
        .await;
    assert_eq!(status, 200);
    let report = String::from_utf8_lossy(&report);
    assert!(
        report.contains("HOME="),
        "the report holds the CLI's environment: {report}"
    );
    assert!(
        !report.contains(TOKEN_CANARY),
        "the token reached the CLI: {report}"
    );
    assert!(!run.to_string().contains(TOKEN_CANARY), "{run}");
    let (_, listed) = bridge.get("/v1/runs?limit=5").await;
    assert!(!listed.to_string().contains(TOKEN_CANARY));
    let logged = logs.text();
    assert!(
        logged.contains("run started"),
        "the log capture works: {logged}"
    );
    assert!(
        !logged.contains(TOKEN_CANARY),
        "the token is in the log: {logged}"
    );
    assert_no_canary(&run);
}

#[rstest::rstest]
#[case::wrong_token(Some("not-the-token-at-all"))]
#[case::no_token(None)]
#[tokio::test]
async fn an_authentication_failure_ends_as_repo_auth_failed_within_seconds(
    #[case] token: Option<&str>,
) {
    let git = GitServer::start_with_password(TOKEN_CANARY).await;
    let repo_url = git.create_repo("private", &[("README.md", README)]);
    let creds = credentials_dir(&repo_url, token.unwrap_or("unused"));
    let model = Model::start(Behavior::Reply("never asked".into())).await;
    let vars = match token {
        Some(_) => vec![("HB_GIT_CREDENTIALS_DIR", creds.path().display().to_string())],
        None => Vec::new(),
    };
    let bridge = bridge_with(&model, &vars).await;

    let started = Instant::now();
    let request = json!({"adapter": "codex", "prompt": "hi", "repo": {"url": repo_url}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["reason"], "repo_auth_failed", "{run}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(model.fake.requests().is_empty(), "the CLI never started");
}

/// Protocol v2 serves any reachable commit to a shallow fetch; a v0 host refuses a commit no
/// ref advertises, and the submodule is then fetched whole.
#[rstest::rstest]
#[case::protocol_v2(false, "shallow")]
#[case::protocol_v0(true, "fetched whole")]
#[tokio::test]
async fn a_submodule_pinned_to_a_commit_that_is_no_branch_tip_is_checked_out(
    #[case] v0_only: bool,
    #[case] how: &str,
) {
    let git = if v0_only {
        GitServer::start_protocol_v0().await
    } else {
        GitServer::start().await
    };
    git.create_repo("lib", &[("lib.txt", "lib-pinned-v1\n")]);
    let pinned = git.head("lib");
    git.commit("lib", &[("lib.txt", "lib-tip-v2\n")], "Move the tip on");
    let app = git.create_repo_with_submodule(
        "app",
        &[("README.md", "app\n")],
        ("vendor/lib", "../lib.git", &pinned),
    );
    let model = Model::start(Behavior::RunThenReply {
        command: "cat vendor/lib/lib.txt".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;

    let request = json!({"adapter": "codex", "prompt": "read",
        "repo": {"url": app, "submodules": true}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    let output = run["output"].as_str().unwrap();
    assert!(
        output.contains("lib-pinned-v1"),
        "the pinned commit, not the tip: {output}"
    );
    let logs = run["logs"].as_str().unwrap();
    let line = format!("checked out submodule vendor/lib ({how})");
    assert!(logs.contains(&line), "{logs}");
    assert!(run["diff"].as_str().unwrap().is_empty(), "{run}");
}

/// A ref may be a commit id, here one that no branch points at any more.
#[rstest::rstest]
#[case::protocol_v2(false)]
#[case::protocol_v0(true)]
#[tokio::test]
async fn a_commit_id_as_ref_checks_out_that_commit(#[case] v0_only: bool) {
    let git = if v0_only {
        GitServer::start_protocol_v0().await
    } else {
        GitServer::start().await
    };
    let repo_url = git.create_repo("lib", &[("lib.txt", "lib-old-commit-v1\n")]);
    let old = git.head("lib");
    git.commit("lib", &[("lib.txt", "lib-tip-v2\n")], "Move the tip on");
    let model = Model::start(Behavior::RunThenReply {
        command: "cat lib.txt".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;

    let request = json!({"adapter": "codex", "prompt": "read",
        "repo": {"url": repo_url, "ref": old}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(
        run["output"]
            .as_str()
            .unwrap()
            .contains("lib-old-commit-v1"),
        "{run}"
    );
    assert!(
        run["logs"].as_str().unwrap().contains(&format!("at {old}")),
        "{run}"
    );
}

#[tokio::test]
async fn nested_submodules_are_checked_out_level_by_level() {
    let git = GitServer::start().await;
    git.create_repo("core", &[("core.txt", "core-nested-5a1c\n")]);
    let core = git.head("core");
    git.create_repo_with_submodule(
        "lib",
        &[("lib.txt", "lib\n")],
        ("deps/core", "../core.git", &core),
    );
    let lib = git.head("lib");
    let app = git.create_repo_with_submodule(
        "app",
        &[("README.md", "app\n")],
        ("vendor/lib", "../lib.git", &lib),
    );
    let model = Model::start(Behavior::RunThenReply {
        command: "cat vendor/lib/deps/core/core.txt".into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = model.bridge().await;

    let request = json!({"adapter": "codex", "prompt": "read",
        "repo": {"url": app, "submodules": true}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(
        run["output"].as_str().unwrap().contains("core-nested-5a1c"),
        "{run}"
    );
    let logs = run["logs"].as_str().unwrap();
    assert!(
        logs.contains("checked out submodule vendor/lib/deps/core"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_submodule_url_the_policy_refuses_stops_the_clone() {
    let git = GitServer::start().await;
    let app = git.create_repo_with_submodule(
        "app",
        &[("README.md", "app\n")],
        ("vendor/x", "https://127.0.0.2/x.git", &"1".repeat(40)),
    );
    let model = Model::start(Behavior::Reply("never asked".into())).await;
    let bridge = model.bridge().await;

    let request = json!({"adapter": "codex", "prompt": "hi",
        "repo": {"url": app, "submodules": true}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["reason"], "repo_clone_failed", "{run}");
    assert!(
        run["message"].as_str().unwrap().contains("submodule URL"),
        "{run}"
    );
}

/// Text that git cannot compress much.
fn incompressible(len: usize) -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

#[tokio::test]
async fn a_clone_over_the_workspace_limit_ends_as_disk_full_and_the_bridge_stays_healthy() {
    let git = GitServer::start().await;
    // Far over the limit, which in turn is far over what a Codex run's own files take (its
    // home reached 1.3 MiB on a loaded machine).
    let big = incompressible(12 << 20);
    let repo_url = git.create_repo("big", &[("blob.txt", &big)]);
    let model = Model::start(Behavior::Reply("still fine".into())).await;
    // Workspaces are kept, so what is removed is what the disk-full path removed itself.
    let vars = [
        ("HB_WORKSPACE_MAX_BYTES", "6M".into()),
        ("HB_KEEP_WORKSPACES", "true".into()),
    ];
    let bridge = bridge_with(&model, &vars).await;

    let request = json!({"adapter": "codex", "prompt": "hi", "repo": {"url": repo_url}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["reason"], "workspace_disk_full", "{run}");
    let workspace = bridge
        .data_dir()
        .join("workspaces")
        .join(run["id"].as_str().unwrap());
    assert!(workspace.is_dir(), "kept on purpose");
    assert!(
        !workspace.join("work").exists(),
        "the partial clone is removed"
    );
    let response = reqwest::get(format!("{}/health", bridge.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, next) = bridge
        .post(
            "/v1/runs?wait=120",
            &json!({"adapter": "codex", "prompt": "hi"}),
        )
        .await;
    assert_eq!(
        next["outcome"], "succeeded",
        "the bridge carries on: {next}"
    );
}

#[tokio::test]
async fn tools_that_push_the_workspace_over_its_limit_end_the_run_before_the_cli() {
    let files = FaultServer::start().await;
    let tool = incompressible(256 << 10).into_bytes();
    files.add("/ak", tool.clone(), vec![]);
    let model = Model::start(Behavior::Reply("never asked".into())).await;
    let bridge = bridge_with(&model, &[("HB_WORKSPACE_MAX_BYTES", "64K".into())]).await;

    let digest = headless_bridge::digest::Sha256Digest::of(&tool).to_string();
    let request = json!({"adapter": "codex", "prompt": "hi",
        "tools": [{"name": "ak", "url": files.url("/ak"), "sha256": digest}]});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["reason"], "workspace_disk_full", "{run}");
    assert!(model.fake.requests().is_empty(), "the CLI never started");
}

#[tokio::test]
async fn too_little_free_space_refuses_to_start_a_clone() {
    let git = GitServer::start().await;
    let repo_url = git.create_repo("small", &[("README.md", "x\n")]);
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let vars = [("HB_WORKSPACE_MIN_FREE_BYTES", "1000000G".into())];
    let bridge = bridge_with(&model, &vars).await;

    let request = json!({"adapter": "codex", "prompt": "hi", "repo": {"url": repo_url}});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["reason"], "workspace_disk_full", "{run}");
    assert!(
        run["message"]
            .as_str()
            .unwrap()
            .contains("HB_WORKSPACE_MIN_FREE_BYTES")
    );
}

#[tokio::test]
async fn a_run_uses_a_tool_from_a_mirror_archive_and_its_artifacts_are_served_capped() {
    let files = FaultServer::start().await;
    let archive = tar_gz("ak-2.0/bin/ak", b"#!/bin/sh\necho \"ak-archive-ok $*\"\n");
    files.add("/mirror/ak.tar.gz", archive.clone(), vec![]);
    let digest = headless_bridge::digest::Sha256Digest::of(&archive).to_string();
    let make = "ak hello > fix.patch && head -c 4096 /dev/zero > big.bin && \
                ln -s /etc/passwd link && cat fix.patch";
    let model = Model::start(Behavior::RunThenReply {
        command: make.into(),
        yield_time_ms: 10_000,
    })
    .await;
    let bridge = bridge_with(&model, &[("HB_ARTIFACT_MAX_BYTES", "1024".into())]).await;

    let request = json!({"adapter": "codex", "prompt": "make a patch",
        "tools": [{"name": "ak", "url": files.url("/missing/ak.tar.gz"),
                   "mirrors": [files.url("/mirror/ak.tar.gz")],
                   "sha256": digest, "archive_path": "ak-2.0/bin/ak"}],
        "artifacts": ["fix.patch", "big.bin", "link", "never-written.txt"]});
    let (_, run) = bridge.post("/v1/runs?wait=120", &request).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(
        run["output"]
            .as_str()
            .unwrap()
            .contains("ak-archive-ok hello"),
        "{run}"
    );
    let kept: Vec<&Value> = run["artifacts"]
        .as_array()
        .expect("a list")
        .iter()
        .collect();
    assert_eq!(kept.len(), 1, "only the small regular file is kept: {run}");
    assert_eq!(kept[0]["path"], "fix.patch");
    let id = run["id"].as_str().unwrap();
    let (status, bytes) = bridge
        .get_bytes(&format!("/v1/runs/{id}/artifacts/fix.patch"))
        .await;
    assert_eq!(
        (status.as_u16(), bytes.as_slice()),
        (200, b"ak-archive-ok hello\n".as_slice())
    );
    for refused in [
        "big.bin",
        "link",
        "never-written.txt",
        "../../runs.sqlite3",
        "%2e%2e/x",
    ] {
        let (status, _) = bridge
            .get_bytes(&format!("/v1/runs/{id}/artifacts/{refused}"))
            .await;
        assert_eq!(status, 404, "{refused}");
    }
    let logs = run["logs"].as_str().unwrap();
    assert!(logs.contains("artifact `big.bin` not kept"), "{logs}");
    assert!(logs.contains("outside the work tree"), "{logs}");
}

/// The new request fields are checked before any work starts, each with its own code.
#[rstest::rstest]
#[case::artifact_parent(json!({"artifacts": ["../secrets/git-token"]}), "invalid_artifact_path")]
#[case::artifact_absolute(json!({"artifacts": ["/etc/passwd"]}), "invalid_artifact_path")]
#[case::artifacts_not_a_list(json!({"artifacts": "fix.patch"}), "invalid_field")]
#[case::submodules_not_bool(json!({"repo": {"url": "http://127.0.0.1:9/r.git", "submodules": "yes"}}), "invalid_field")]
#[case::ssh_unlisted(json!({"repo": {"url": "ssh://git@93.184.215.14/r.git"}}), "url_not_allowed")]
#[case::ref_lock(json!({"repo": {"url": "http://127.0.0.1:9/r.git", "ref": "main.lock"}}), "invalid_ref")]
#[case::mirror_private(tool(json!({"mirrors": ["https://10.0.0.1/ak"]})), "url_not_allowed")]
#[case::mirrors_not_a_list(tool(json!({"mirrors": "https://127.0.0.1/ak"})), "invalid_field")]
#[case::archive_path_escapes(tool(json!({"archive_path": "../ak"})), "invalid_field")]
#[case::sha512(tool(json!({"sha256": format!("sha512:{}", "a".repeat(128))})), "invalid_checksum_format")]
#[case::short_digest(tool(json!({"sha256": "abc123  ak"})), "invalid_checksum_format")]
#[tokio::test]
async fn new_request_fields_are_validated_up_front(#[case] fields: Value, #[case] code: &str) {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;
    let mut request = json!({"adapter": "codex", "prompt": "hi"});
    for (key, value) in fields.as_object().expect("an object") {
        request[key] = value.clone();
    }
    let (status, body) = bridge.post("/v1/runs", &request).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

/// A request's `tools` with one valid tool, changed by `changes`.
fn tool(changes: Value) -> Value {
    let mut tool = json!({"name": "ak", "url": "http://127.0.0.1:9/ak", "sha256": "a".repeat(64)});
    for (key, value) in changes.as_object().expect("an object") {
        tool[key] = value.clone();
    }
    json!({"tools": [tool]})
}
