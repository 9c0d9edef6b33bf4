//! The fetcher against a download server that misbehaves on purpose: resumption, retries,
//! mirrors, the cache, redirects, HTML pages, limits, archives, and the `fetch` command.

use std::path::Path;
use std::time::Duration;

use headless_bridge::digest::Sha256Digest;
use headless_bridge::fetch::{FetchError, FetchSettings, Fetcher, ToolSource};
use headless_bridge::policy::UrlPolicy;
use rstest::rstest;
use testkit::faults::{Fault, FaultServer};

/// Large enough that "half way" is many TCP segments in.
fn payload() -> Vec<u8> {
    (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn settings(cache: &Path) -> FetchSettings {
    FetchSettings {
        cache_dir: cache.to_owned(),
        total_timeout: Duration::from_secs(20),
        backoff_base: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        ..FetchSettings::default()
    }
}

fn fetcher(cache: &Path) -> Fetcher {
    Fetcher::new(UrlPolicy::new(["127.0.0.1"]), settings(cache))
}

fn source(name: &str, urls: &[String], bytes: &[u8]) -> ToolSource {
    ToolSource {
        name: name.into(),
        urls: urls.iter().map(|u| u.parse().expect("a URL")).collect(),
        sha256: Some(Sha256Digest::of(bytes)),
    }
}

/// Files left in a cache subdirectory.
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_where_it_stopped() {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add("/ak", bytes.clone(), vec![Fault::CloseHalfway]);
    let cache = tempfile::tempdir().unwrap();

    let fetched = fetcher(cache.path())
        .fetch(&source("ak", &[server.url("/ak")], &bytes))
        .await
        .expect("fetched after a resume");

    assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
    let seen = server.seen("/ak");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].range, None);
    let half = bytes.len() / 2;
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={half}-").as_str())
    );
}

