//! `ssh://` repositories against a real OpenSSH server on loopback (testkit's `SshGitServer`):
//! the operator's key clones and then leaves the workspace before the CLI starts, and a key
//! the server refuses or a host key `known_hosts` does not trust ends the run at once as
//! `repo_auth_failed`. A profile CLI (`sh`) shows what a run can see.

use std::path::Path;

use headless_bridge::run::supervisor::{RUN_MARKER, processes_with_env};
use serde_json::{Value, json};
use tempfile::TempDir;
use testkit::git::SshGitServer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{BridgeBuilder, LogCapture, TestBridge, secrets_dir};

const README: &str = "ssh-readme-5e0c2a\n";
/// A run that fails before its CLI starts ends in well under this; the run's own timeout is
/// far longer, so the bound tells "at once" from "when the clone timed out".
const AT_ONCE_SECS: f64 = 30.0;

/// The operator's credentials for the server: `127.0.0.1.ssh` holding `key` and
/// `known_hosts` holding `known_hosts`, each unless it is `None`.
fn credentials(key: Option<&str>, known_hosts: Option<&str>) -> TempDir {
    let known_hosts = known_hosts.map(|line| format!("{line}\n"));
    let mut files: Vec<(&str, &str)> = key.map(|key| ("127.0.0.1.ssh", key)).into_iter().collect();
    files.extend(known_hosts.as_deref().map(|text| ("known_hosts", text)));
    secrets_dir(&files)
}

/// A bridge whose one profile, `show`, prints the clone's README and what is left of the
/// workspace's `secrets/`.
async fn bridge(credentials: &TempDir) -> (TestBridge, TempDir) {
    let profiles = tempfile::tempdir().expect("a temp dir");
    let script = "cat README.md; echo \"secrets: $(ls ../secrets 2>&1)\"";
    let profile = format!(
        "description = \"shows the clone\"\nexecutable = \"/bin/sh\"\nargs = [\"-c\", {script:?}]\n"
    );
    std::fs::write(profiles.path().join("show.toml"), profile).expect("write the profile");
    let bridge = BridgeBuilder::new()
        .var("HB_ADAPTERS_DIR", profiles.path().display().to_string())
        .var(
            "HB_GIT_CREDENTIALS_DIR",
            credentials.path().display().to_string(),
        )
        .start()
        .await;
    (bridge, profiles)
}

async fn run(bridge: &TestBridge, repo_url: &str) -> Value {
    let request = json!({"adapter": "show", "prompt": "-", "timeout_s": 120,
        "repo": {"url": repo_url}});
    bridge.run_to_end(&request).await
}

