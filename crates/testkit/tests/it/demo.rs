//! The demo world: the `hb-testkit demo` command's contract with the demo script, and the
//! whole demo driven by the real Codex CLI the way the bridge will drive it.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use testkit::demo::{DEMO_COMMAND, Demo};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::{Codex, git, http, require_codex, scratch};

const KEY: &str = "sk-demo-key";

/// The command serves until stdin closes, and should stop soon after.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn demo_command_prints_where_things_are_and_stops_at_stdin_eof() {
    let state = scratch();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hb-testkit"))
        .args(["demo", "--api-key", KEY, "--state-dir"])
        .arg(state.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hb-testkit starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let line = BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .expect("stdout reads");
    let summary: Value = serde_json::from_str(&line.expect("one line")).expect("a JSON line");

    let codex_dir = std::path::Path::new(summary["codex_dir"].as_str().expect("codex_dir"));
    assert_eq!(
        codex_dir,
        state.path().join("codex").canonicalize().expect("exists")
    );
    let auth = std::fs::metadata(codex_dir.join("auth.json")).expect("auth.json written");
    assert_eq!(auth.permissions().mode() & 0o777, 0o600);
    let config = std::fs::read_to_string(codex_dir.join("config.toml")).expect("config written");
    assert!(config.contains(summary["model_base_url"].as_str().expect("model_base_url")));

    let tool_url = summary["tool_url"].as_str().expect("tool_url");
    let tool = http().get(tool_url).send().await.expect("tool downloads");
    let tool = tool.bytes().await.expect("tool body");
    assert_eq!(hex::encode(Sha256::digest(&tool)), summary["tool_sha256"]);
    assert!(
        summary["repo_url"]
            .as_str()
            .is_some_and(|url| url.ends_with("/demo.git"))
    );

    drop(child.stdin.take());
    let status = tokio::time::timeout(STOP_DEADLINE, child.wait()).await;
    let status = status.expect("stops after stdin EOF").expect("wait works");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn codex_runs_the_demo_tool_in_the_demo_repo() {
    let binary = require_codex!();
    let demo = Demo::start(KEY).await;
    let codex = Codex::new(binary, &demo.model);

    let workdir = codex.workdir.to_str().expect("scratch paths are UTF-8");
    let clone = git(&codex.home)
        .args(["clone", "--depth", "1", &demo.repo_url, workdir])
        .output()
        .await;
    assert!(clone.expect("git runs").status.success());
    install_tool(&codex.home, &demo).await;
    let run = codex.exec("Fix the bug in stats.py").await;

    assert_eq!(run.code, Some(0), "{run:#?}");
    let executed = run
        .events
        .iter()
        .find(|event| event["item"]["type"] == "command_execution");
    let command = executed.expect("codex ran a command")["item"]["command"].to_string();
    assert!(command.contains(DEMO_COMMAND), "{command}");
    let reply = run.messages().join("\n");
    assert!(reply.contains("ak 1.0.0 (demo tool)"), "{reply}");
    assert!(reply.contains("# Demo project"), "{reply}");
    assert_eq!(demo.files.hits("ak"), 1);
}

/// Downloads the tool into `~/bin` and puts that on PATH through `~/.profile`: Codex runs
/// commands from a login-shell snapshot, and as root Debian's /etc/profile resets PATH, so a
/// directory prepended to Codex's own PATH would be lost.
async fn install_tool(home: &std::path::Path, demo: &Demo) {
    let bin = home.join("bin");
    std::fs::create_dir_all(&bin).expect("home is writable");
    let tool = http()
        .get(demo.tool_url())
        .send()
        .await
        .expect("tool downloads");
    let tool = tool.bytes().await.expect("tool body");
    std::fs::write(bin.join("ak"), &tool).expect("home is writable");
    std::fs::set_permissions(bin.join("ak"), std::fs::Permissions::from_mode(0o755))
        .expect("home is writable");

    let profile = format!("export PATH=\"{}:$PATH\"\n", bin.display());
    std::fs::write(home.join(".profile"), profile).expect("home is writable");
}
