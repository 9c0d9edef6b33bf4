//! The ssh git host against the real git and OpenSSH clients: the client key clones over
//! protocol v2 with strict host key checking, another key is refused, and nothing of sshd
//! outlives the server.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use testkit::git::SshGitServer;

use crate::support::{git, scratch};

/// Writes `key` (0600, which ssh insists on) and `known_hosts` into `dir` and returns an ssh
/// command that uses those alone.
fn ssh_command(dir: &Path, key: &str, known_hosts: &str) -> String {
    let key_path = dir.join("key");
    std::fs::write(&key_path, key).expect("write the key");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let known_hosts_path = dir.join("known_hosts");
    std::fs::write(&known_hosts_path, format!("{known_hosts}\n")).expect("write known_hosts");
    format!(
        "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
         -o GlobalKnownHostsFile=/dev/null -o UserKnownHostsFile={} -i {}",
        known_hosts_path.display(),
        key_path.display()
    )
}

#[tokio::test]
async fn the_client_key_clones_over_protocol_v2_and_nothing_outlives_the_server() {
    let server = SshGitServer::start();
    let url = server.create_repo("hello", &[("README.md", "# over ssh\n")]);
    let dir = scratch();
    let ssh = ssh_command(dir.path(), &server.client_key(), &server.known_hosts_line());
    let clone = dir.path().join("clone");

    let output = git(dir.path())
        .env("GIT_SSH_COMMAND", ssh)
        .env("GIT_TRACE_PACKET", "1")
        .args(["-c", "protocol.version=2", "clone", "--depth", "1", &url])
        .arg(&clone)
        .output()
        .await
        .expect("git runs");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}\nsshd:\n{}", server.log());
    assert!(stderr.contains("version 2"), "spoke protocol v2");
    let readme = std::fs::read_to_string(clone.join("README.md")).expect("cloned");
    assert_eq!(readme, "# over ssh\n");
    assert!(
        server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );

    let pid = server.pid();
    drop(server);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sshd {pid} is reaped"
    );
}

#[tokio::test]
async fn another_key_is_refused_by_the_server() {
    let server = SshGitServer::start();
    let url = server.create_repo("hello", &[("README.md", "x\n")]);
    let dir = scratch();
    let ssh = ssh_command(
        dir.path(),
        &server.unauthorized_key(),
        &server.known_hosts_line(),
    );

    let output = git(dir.path())
        .env("GIT_SSH_COMMAND", ssh)
        .args(["clone", &url])
        .arg(dir.path().join("clone"))
        .output()
        .await
        .expect("git runs");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
    assert!(
        server.log().contains("Failed publickey"),
        "{}",
        server.log()
    );
}