#[rstest]
#[case::range_ignored(Fault::IgnoreRange, 2)]
#[case::wrong_content_range_start(Fault::WrongRangeStart, 3)]
#[tokio::test]
async fn a_bad_range_answer_starts_the_file_over(#[case] fault: Fault, #[case] requests: usize) {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add("/ak", bytes.clone(), vec![Fault::CloseHalfway, fault]);
    let cache = tempfile::tempdir().unwrap();

    let fetched = fetcher(cache.path())
        .fetch(&source("ak", &[server.url("/ak")], &bytes))
        .await
        .expect("fetched after starting over");

    assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
    let seen = server.seen("/ak");
    assert_eq!(seen.len(), requests, "{seen:?}");
    assert!(seen[1].range.is_some());
    assert!(
        seen.iter().all(|s| !s.authorization),
        "no credentials are ever sent"
    );
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried_with_backoff() {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add(
        "/ak",
        bytes.clone(),
        vec![Fault::Status(503), Fault::Status(429)],
    );
    let cache = tempfile::tempdir().unwrap();

    fetcher(cache.path())
        .fetch(&source("ak", &[server.url("/ak")], &bytes))
        .await
        .expect("fetched on the third try");
    assert_eq!(server.hits("/ak"), 3);
}

#[rstest]
#[case::not_found(Fault::HtmlErrorPage(404), 404)]
#[case::forbidden(Fault::Status(403), 403)]
#[tokio::test]
async fn client_errors_are_download_errors_and_not_retried(
    #[case] fault: Fault,
    #[case] status: u16,
) {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add("/ak", bytes.clone(), vec![fault]);
    let cache = tempfile::tempdir().unwrap();

    let err = fetcher(cache.path())
        .fetch(&source("ak", &[server.url("/ak")], &bytes))
        .await
        .expect_err("refused");

    let FetchError::Status { facts, .. } = &err else {
        panic!("expected a status error, got {err:?}");
    };
    assert_eq!(facts.status, status);
    assert_eq!(server.hits("/ak"), 1);
}

#[rstest]
#[case::labelled_html(Fault::HtmlErrorPage(200))]
#[case::html_labelled_binary(Fault::HtmlAsBinary)]
#[tokio::test]
async fn an_html_page_is_a_download_error_never_a_mismatch(#[case] fault: Fault) {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add("/ak", bytes.clone(), vec![fault]);
    let cache = tempfile::tempdir().unwrap();

    let err = fetcher(cache.path())
        .fetch(&source("ak", &[server.url("/ak")], &bytes))
        .await
        .expect_err("refused");

    assert!(matches!(err, FetchError::HtmlPage { .. }), "{err:?}");
    assert!(err.to_string().contains("html"), "{err}");
    assert_eq!(files_in(&cache.path().join("sha256")), 0);
}

#[tokio::test]
async fn a_mismatch_explains_itself_and_leaves_nothing_behind() {
    let server = FaultServer::start().await;
    server.add("/ak", b"#!/bin/sh\necho impostor\n".to_vec(), vec![]);
    let cache = tempfile::tempdir().unwrap();
    let expected = payload();

    let err = fetcher(cache.path())
        .fetch(&source(
            "ak",
            &[server.url("/ak?sig=url-canary-1")],
            &expected,
        ))
        .await
        .expect_err("mismatch");

    let FetchError::Mismatch {
        expected: want,
        actual,
        facts,
        ..
    } = &err
    else {
        panic!("expected a mismatch, got {err:?}");
    };
    assert_eq!(want, &Sha256Digest::of(&expected));
    assert_eq!(actual, &Sha256Digest::of(b"#!/bin/sh\necho impostor\n"));
    assert_eq!(facts.status, 200);
    assert_eq!(facts.final_host, "127.0.0.1");
    assert_eq!(facts.content_type, "application/octet-stream");
    assert_eq!(facts.size, 24);
    assert!(
        facts.preview.starts_with("#!/bin/sh\\necho impostor"),
        "{}",
        facts.preview
    );
    let message = err.to_string();
    assert!(
        !message.contains("url-canary-1"),
        "a URL's query is never shown: {message}"
    );
    assert_eq!(
        server.hits("/ak"),
        1,
        "a mismatch is never retried on the same URL"
    );
    assert_eq!(files_in(&cache.path().join("sha256")), 0);
    assert_eq!(files_in(&cache.path().join("partial")), 0);
}

#[tokio::test]
async fn mirrors_are_tried_and_the_last_good_one_goes_first_next_time() {
    let server = FaultServer::start().await;
    let (v1, v2) = (payload(), b"version two".to_vec());
    server.add("/primary/ak", b"wrong bytes".to_vec(), vec![]);
    server.add("/mirror/ak", v1.clone(), vec![]);
    let urls = [server.url("/primary/ak"), server.url("/mirror/ak")];
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());

    let fetched = fetcher
        .fetch(&source("ak", &urls, &v1))
        .await
        .expect("from the mirror");
    assert_eq!(fetched.from.as_deref(), Some(urls[1].as_str()));

    server.add("/primary/ak", v2.clone(), vec![]);
    server.add("/mirror/ak", v2.clone(), vec![]);
    fetcher
        .fetch(&source("ak", &urls, &v2))
        .await
        .expect("fetched");
    assert_eq!(
        server.hits("/primary/ak"),
        0,
        "the mirror worked last, so it goes first"
    );
    assert_eq!(server.hits("/mirror/ak"), 1);
}

#[tokio::test]
async fn concurrent_requests_for_one_digest_download_once_and_a_hit_needs_no_network() {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add("/ak", bytes.clone(), vec![]);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let wanted = source("ak", &[server.url("/ak")], &bytes);

    let all = futures::future::join_all((0..8).map(|_| fetcher.fetch(&wanted))).await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    assert_eq!(server.hits("/ak"), 1);

    drop(server);
    let hit = fetcher.fetch(&wanted).await.expect("a cache hit");
    assert_eq!(hit.from, None);
    assert_eq!(std::fs::read(hit.path).unwrap(), bytes);
}