/// Seconds from the run's creation to its end, by its own timestamps.
fn duration_secs(run: &Value) -> f64 {
    let at = |field: &str| {
        let text = run[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {run}"));
        OffsetDateTime::parse(text, &Rfc3339).expect("an RFC 3339 time")
    };
    (at("finished_at") - at("created_at")).as_seconds_f64()
}

/// Live processes, other than this test binary, whose command line mentions `path`: git, the
/// ssh wrapper and ssh name the workspace's key and the bridge's helpers, the server's
/// `git-upload-pack` its repository.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()) && *pid != me)
        .filter_map(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect()
}

/// Asserts that nothing the run started is alive: the CLI (by the run's marker), git and ssh
/// (by the data directory in their arguments).
fn assert_nothing_left(bridge: &TestBridge, run: &Value) {
    let marker = format!("{RUN_MARKER}={}", run["id"].as_str().expect("an id"));
    assert_eq!(processes_with_env(marker.as_bytes()), vec![], "the CLI's");
    let left = processes_mentioning(bridge.data_dir());
    assert!(left.is_empty(), "git or ssh outlived the run: {left:?}");
}

/// The key's text and every line of it long enough to identify it.
fn key_fragments(key: &str) -> Vec<&str> {
    let whole = Some(key.trim()).filter(|key| !key.is_empty());
    let mut fragments: Vec<&str> = whole.into_iter().collect();
    fragments.extend(
        key.lines()
            .filter(|line| line.len() >= 20 && !line.contains("---")),
    );
    fragments
}

#[tokio::test]
async fn an_ssh_repository_is_cloned_with_the_operators_key_which_the_cli_never_sees() {
    let logs = LogCapture::start();
    let server = SshGitServer::start();
    let repo_url = server.create_repo("private", &[("README.md", README)]);
    let key = server.client_key();
    let creds = credentials(Some(&key), Some(&server.known_hosts_line()));
    let (bridge, _profiles) = bridge(&creds).await;

    let run = run(&bridge, &repo_url).await;

    assert_eq!(
        run["outcome"],
        "succeeded",
        "{run}\nsshd:\n{}",
        server.log()
    );
    let output = run["output"].as_str().expect("output");
    assert!(output.contains(README.trim()), "{output}");
    assert!(
        output.contains("secrets: ls: cannot access '../secrets': No such file or directory"),
        "the key was still in the workspace when the CLI ran: {output}"
    );
    assert!(
        server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
    let (_, listed) = bridge.get("/v1/runs?limit=5").await;
    let logged = logs.text();
    for fragment in key_fragments(&key) {
        assert!(!run.to_string().contains(fragment), "the key is in the run");
        assert!(!listed.to_string().contains(fragment), "the key is listed");
        assert!(!logged.contains(fragment), "the key is in the log");
    }
    assert_nothing_left(&bridge, &run);
    let repo_path = repo_url.split_once("127.0.0.1:").expect("a port").1;
    let repo_path = &repo_path[repo_path.find('/').expect("a path")..];
    assert_eq!(
        processes_mentioning(Path::new(repo_path)),
        Vec::<String>::new()
    );
}

/// What OpenSSH says in each case is asserted too: the message is the operator's only clue.
/// Without a key for the host the bridge refuses before ssh runs: git's default ssh would use
/// the bridge user's own keys and config.
#[rstest::rstest]
#[case::key_refused(
    Key::Unauthorized,
    Some(HostKey::Real),
    "Permission denied (publickey)"
)]
#[case::host_key_unknown(Key::Client, Some(HostKey::Missing), "No ED25519 host key is known")]
#[case::no_known_hosts(Key::Client, None, "No ED25519 host key is known")]
#[case::host_key_changed(Key::Client, Some(HostKey::Impostor), "has changed")]
#[case::no_key_stored(
    Key::NotStored,
    Some(HostKey::Real),
    "holds no ssh key for `127.0.0.1`"
)]
#[tokio::test]
async fn a_refused_key_or_an_untrusted_host_key_ends_as_repo_auth_failed_at_once(
    #[case] key: Key,
    #[case] host_key: Option<HostKey>,
    #[case] says: &str,
) {
    let server = SshGitServer::start();
    let repo_url = server.create_repo("private", &[("README.md", README)]);
    let key = match key {
        Key::Client => Some(server.client_key()),
        Key::Unauthorized => Some(server.unauthorized_key()),
        Key::NotStored => None,
    };
    let known_hosts = host_key.map(|host_key| match host_key {
        HostKey::Real => server.known_hosts_line(),
        HostKey::Impostor => server.impostor_known_hosts_line(),
        HostKey::Missing => String::new(),
    });
    let creds = credentials(key.as_deref(), known_hosts.as_deref());
    let (bridge, _profiles) = bridge(&creds).await;

    let run = run(&bridge, &repo_url).await;

    assert_eq!(run["reason"], "repo_auth_failed", "{run}");
    let message = run["message"].as_str().expect("a message");
    assert!(message.contains(says), "{message}");
    assert!(
        !run["output"]
            .as_str()
            .unwrap_or_default()
            .contains(README.trim())
    );
    let secs = duration_secs(&run);
    assert!(secs < AT_ONCE_SECS, "took {secs}s: {run}");
    for fragment in key_fragments(key.as_deref().unwrap_or_default()) {
        assert!(!run.to_string().contains(fragment), "the key is in the run");
    }
    assert_nothing_left(&bridge, &run);
}

/// Which private key the operator stored.
#[derive(Debug)]
enum Key {
    /// The one the server accepts.
    Client,
    /// One it has never seen.
    Unauthorized,
    /// None at all for its host.
    NotStored,
}

/// What the operator's `known_hosts` holds for the server's address.
#[derive(Debug)]
enum HostKey {
    Real,
    /// Another key: the server was replaced, or someone is in between.
    Impostor,
    /// Nothing: the file is empty.
    Missing,
}
