//! The git host against the real git client: shallow clones over smart HTTP work, protocol
//! v2 is spoken, and unknown repositories are refused.

use testkit::git::GitServer;

use crate::support::{git, scratch};

async fn git_stdout(home: &std::path::Path, args: &[&str]) -> String {
    let output = git(home).args(args).output().await.expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("git prints UTF-8 here")
}

#[tokio::test]
async fn shallow_clone_gets_the_files_on_main() {
    let server = GitServer::start().await;
    let files = [("README.md", "# Hello\n"), ("src/app.py", "print('hi')\n")];
    let url = server.create_repo("hello", &files);
    let dir = scratch();
    let clone = dir.path().join("clone");
    let clone_arg = clone.to_str().expect("scratch paths are UTF-8");

    let trace = git(dir.path())
        .env("GIT_TRACE_PACKET", "1")
        .args([
            "-c",
            "protocol.version=2",
            "clone",
            "--depth",
            "1",
            &url,
            clone_arg,
        ])
        .output()
        .await
        .expect("git runs");
    assert!(
        trace.status.success(),
        "{}",
        String::from_utf8_lossy(&trace.stderr)
    );
    assert!(
        String::from_utf8_lossy(&trace.stderr).contains("version 2"),
        "spoke protocol v2"
    );

    let readme = std::fs::read_to_string(clone.join("README.md")).expect("README.md cloned");
    assert_eq!(readme, "# Hello\n");
    assert!(clone.join("src/app.py").exists());
    let clone = clone.to_str().expect("scratch paths are UTF-8");
    assert_eq!(
        git_stdout(dir.path(), &["-C", clone, "branch", "--show-current"]).await,
        "main\n"
    );
    let shallow = ["-C", clone, "rev-parse", "--is-shallow-repository"];
    assert_eq!(git_stdout(dir.path(), &shallow).await, "true\n");
}

#[tokio::test]
async fn clone_of_an_unknown_repository_fails() {
    let server = GitServer::start().await;
    let url = server
        .create_repo("known", &[("a.txt", "a\n")])
        .replace("known", "unknown");
    let dir = scratch();

    let output = git(dir.path())
        .args(["clone", &url, "c"])
        .current_dir(dir.path())
        .output();
    let output = output.await.expect("git runs");
    assert!(!output.status.success());
}

#[tokio::test]
#[should_panic(expected = "repository name")]
async fn repository_names_cannot_leave_the_root() {
    let server = GitServer::start().await;
    server.create_repo("../escape", &[("a.txt", "a\n")]);
}
