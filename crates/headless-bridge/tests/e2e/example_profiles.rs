//! The example profiles shipped in `adapters/examples/` (gh, vercel, netlify, terraform): they
//! load as an operator would mount them, and the ones whose CLI is on this machine run for
//! real, offline. gh (Debian) is driven against a loopback fake of the GitHub API, vercel and
//! netlify (npm) against fakes of theirs; terraform plans a local module. Each test changes
//! only what points the shipped profile at the test's fakes and secrets, and says so.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tempfile::TempDir;
use testkit::git::GitServer;
use testkit::github::{FAKE_LOGIN, FakeGitHub};
use testkit::netlify::{FAKE_SITE_ID, FAKE_SITE_NAME, FakeNetlify};

use crate::support::{BridgeBuilder, TestBridge, agent_cli_bin, in_private_network, secrets_dir};

const TOKEN: &str = "ghp_canary0123456789abcdefABCDEF";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../adapters/examples")
}

/// The shipped profile `name`, changed by `edit`, written into a new adapters directory.
fn derived(name: &str, edit: impl FnOnce(&mut toml::Table)) -> TempDir {
    let text = std::fs::read_to_string(examples_dir().join(format!("{name}.toml"))).unwrap();
    let mut table: toml::Table = text.parse().unwrap();
    edit(&mut table);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{name}.toml")), table.to_string()).unwrap();
    dir
}

fn set_env(table: &mut toml::Table, name: &str, value: &str) {
    let env = table
        .entry("env")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    env.as_table_mut()
        .unwrap()
        .insert(name.into(), value.into());
}

async fn bridge_for(adapters: &Path) -> TestBridge {
    BridgeBuilder::new()
        .var("HB_ADAPTERS_DIR", adapters.display().to_string())
        .start()
        .await
}

async fn run(bridge: &TestBridge, adapter: &str, prompt: &str, repo: Option<&str>) -> Value {
    let mut request = json!({"adapter": adapter, "prompt": prompt});
    if let Some(url) = repo {
        request["repo"] = json!({"url": url});
    }
    let (status, run) = bridge.post("/v1/runs?wait=120", &request).await;
    assert_eq!(status, 200, "{run}");
    assert!(!run.to_string().contains(TOKEN), "the token leaked: {run}");
    run
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[tokio::test]
async fn every_example_profile_loads_and_is_listed_with_its_health() {
    let bridge = bridge_for(&examples_dir()).await;
    let (_, listed) = bridge.get("/v1/adapters").await;
    let names: Vec<&str> = listed["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "codex",
            "claude",
            "gemini",
            "gh",
            "netlify",
            "terraform",
            "vercel"
        ]
    );
    for adapter in listed["adapters"].as_array().unwrap().iter().skip(3) {
        let credentials = &adapter["health"]["credentials"];
        assert_eq!(
            credentials["reason"], "credentials_missing",
            "nothing is mounted: {adapter}"
        );
    }
}

/// gh reaches `api.github.localhost` over plain HTTP through the fake as its proxy.
fn gh_against(fake: &FakeGitHub, secrets: &Path) -> TempDir {
    derived("gh", |t| {
        t.insert("secrets_dir".into(), secrets.display().to_string().into());
        set_env(t, "GH_HOST", "github.localhost");
        set_env(t, "HTTP_PROXY", &fake.proxy_url());
    })
}

