//! The runs page at `/`: its headers over HTTP, and the page itself in headless Chromium
//! (Debian's `chromium`, driven by playwright-core from `scripts/install-playwright.sh`)
//! watching a real Codex run finish live, cancelling one, and taking over a real bash session
//! in its browser terminal.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use testkit::git::GitServer;
use testkit::model::Behavior;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

use crate::sessions::{leftovers, screen_when, start, text};
use crate::support::{BridgeBuilder, Model, TOKEN};

/// Debian's Chromium launcher, installed by `scripts/install-deps.sh`.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Everything the browser script does, Chromium's start included, on a loaded 2-core machine.
const BROWSER_DEADLINE: Duration = Duration::from_secs(180);
/// Markup a run prints, which the page must show as text and never run.
const INJECTED: &str =
    r#"<img src=x onerror="window.__hbInjected=1"><script>window.__hbInjected=2</script>"#;
/// A python3 program that asks a person, for a session waiting for input.
const ASKER: &str = "answer = input('Favourite colour? ')\nprint('you like ' + answer)\n";

#[tokio::test]
async fn the_runs_page_is_served_without_a_token_under_a_strict_policy() {
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let bridge = model.bridge().await;

    let page = bridge
        .client
        .get(format!("{}/", bridge.url))
        .send()
        .await
        .expect("the bridge answers");
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let policy = headers["content-security-policy"].to_str().expect("ASCII");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self';"), "{policy}");
    let html = page.text().await.expect("a body");
    assert!(html.contains(r#"<body data-auth="token">"#), "{html}");

    for (path, content_type) in [
        ("/assets/page.js", "text/javascript; charset=utf-8"),
        ("/assets/terminal.js", "text/javascript; charset=utf-8"),
        ("/assets/page.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let asset = bridge
            .client
            .get(format!("{}{path}", bridge.url))
            .send()
            .await
            .expect("the bridge answers");
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(asset.headers()["content-type"], content_type, "{path}");
        assert_eq!(asset.headers()["x-content-type-options"], "nosniff");
    }

    // The data stays behind the token.
    let runs = bridge
        .client
        .get(format!("{}/v1/runs", bridge.url))
        .send()
        .await
        .expect("the bridge answers");
    assert_eq!(runs.status(), 401);
}

#[tokio::test]
async fn the_runs_page_shows_a_run_finishing_live_in_chromium() {
    let git = GitServer::start().await;
    let repo_url = git.create_repo("widget", &[("README.md", "# widget\n")]);
    let model = Model::start(Behavior::RunThenReply {
        command: format!("printf '%s\\n' '{INJECTED}' | tee notes.html"),
        yield_time_ms: 10_000,
    })
    .await;
    model.fake.hold_answers();
    let bridge = model.bridge().await;

    let prompt = "Write <b>notes.html</b>";
    let body = json!({"adapter": "codex", "prompt": prompt, "repo": {"url": repo_url}});
    let (status, run) = bridge.post("/v1/runs", &body).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("an id").to_owned();
    wait_for_model_request(&model).await;

    let browser = BrowserScript {
        scenario: "live",
        token: TOKEN,
        screenshot: "runs-page.png",
    };
    let steps = browser
        .run(&bridge.url, &[("RUN_ID", &id)], async |step: &str| {
            if step == "running-on-screen" {
                // The page shows the run as running while the model still holds its answer.
                let (_, now) = bridge.get(&format!("/v1/runs/{id}")).await;
                assert_eq!(now["state"], "running", "{now}");
                model.fake.release_answers();
            }
        })
        .await;
    assert_eq!(
        steps,
        [
            "asked-for-token",
            "running-on-screen",
            "finished-on-screen",
            "screenshot"
        ]
    );

    let (_, finished) = bridge.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(finished["outcome"], "succeeded", "{finished}");
    assert!(
        finished["output"].as_str().unwrap().contains(INJECTED),
        "{finished}"
    );
}

#[tokio::test]
async fn the_runs_page_cancels_a_run_on_an_open_loopback_bridge() {
    let model = Model::start(Behavior::Reply("never sent".into())).await;
    model.fake.hold_answers();
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_API_TOKEN", "")
        .start()
        .await;
    let (status, run) = bridge
        .post("/v1/runs", &json!({"adapter": "codex", "prompt": "wait"}))
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("an id").to_owned();
    wait_for_model_request(&model).await;

    let browser = BrowserScript {
        scenario: "cancel",
        token: "",
        screenshot: "runs-page-cancel.png",
    };
    let steps = browser
        .run(&bridge.url, &[("RUN_ID", &id)], async |_: &str| {})
        .await;
    assert_eq!(
        steps,
        ["running-on-screen", "cancelled-on-screen", "screenshot"]
    );

    let (_, cancelled) = bridge.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(cancelled["outcome"], "cancelled", "{cancelled}");
}

#[tokio::test]
async fn the_runs_page_takes_over_a_bash_session_in_its_browser_terminal() {
    // Codex gets a login only so that the page's deep health check is green: the browser
    // must log no error at all.
    let model = Model::start(Behavior::Reply("unused".into())).await;
    let profiles = session_profiles();
    let bridge = BridgeBuilder::new()
        .codex_dir(model.codex_dir.path())
        .var("HB_ADAPTERS_DIR", profiles.path().display().to_string())
        .start()
        .await;
    let asker = start(&bridge, json!({"adapter": "asker"})).await;
    let waiting = screen_when(&bridge, &asker, "settled").await;
    assert_eq!(waiting["state"], "waiting_for_input", "{waiting}");
    let id = start(&bridge, json!({"adapter": "shell", "rows": 24, "cols": 80})).await;
    screen_when(&bridge, &id, "idle").await;

    let browser = BrowserScript {
        scenario: "terminal",
        token: TOKEN,
        screenshot: "runs-page-terminal.png",
    };
    let vars = [("SESSION_ID", id.as_str()), ("ASKER_ID", asker.as_str())];
    let steps = browser
        .run(&bridge.url, &vars, async |step: &str| {
            let (_, screen) = bridge.get(&format!("/v1/sessions/{id}/screen")).await;
            let lines = text(&screen);
            match step {
                // What the page typed reached bash, as the bridge's own screen shows.
                "typed" => assert!(lines.lines().any(|l| l == "hi-from-browser"), "{lines}"),
                // The pty has the page's size: `stty size` printed the emulator's size.
                "resized" => {
                    let size = format!("{} {}", screen["rows"], screen["cols"]);
                    assert_ne!(size, "24 80", "the terminal was resized");
                    assert!(lines.lines().any(|l| l == size), "{size} in\n{lines}");
                }
                _ => {}
            }
        })
        .await;
    assert_eq!(
        steps,
        [
            "sessions-listed",
            "watching",
            "attached",
            "typed",
            "interrupted",
            "recalled",
            "pasted",
            "drawn-as-text",
            "resized",
            "cast-downloaded",
            "taken-over-again",
            "ended",
            "screenshot"
        ]
    );

    let (_, record) = bridge.get(&format!("/v1/sessions/{id}")).await;
    assert_eq!(record["state"], "exited", "{record}");
    assert_eq!(record["reason"], "deleted", "{record}");
    assert_eq!(leftovers(&id), 0, "the session's processes are gone");
    let (_, still) = bridge.get(&format!("/v1/sessions/{asker}")).await;
    assert_eq!(still["state"], "waiting_for_input", "{still}");
}

/// Profiles for the session test: `shell` (bash without startup files) and `asker`, a
/// python3 program whose question needs a person.
fn session_profiles() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = dir.path().join("asker.py");
    std::fs::write(&script, ASKER).expect("write the asker");
    std::fs::write(
        dir.path().join("shell.toml"),
        "executable = \"/bin/bash\"\n[session]\nargs = [\"--norc\", \"--noprofile\"]\nquiet_ms = 300\n",
    )
    .expect("write the shell profile");
    let asker = format!(
        "executable = \"/usr/bin/python3\"\n[session]\nargs = [\"{}\"]\nquiet_ms = 300\n\
         [[session.expect]]\npattern = 'Favourite colour\\?'\nask_person = true\n",
        script.display()
    );
    std::fs::write(dir.path().join("asker.toml"), asker).expect("write the asker profile");
    dir
}

/// Waits until Codex's request for a model answer has reached the fake model, which holds it:
/// from then on the run is running and waiting.
async fn wait_for_model_request(model: &Model) {
    let mut count = 1;
    loop {
        let requests = model.fake.wait_for_requests(count).await;
        if requests.iter().any(|r| r.path.ends_with("/responses")) {
            return;
        }
        count = requests.len() + 1;
    }
}

/// Where tests keep files for people to look at: `target/test-artifacts/`.
fn artifacts_dir() -> PathBuf {
    // The test binary lives in `<target>/<profile>/deps/`.
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary is under target/<profile>/deps");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// `runs_page.cjs` in one scenario, with Node, playwright-core and Chromium as the project's
/// scripts install them.
struct BrowserScript {
    scenario: &'static str,
    /// The API token to sign in with; empty for an open bridge.
    token: &'static str,
    /// The PNG's file name under `target/test-artifacts/`.
    screenshot: &'static str,
}

impl BrowserScript {
    /// Runs the script against `url` with `vars` (the ids it works on), calling `on_step` for
    /// each step it reports as it reports it, and returns the steps once it has succeeded.
    async fn run(
        &self,
        url: &str,
        vars: &[(&str, &str)],
        mut on_step: impl AsyncFnMut(&str),
    ) -> Vec<String> {
        let screenshot = artifacts_dir().join(self.screenshot);
        let _ = std::fs::remove_file(&screenshot);
        let mut child = self
            .command(url, vars, &screenshot)
            .spawn()
            .expect("node starts");
        let group = ProcessGroup(child.id().expect("node is running"));
        // Drained as it comes, so a chatty script never blocks on a full pipe.
        let mut stderr = child.stderr.take().expect("piped");
        let errors = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();

        let mut steps = Vec::new();
        let finished = tokio::time::timeout(BROWSER_DEADLINE, async {
            while let Some(line) = lines.next_line().await.expect("read the script's output") {
                if let Some(step) = line.strip_prefix("step: ") {
                    on_step(step).await;
                    steps.push(step.to_owned());
                }
            }
            child.wait().await.expect("node exits")
        })
        .await;
        let Ok(exit) = finished else {
            drop(group);
            panic!(
                "the browser script did not finish: {}",
                errors.await.unwrap_or_default()
            );
        };
        let errors = errors.await.expect("the stderr reader ends");
        assert!(
            exit.success(),
            "the browser script failed ({exit}):\n{errors}"
        );
        let png = std::fs::read(&screenshot).expect("the screenshot is kept");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
        steps
    }

    /// The script for this bridge and these ids, in its own process group so that the
    /// browser it starts can be stopped with it.
    fn command(
        &self,
        url: &str,
        vars: &[(&str, &str)],
        screenshot: &Path,
    ) -> tokio::process::Command {
        let node_modules =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/playwright/node_modules");
        assert!(
            node_modules.join("playwright-core").exists(),
            "playwright-core is not installed: run scripts/install-playwright.sh (scripts/test.sh does)"
        );
        assert!(
            Path::new(CHROMIUM).exists(),
            "chromium is not installed: run scripts/install-deps.sh (scripts/test.sh does)"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/runs_page.cjs");
        let mut command = tokio::process::Command::new("node");
        command
            .arg(script)
            .env("NODE_PATH", node_modules)
            .env("SCENARIO", self.scenario)
            .env("BRIDGE_URL", url)
            .env("BRIDGE_TOKEN", self.token)
            .envs(vars.iter().copied())
            .env("CHROMIUM", CHROMIUM)
            .env("SCREENSHOT", screenshot)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }
}

/// Kills a process group when dropped, so a failed test leaves no browser behind.
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(i32::try_from(self.0).expect("a pid fits i32"));
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}