/// Two fetchers on one cache stand for two processes (the server and a `fetch` command):
/// each has its own in-process locks, so only the file lock keeps them apart.
#[tokio::test]
async fn two_fetchers_sharing_a_cache_do_not_corrupt_each_others_download() {
    let server = FaultServer::start().await;
    let bytes = payload();
    let faults = vec![Fault::CloseHalfway, Fault::CloseHalfway, Fault::IgnoreRange];
    server.add("/ak", bytes.clone(), faults);
    let cache = tempfile::tempdir().unwrap();
    let (one, two) = (fetcher(cache.path()), fetcher(cache.path()));
    let wanted = source("ak", &[server.url("/ak")], &bytes);

    let (a, b) = tokio::join!(one.fetch(&wanted), two.fetch(&wanted));

    for fetched in [a, b] {
        let fetched = fetched.expect("both succeed");
        assert_eq!(std::fs::read(&fetched.path).unwrap(), bytes);
    }
    assert_eq!(
        files_in(&cache.path().join("partial")),
        0,
        "nothing is left behind"
    );
}

#[rstest]
#[case::loopback_name("localhost")]
#[case::other_loopback_address("127.0.0.2")]
#[tokio::test]
async fn a_redirect_to_a_host_the_policy_refuses_is_not_followed(#[case] host: &str) {
    let server = FaultServer::start().await;
    let bytes = payload();
    let port = server
        .url("/")
        .split(':')
        .nth(2)
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    // https, so the refusal comes from the address check, not the plain-http rule.
    let target = format!("https://{host}:{port}/ak");
    server.add("/start", Vec::new(), vec![Fault::RedirectTo(target)]);
    server.add("/ak", bytes.clone(), vec![]);
    let cache = tempfile::tempdir().unwrap();

    let err = fetcher(cache.path())
        .fetch(&source("ak", &[server.url("/start")], &bytes))
        .await
        .expect_err("refused");

    assert!(
        matches!(
            err,
            FetchError::Redirect { .. } | FetchError::NotAllowed { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("non-public"), "{err}");
    assert_eq!(
        server.hits("/ak"),
        0,
        "the redirect target was never reached"
    );
}

#[tokio::test]
async fn a_redirect_within_allowed_hosts_is_followed() {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add(
        "/start",
        Vec::new(),
        vec![Fault::RedirectTo(server.url("/ak"))],
    );
    server.add("/ak", bytes.clone(), vec![]);
    let cache = tempfile::tempdir().unwrap();

    fetcher(cache.path())
        .fetch(&source("ak", &[server.url("/start")], &bytes))
        .await
        .expect("followed");
    assert_eq!(server.hits("/ak"), 1);
}

#[tokio::test]
async fn a_trickling_server_meets_the_total_time_limit() {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add(
        "/ak",
        bytes.clone(),
        vec![Fault::Trickle(Duration::from_millis(20))],
    );
    let cache = tempfile::tempdir().unwrap();
    let settings = FetchSettings {
        total_timeout: Duration::from_millis(400),
        ..settings(cache.path())
    };
    let fetcher = Fetcher::new(UrlPolicy::new(["127.0.0.1"]), settings);

    let started = std::time::Instant::now();
    let err = fetcher
        .fetch(&source("ak", &[server.url("/ak")], &bytes))
        .await
        .expect_err("too slow");
    assert!(matches!(err, FetchError::TimedOut { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(files_in(&cache.path().join("sha256")), 0);
}

#[tokio::test]
async fn a_download_over_the_size_limit_is_cut_off() {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add("/ak", bytes.clone(), vec![Fault::Trickle(Duration::ZERO)]);
    let cache = tempfile::tempdir().unwrap();
    let settings = FetchSettings {
        max_bytes: 1000,
        ..settings(cache.path())
    };
    let fetcher = Fetcher::new(UrlPolicy::new(["127.0.0.1"]), settings);

    let err = fetcher
        .fetch(&source("ak", &[server.url("/ak")], &bytes))
        .await
        .expect_err("too large");
    assert!(
        matches!(err, FetchError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_archive_is_unpacked_and_its_executable_linked_into_bin() {
    let server = FaultServer::start().await;
    let archive = tar_gz(&[("ak-1.0/bin/ak", b"#!/bin/sh\necho ok\n")]);
    server.add("/ak.tar.gz", archive.clone(), vec![]);
    let cache = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    std::fs::create_dir(run.path().join("bin")).unwrap();

    let tool_dir = run.path().join("tools/ak");
    fetcher(cache.path())
        .install(
            &source("ak", &[server.url("/ak.tar.gz")], &archive),
            &run.path().join("bin/ak"),
            Some(("ak-1.0/bin/ak", tool_dir.as_path())),
        )
        .await
        .expect("installed");

    // Through sh, following the link: executing a file this thread has just written races
    // other tests' forks (ETXTBSY).
    let output = std::process::Command::new("/bin/sh")
        .arg(run.path().join("bin/ak"))
        .output()
        .expect("runs");
    assert_eq!(output.stdout, b"ok\n");
}

/// Anything running as the bridge's user can write to the cache; a changed file is never
/// installed, but dropped and fetched again.
#[tokio::test]
async fn a_cache_file_changed_behind_the_bridges_back_is_fetched_again() {
    let server = FaultServer::start().await;
    let bytes = payload();
    server.add("/ak", bytes.clone(), vec![]);
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(cache.path());
    let wanted = source("ak", &[server.url("/ak")], &bytes);
    let cached = fetcher.fetch(&wanted).await.expect("fetched").path;
    std::fs::write(&cached, b"#!/bin/sh\necho poisoned\n").unwrap();
    let run = tempfile::tempdir().unwrap();

    let dest = run.path().join("ak");
    fetcher
        .install(&wanted, &dest, None)
        .await
        .expect("installed");

    assert_eq!(std::fs::read(&dest).unwrap(), bytes);
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        bytes,
        "the cache is repaired"
    );
    assert_eq!(server.hits("/ak"), 2);
}

fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// The `fetch` command: exit codes and its one line of JSON.
mod command {
    use tokio::process::Command;

    use super::*;

    async fn fetch_command(cache: &Path, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_headless-bridge"))
            .arg("fetch")
            .args(args)
            .env_clear()
            .env("HB_TOOL_CACHE_DIR", cache)
            .env("HB_ALLOWED_HOSTS", "127.0.0.1")
            .env("HB_DATA_DIR", cache)
            .output()
            .await
            .expect("the binary runs")
    }

    #[tokio::test]
    async fn fetches_verifies_and_maps_failures_to_exit_codes() {
        let server = FaultServer::start().await;
        let bytes = payload();
        server.add("/ak", bytes.clone(), vec![]);
        server.add("/page", Vec::new(), vec![Fault::HtmlErrorPage(404)]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ak");
        let (url, out_text) = (server.url("/ak"), out.display().to_string());
        let digest = Sha256Digest::of(&bytes).to_string();

        let ok = fetch_command(dir.path(), &[&url, "--sha256", &digest, "-o", &out_text]).await;
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON");
        assert_eq!(line["sha256"], digest);
        assert_eq!(std::fs::read(&out).unwrap(), bytes);

        // Without a digest it still works, and says what the digest was.
        let unpinned = fetch_command(dir.path(), &[&url, "-o", &out_text]).await;
        let line: serde_json::Value = serde_json::from_slice(&unpinned.stdout).expect("JSON");
        assert_eq!(line["sha256"], digest);

        let wrong = Sha256Digest::of(b"other").to_string();
        let mismatch =
            fetch_command(dir.path(), &[&url, "--sha256", &wrong, "-o", &out_text]).await;
        assert_eq!(mismatch.status.code(), Some(3));
        let page = fetch_command(dir.path(), &[&server.url("/page"), "-o", &out_text]).await;
        assert_eq!(page.status.code(), Some(4));
        let refused = fetch_command(dir.path(), &["https://127.0.0.2/x", "-o", &out_text]).await;
        assert_eq!(refused.status.code(), Some(2));
        assert_eq!(
            std::fs::read(&out).unwrap(),
            bytes,
            "failures never touch the output"
        );
    }
}