#[tokio::test]
async fn gh_calls_the_api_with_its_token_from_the_secret() {
    assert!(
        on_path("gh"),
        "gh is not installed: scripts/install-deps.sh installs it"
    );
    let fake = FakeGitHub::start(TOKEN).await;
    let secrets = secrets_dir(&[("token", TOKEN)]);
    let adapters = gh_against(&fake, secrets.path());
    let bridge = bridge_for(adapters.path()).await;

    let run = run(&bridge, "gh", "user", None).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    let user: Value = serde_json::from_str(run["output"].as_str().unwrap()).unwrap();
    assert_eq!(user["login"], FAKE_LOGIN);
    let calls = fake.calls();
    assert_eq!(calls[0].path, "/user");
    assert_eq!(
        calls[0].header("authorization"),
        Some(format!("token {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn gh_failures_map_to_reason_codes() {
    assert!(
        on_path("gh"),
        "gh is not installed: scripts/install-deps.sh installs it"
    );
    let fake = FakeGitHub::start(TOKEN).await;
    let wrong = secrets_dir(&[("token", "ghp_wrong0123456789abcdefABCDEF")]);
    let adapters = gh_against(&fake, wrong.path());
    let bridge = bridge_for(adapters.path()).await;
    let refused = run(&bridge, "gh", "user", None).await;
    assert_eq!(refused["reason"], "credentials_invalid", "{refused}");

    // Without GH_TOKEN gh exits 4 before any request, which the profile maps. (For
    // github.localhost it would send an unauthenticated request instead, so the default host
    // is kept; the proxy still catches anything it might send.)
    let adapters = derived("gh", |t| {
        t.remove("secret_env");
        set_env(t, "HTTPS_PROXY", &fake.proxy_url());
        set_env(t, "HTTP_PROXY", &fake.proxy_url());
    });
    let bridge_without = bridge_for(adapters.path()).await;
    let missing = run(&bridge_without, "gh", "user", None).await;
    assert_eq!(
        (&missing["reason"], &missing["exit_code"]),
        (&json!("credentials_missing"), &json!(4)),
        "{missing}"
    );
}

/// `gh auth login` without a token prints a URL and waits for a browser forever; the
/// profile's prompt detector ends it at once.
#[tokio::test]
async fn gh_waiting_for_a_browser_is_stopped_as_a_blocked_prompt() {
    assert!(
        on_path("gh"),
        "gh is not installed: scripts/install-deps.sh installs it"
    );
    let fake = FakeGitHub::start(TOKEN).await;
    let adapters = derived("gh", |t| {
        t.remove("secret_env");
        t.insert(
            "args".into(),
            toml::Value::Array(
                [
                    "auth",
                    "login",
                    "--hostname",
                    "github.localhost",
                    "--git-protocol",
                    "https",
                ]
                .map(toml::Value::from)
                .to_vec(),
            ),
        );
        set_env(t, "HTTP_PROXY", &fake.proxy_url());
    });
    let bridge = bridge_for(adapters.path()).await;
    let started = std::time::Instant::now();

    let run = run(&bridge, "gh", "unused", None).await;

    assert_eq!(run["reason"], "interactive_prompt_blocked", "{run}");
    assert!(
        started.elapsed().as_secs() < 30,
        "stopped at once, not at a timeout"
    );
}

#[tokio::test]
async fn terraform_plans_the_repository_and_a_missing_variable_is_a_usage_error() {
    if !on_path("terraform") {
        eprintln!("skipped: terraform is not installed (no package registry here ships it)");
        return;
    }
    let git = GitServer::start().await;
    let good = git.create_repo(
        "infra",
        &[("main.tf", "variable \"name\" {\n  default = \"x\"\n}\noutput \"greeting\" {\n  value = \"hi ${var.name}\"\n}\n")],
    );
    let bad = git.create_repo("broken", &[("main.tf", "variable \"name\" {}\n")]);
    let secrets = secrets_dir(&[("token", TOKEN)]);
    let adapters = derived("terraform", |t| {
        t.insert(
            "secrets_dir".into(),
            secrets.path().display().to_string().into(),
        );
    });
    let bridge = bridge_for(adapters.path()).await;

    let planned = run(&bridge, "terraform", "plan", Some(&good)).await;
    assert_eq!(planned["outcome"], "succeeded", "{planned}");
    assert!(
        planned["output"]
            .as_str()
            .unwrap()
            .contains("Changes to Outputs"),
        "{planned}"
    );

    let broken = run(&bridge, "terraform", "plan", Some(&bad)).await;
    assert_eq!(broken["reason"], "cli_usage_error", "{broken}");
}

#[tokio::test]
async fn an_invalid_profile_stops_start_up_with_its_file_and_line() {
    let adapters = tempfile::tempdir().unwrap();
    let path = adapters.path().join("broken.toml");
    std::fs::write(
        &path,
        "executable = \"gh\"\nargs = [\"api\", \"{token}\"]\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_headless-bridge"))
        .arg("serve")
        .env("HB_LISTEN", "127.0.0.1:0")
        .env("HB_DATA_DIR", data.path())
        .env("HB_ADAPTERS_DIR", adapters.path())
        .env("HB_LOG_FORMAT", "json")
        .output()
        .await
        .unwrap();

    assert_eq!(
        out.status.code(),
        Some(2),
        "configuration errors exit with 2"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "invalid adapter profile {}: line 2: `{{token}}`",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

/// Vercel 58.10.0 sends nothing beyond `--api` with the profile's telemetry and update
/// settings (checked with strace in a network namespace), so it can run here; the profile
/// only gains `--api` to reach the fake. The fake refuses the token as the real API does.
#[tokio::test]
async fn vercel_with_a_refused_or_malformed_token_is_credentials_invalid() {
    let vercel = crate::support::agent_cli_bin("vercel");
    let refusal =
        json!({"error": {"code": "forbidden", "message": "Not authorized", "invalidToken": true}});
    let fake = testkit::rest::FakeRest::start(403, refusal).await;
    let adapters_for = |token: &str| {
        let secrets = secrets_dir(&[
            ("token", token),
            ("org_id", "team_fake"),
            ("project_id", "prj_fake"),
        ]);
        let adapters = derived("vercel", |t| {
            t.insert("executable".into(), vercel.display().to_string().into());
            t.insert(
                "secrets_dir".into(),
                secrets.path().display().to_string().into(),
            );
            let args = t["args"].as_array_mut().unwrap();
            args.extend(["--api".into(), fake.base_url().into()]);
        });
        (secrets, adapters)
    };

    let (_secrets, adapters) = adapters_for(TOKEN);
    let bridge = bridge_for(adapters.path()).await;
    let refused = run(&bridge, "vercel", "preview", None).await;
    assert_eq!(refused["reason"], "credentials_invalid", "{refused}");
    let calls = fake.calls();
    assert_eq!(calls[0].path, "/v2/user");
    assert_eq!(
        calls[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    let (_secrets, adapters) = adapters_for("has-a-dash-0123456789");
    let bridge = bridge_for(adapters.path()).await;
    let malformed = run(&bridge, "vercel", "preview", None).await;
    assert_eq!(malformed["reason"], "credentials_invalid", "{malformed}");
    assert_eq!(
        fake.calls().len(),
        calls.len(),
        "a malformed token never leaves the CLI"
    );
}

/// How each example profile reads output its CLI was seen to print (shared/notes/other-clis.md
/// and runs in a network namespace), including lines the tests above cannot make the real CLI
/// print.
#[rstest::rstest]
#[case::netlify_refused("netlify", &[], &[" ›   Error: Unauthorized: could not retrieve project"], 1, Some("credentials_invalid"))]
#[case::netlify_deployed("netlify", &["{", "  \"site_id\": \"s\",", "  \"deploy_url\": \"https://d--s.example\"", "}"], &[], 0, None)]
#[case::vercel_dash_token("vercel", &[], &["Error: You defined \"--token\", but its contents are invalid. Must not contain: \"-\""], 2, Some("credentials_invalid"))]
#[case::vercel_logged_out("vercel", &[], &["> Logged out."], 1, Some("credentials_missing"))]
#[case::gh_bad_token("gh", &[r#"{"message":"Bad credentials"}"#], &["gh: Bad credentials (HTTP 401)"], 1, Some("credentials_invalid"))]
#[case::gh_no_token("gh", &[], &["To get started with GitHub CLI, please run:  gh auth login"], 4, Some("credentials_missing"))]
#[case::terraform_missing_variable("terraform", &[], &["Error: No value for required variable"], 1, Some("cli_usage_error"))]
#[case::terraform_other_error("terraform", &[], &["Error: Failed to query available provider packages"], 1, Some("cli_error"))]
fn example_profiles_map_observed_output_to_reasons(
    #[case] name: &str,
    #[case] stdout: &[&str],
    #[case] stderr: &[&str],
    #[case] exit: i32,
    #[case] reason: Option<&str>,
) {
    use headless_bridge::adapter::profile::Profile;
    use headless_bridge::adapter::{Adapter, Verdict};

    let profile = Profile::from_file(&examples_dir().join(format!("{name}.toml"))).unwrap();
    let mut reader = Adapter::Profile(std::sync::Arc::new(profile)).reader();
    stdout.iter().for_each(|line| drop(reader.observe(line)));
    stderr.iter().for_each(|line| reader.observe_stderr(line));

    match (reader.verdict(Some(exit)), reason) {
        (Verdict::Succeeded, None) => {}
        (Verdict::Failed { reason: got, .. }, Some(expected)) => {
            assert_eq!(got.as_str(), expected)
        }
        (verdict, _) => panic!("{name}: {verdict:?}, expected {reason:?}"),
    }
    if name == "netlify" && reason.is_none() {
        assert_eq!(reader.output(), "https://d--s.example");
    }
}

/// The shipped netlify profile pointed at `fake` (the only change: `NETLIFY_API_URL`, and the
/// pinned binary) with `secrets`.
///
/// netlify-cli cannot be pointed wholly at a fake: for any command with a site id,
/// `@netlify/config` also asks `https://api.netlifysdk.com` (hard-coded) for the site's
/// extensions. Every netlify test therefore runs in a network namespace of its own
/// ([`in_private_network`]), where that lookup fails at once; the CLI then resolves its
/// configuration without the API and finds the site by name (`GET /sites?name=`), which is why
/// the tests mount the site's name as `site_id`. An id there works only with that host up.
fn netlify_against(fake: &FakeNetlify, secrets: &Path) -> TempDir {
    derived("netlify", |t| {
        let netlify = agent_cli_bin("netlify");
        t.insert("executable".into(), netlify.display().to_string().into());
        t.insert("secrets_dir".into(), secrets.display().to_string().into());
        set_env(t, "NETLIFY_API_URL", &fake.api_url());
    })
}

/// Every request to the fake carried the mounted token, as the profile passes it.
fn assert_bearer(fake: &FakeNetlify, token: &str) {
    let calls = fake.calls();
    assert!(!calls.is_empty(), "the CLI reached the fake");
    let expected = format!("Bearer {token}");
    for call in calls {
        assert_eq!(
            call.header("authorization"),
            Some(expected.as_str()),
            "{call:?}"
        );
    }
}

#[tokio::test]
async fn netlify_deploys_the_repository_to_the_mounted_site_with_its_token() {
    if !in_private_network(
        "example_profiles::netlify_deploys_the_repository_to_the_mounted_site_with_its_token",
    ) {
        return;
    }
    let fake = FakeNetlify::start(TOKEN).await;
    let git = GitServer::start().await;
    let repo = git.create_repo("site", &[("index.html", "<h1>hello</h1>\n")]);
    let secrets = secrets_dir(&[("token", TOKEN), ("site_id", FAKE_SITE_NAME)]);
    let adapters = netlify_against(&fake, secrets.path());
    let bridge = bridge_for(adapters.path()).await;

    let (_, listed) = bridge.get("/v1/adapters").await;
    let netlify = listed["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "netlify")
        .unwrap();
    assert_eq!(netlify["health"]["ok"], true, "{netlify}");
    assert!(
        netlify["health"]["binary"]["version"]
            .as_str()
            .unwrap()
            .starts_with("netlify-cli/26.2.0 "),
        "{netlify}"
    );

    let run = run(&bridge, "netlify", "first deploy", Some(&repo)).await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    // The bridge hides every secret value in what it returns, the mounted site name too, and
    // the deploy URL holds that name. (With the site's id mounted, as in production, the URL
    // comes back whole.)
    let shown = FakeNetlify::deploy_url().replace(FAKE_SITE_NAME, "[REDACTED]");
    assert_eq!(run["output"], shown, "{run}");
    assert_eq!(
        fake.uploads()
            .get("index.html")
            .map(|b| String::from_utf8_lossy(b).into_owned()),
        Some("<h1>hello</h1>\n".to_owned()),
        "the checkout's file was uploaded"
    );
    let created = fake
        .calls()
        .into_iter()
        .find(|c| c.method == "POST" && c.path.ends_with("/deploys"))
        .expect("a deploy was created");
    assert_eq!(
        created.path,
        format!("/api/v1/sites/{FAKE_SITE_ID}/deploys")
    );
    assert_eq!(created.query.as_deref(), Some("title=first%20deploy"));
    assert_bearer(&fake, TOKEN);
}

#[tokio::test]
async fn netlify_with_a_refused_token_is_credentials_invalid() {
    if !in_private_network("example_profiles::netlify_with_a_refused_token_is_credentials_invalid")
    {
        return;
    }
    let fake = FakeNetlify::start(TOKEN).await;
    let wrong = "nfp_wrong0123456789abcdef";
    let secrets = secrets_dir(&[("token", wrong), ("site_id", FAKE_SITE_NAME)]);
    let adapters = netlify_against(&fake, secrets.path());
    let bridge = bridge_for(adapters.path()).await;

    let refused = run(&bridge, "netlify", "deploy", None).await;

    assert_eq!(refused["reason"], "credentials_invalid", "{refused}");
    assert!(!refused.to_string().contains(wrong), "{refused}");
    assert_bearer(&fake, wrong);
    assert!(
        fake.calls().iter().all(|c| c.method == "GET"),
        "nothing was deployed"
    );
}

/// Without a site id `netlify deploy` in CI would create a new site, so the profile requires
/// the secret: the bridge refuses the run before the CLI starts.
#[tokio::test]
async fn netlify_without_a_mounted_site_is_refused_before_the_cli_runs() {
    if !in_private_network(
        "example_profiles::netlify_without_a_mounted_site_is_refused_before_the_cli_runs",
    ) {
        return;
    }
    let fake = FakeNetlify::start(TOKEN).await;
    let secrets = secrets_dir(&[("token", TOKEN)]);
    let adapters = netlify_against(&fake, secrets.path());
    let bridge = bridge_for(adapters.path()).await;

    let refused = run(&bridge, "netlify", "deploy", None).await;

    assert_eq!(refused["reason"], "credentials_missing", "{refused}");
    assert_eq!(fake.calls(), [], "the CLI never started");
}

/// Commands that want a person (linking a folder to a site, setting one up) end at once as a
/// blocked prompt: `link` says so in CI, `init` draws its menu anyway.
#[rstest::rstest]
#[case::link(
    "link",
    "example_profiles::netlify_waiting_for_a_person_is_a_blocked_prompt::case_1_link"
)]
#[case::init(
    "init",
    "example_profiles::netlify_waiting_for_a_person_is_a_blocked_prompt::case_2_init"
)]
#[tokio::test]
async fn netlify_waiting_for_a_person_is_a_blocked_prompt(
    #[case] command: &str,
    #[case] test_name: &str,
) {
    if !in_private_network(test_name) {
        return;
    }
    let fake = FakeNetlify::start(TOKEN).await;
    let secrets = secrets_dir(&[("token", TOKEN)]);
    let adapters = derived("netlify", |t| {
        let netlify = agent_cli_bin("netlify");
        t.insert("executable".into(), netlify.display().to_string().into());
        t.insert(
            "secrets_dir".into(),
            secrets.path().display().to_string().into(),
        );
        set_env(t, "NETLIFY_API_URL", &fake.api_url());
        t.insert("args".into(), toml::Value::Array(vec![command.into()]));
        let secret_env = t["secret_env"].as_table_mut().unwrap();
        secret_env.remove("NETLIFY_SITE_ID");
    });
    let bridge = bridge_for(adapters.path()).await;
    let started = std::time::Instant::now();

    let run = run(&bridge, "netlify", "unused", None).await;

    assert_eq!(run["reason"], "interactive_prompt_blocked", "{run}");
    assert!(started.elapsed().as_secs() < 30, "stopped at once");
    assert_bearer(&fake, TOKEN);
}
