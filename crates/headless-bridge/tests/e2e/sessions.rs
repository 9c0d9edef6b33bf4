//! Interactive sessions with real programs on a real pseudo-terminal: a python3 script that
//! asks with input(), a bash read loop, Debian's dialog (a curses program), a spinner that
//! never settles, and a program killed from outside. Every test waits on the session's state
//! (or polls its record with a deadline), never on a fixed sleep, and checks that no process
//! of the session is left.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use headless_bridge::run::supervisor::{RUN_MARKER, processes_with_env};
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{BridgeBuilder, TOKEN, TestBridge};

/// Asks whether to trust the folder (an expect rule answers), then a name (idle: nobody
/// answers for it), then a colour (a rule hands it to a person), then greets and exits.
const ASKER: &str = r#"
import sys
if input("Trust this folder? [y/n] ") != "y":
    sys.exit(9)
name = input("What is your name? ")
colour = input("Favourite colour? ")
print(f"Hello {name}, you like {colour}")
"#;

/// Prints a spinner frame every 50 ms, forever.
const SPINNER: &str = r#"
import itertools, sys, time
for frame in itertools.cycle("|/-\\"):
    sys.stdout.write("\rworking " + frame)
    sys.stdout.flush()
    time.sleep(0.05)
"#;

/// Profiles for the test programs, and the scripts they run.
struct Programs {
    dir: TempDir,
}

impl Programs {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let scripts = dir.path().join("scripts");
        std::fs::create_dir(&scripts).unwrap();
        std::fs::write(scripts.join("asker.py"), ASKER).unwrap();
        std::fs::write(scripts.join("spinner.py"), SPINNER).unwrap();
        let profiles = dir.path().join("adapters");
        std::fs::create_dir(&profiles).unwrap();
        let script = |name: &str| scripts.join(name).display().to_string();
        let write = |name: &str, text: String| {
            std::fs::write(profiles.join(format!("{name}.toml")), text).unwrap()
        };
        write(
            "asker",
            format!(
                r#"executable = "/usr/bin/python3"
[session]
args = ["{}"]
quiet_ms = 300
[[session.expect]]
pattern = 'Trust this folder\? \[y/n\]'
send = "y\r"
[[session.expect]]
pattern = 'Favourite colour\?'
ask_person = true
"#,
                script("asker.py")
            ),
        );
        write(
            "spinner",
            format!(
                "executable = \"/usr/bin/python3\"\n[session]\nargs = [\"{}\"]\nquiet_ms = 300\n",
                script("spinner.py")
            ),
        );
        // A read loop with a ready pattern: idle is "the prompt shows", not silence.
        write(
            "readloop",
            r#"executable = "/bin/bash"
[session]
args = ["--norc", "--noprofile", "-c", 'while read -r -p "> " line; do [ "$line" = quit ] && exit 3; echo "you said: $line"; done']
ready_pattern = '(?m)^>$'
"#
            .to_owned(),
        );
        write(
            "menu",
            r#"executable = "/usr/bin/dialog"
[session]
args = ["--output-fd", "1", "--menu", "Pick a fruit", "12", "40", "3", "a", "Apple", "b", "Banana", "c", "Cherry"]
quiet_ms = 400
"#
            .to_owned(),
        );
        write(
            "flood",
            "executable = \"/usr/bin/yes\"\n[session]\nargs = [\"flooding the terminal\"]\n"
                .to_owned(),
        );
        Self { dir }
    }

    fn adapters(&self) -> String {
        self.dir.path().join("adapters").display().to_string()
    }

    async fn bridge(&self) -> TestBridge {
        self.builder().start().await
    }

    fn builder(&self) -> BridgeBuilder {
        BridgeBuilder::new().var("HB_ADAPTERS_DIR", self.adapters())
    }
}

/// Starts a session of `adapter` and returns its id.
pub(crate) async fn start(bridge: &TestBridge, body: Value) -> String {
    let (status, record) = bridge.post("/v1/sessions", &body).await;
    assert_eq!(status, 201, "{record}");
    record["id"].as_str().expect("an id").to_owned()
}

/// The screen after waiting for `state`; panics with the 409's body when it is not reached.
pub(crate) async fn screen_when(bridge: &TestBridge, id: &str, state: &str) -> Value {
    let (status, screen) = bridge
        .get(&format!(
            "/v1/sessions/{id}/screen?wait={state}&timeout_ms=20000"
        ))
        .await;
    assert_eq!(status, 200, "the session did not become {state}: {screen}");
    screen
}

pub(crate) fn text(screen: &Value) -> String {
    screen["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l.as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) async fn input(
    bridge: &TestBridge,
    id: &str,
    body: Value,
) -> (reqwest::StatusCode, Value) {
    bridge
        .post(&format!("/v1/sessions/{id}/input"), &body)
        .await
}

/// Polls the record (which does not count as using the session) until it has exited.
pub(crate) async fn record_when_exited(bridge: &TestBridge, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, record) = bridge.get(&format!("/v1/sessions/{id}")).await;
        assert_eq!(status, 200, "{record}");
        if record["state"] == "exited" {
            return record;
        }
        assert!(Instant::now() < deadline, "still not exited: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Processes still carrying the session's marker.
pub(crate) fn leftovers(id: &str) -> usize {
    processes_with_env(format!("{RUN_MARKER}={id}").as_bytes()).len()
}

#[tokio::test]
async fn a_python_script_is_answered_by_a_rule_by_the_client_and_by_a_person() {
    let programs = Programs::new();
    let bridge = programs.bridge().await;
    let id = start(&bridge, json!({"adapter": "asker", "rows": 10, "cols": 60})).await;

    // The trust prompt was answered by the profile's rule; the name question is nobody's.
    let screen = screen_when(&bridge, &id, "idle").await;
    let shown = text(&screen);
    assert!(shown.contains("Trust this folder? [y/n] y"), "{shown}");
    assert!(shown.contains("What is your name?"), "{shown}");
    assert_eq!(screen["cursor"]["row"], 1);

    // The colour question is a person's: the input waits for "settled" and reports it.
    let (status, answer) = input(
        &bridge,
        &id,
        json!({"text": "Ada\r", "wait": "settled", "timeout_ms": 20000}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "waiting_for_input", "{answer}");
    assert_eq!(answer["question"], "Favourite colour?");
    // Waiting for idle while a person is asked answers at once, with the state.
    let started = Instant::now();
    let (status, refused) = bridge
        .get(&format!(
            "/v1/sessions/{id}/screen?wait=idle&timeout_ms=20000"
        ))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "session_waiting_for_input");
    assert_eq!(refused["state"]["question"], "Favourite colour?");
    assert!(started.elapsed() < Duration::from_secs(5));

    let (status, _) = input(&bridge, &id, json!({"text": "green"})).await;
    assert_eq!(status, 200);
    let (status, _) = input(&bridge, &id, json!({"keys": ["Enter"]})).await;
    assert_eq!(status, 200);
    let screen = screen_when(&bridge, &id, "exited").await;
    assert!(
        text(&screen).contains("Hello Ada, you like green"),
        "{screen}"
    );
    assert_eq!(screen["exit_code"], 0);
    assert_eq!(screen["reason"], "process_exited");
    assert_eq!(leftovers(&id), 0);

    // Input to an ended session is a conflict, not a hang.
    let (status, refused) = input(&bridge, &id, json!({"text": "more"})).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "session_exited");

    // The cast: a v2 header, the rule's and the client's input, the program's output.
    let (status, cast) = bridge
        .get_bytes(&format!("/v1/sessions/{id}/recording"))
        .await;
    assert_eq!(status, 200);
    let cast = String::from_utf8(cast).expect("a cast is UTF-8");
    let events: Vec<Value> = cast
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(events[0]["version"], 2);
    assert_eq!(
        (events[0]["width"].as_u64(), events[0]["height"].as_u64()),
        (Some(60), Some(10))
    );
    let typed: Vec<&str> = events[1..]
        .iter()
        .filter(|e| e[1] == "i")
        .filter_map(|e| e[2].as_str())
        .collect();
    assert_eq!(typed, ["y\r", "Ada\r", "green", "\r"]);
    let printed: String = events[1..]
        .iter()
        .filter(|e| e[1] == "o")
        .filter_map(|e| e[2].as_str())
        .collect();
    assert!(printed.contains("Hello Ada, you like green"), "{printed}");
    let stored = bridge.data_dir().join("sessions").join(&id);
    assert!(stored.join("recording.cast").exists() && stored.join("session.json").exists());
}

#[tokio::test]
async fn a_bash_read_loop_is_idle_at_its_prompt_and_streams_events() {
    let programs = Programs::new();
    let bridge = programs.bridge().await;
    let id = start(
        &bridge,
        json!({"adapter": "readloop", "rows": 12, "cols": 50}),
    )
    .await;

    // Follow the events from the start, in the background.
    let events = {
        let request = bridge
            .client
            .get(format!("{}/v1/sessions/{id}/events", bridge.url))
            .bearer_auth(TOKEN);
        tokio::spawn(async move {
            let response = request.send().await.expect("the events answer");
            assert_eq!(response.status(), 200);
            let mut text = String::new();
            let mut body = response.bytes_stream();
            while let Some(chunk) = body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
            }
            text
        })
    };

    screen_when(&bridge, &id, "idle").await;
    for word in ["alpha", "beta"] {
        let (status, screen) = input(
            &bridge,
            &id,
            json!({"text": format!("{word}\r"), "wait_idle": true, "timeout_ms": 20000}),
        )
        .await;
        assert_eq!(status, 200, "{screen}");
        assert_eq!(screen["state"], "idle");
        assert!(
            text(&screen).contains(&format!("you said: {word}")),
            "{screen}"
        );
    }
    let (status, _) = input(&bridge, &id, json!({"text": "quit\r"})).await;
    assert_eq!(status, 200);
    let record = record_when_exited(&bridge, &id, Duration::from_secs(20)).await;
    assert_eq!(record["exit_code"], 3, "{record}");

    let events = tokio::time::timeout(Duration::from_secs(20), events)
        .await
        .expect("the event stream ends after the exit")
        .expect("the reader task");
    let states: Vec<String> = crate::support::parse_sse(&events)
        .into_iter()
        .filter(|e| e.event == "state")
        .map(|e| e.data["state"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(states.contains(&"idle".to_owned()), "{states:?}");
    assert!(states.contains(&"busy".to_owned()), "{states:?}");
    assert_eq!(
        states.last().map(String::as_str),
        Some("exited"),
        "{states:?}"
    );
    assert!(
        events.contains("you said: beta"),
        "no screen event showed the reply"
    );
    assert_eq!(leftovers(&id), 0);
}

#[tokio::test]
async fn dialog_is_driven_with_arrow_keys_and_shows_its_colours() {
    let programs = Programs::new();
    let bridge = programs.bridge().await;
    let id = start(&bridge, json!({"adapter": "menu", "rows": 20, "cols": 60})).await;

    let screen = screen_when(&bridge, &id, "idle").await;
    let shown = text(&screen);
    assert!(
        shown.contains("Pick a fruit") && shown.contains("Cherry"),
        "{shown}"
    );
    let (apple, cherry) = looks(&bridge, &id).await;
    assert_ne!(apple, cherry, "the first item is highlighted");
    assert!(
        apple.1 != "default" || cherry.1 != "default",
        "dialog draws in colour"
    );

    // dialog turned on application cursor keys, which the screen says for a client that types
    // keys itself; the arrows must reach it in that mode.
    assert_eq!(screen["application_cursor"], true, "{screen}");
    let (status, _) = input(
        &bridge,
        &id,
        json!({"keys": ["Down", "Down"], "wait_idle": true, "timeout_ms": 20000}),
    )
    .await;
    assert_eq!(status, 200);
    let (apple_now, cherry_now) = looks(&bridge, &id).await;
    assert_eq!(
        (apple_now, cherry_now),
        (cherry, apple),
        "the highlight moved to Cherry"
    );

    let (status, _) = input(&bridge, &id, json!({"keys": ["Enter"]})).await;
    assert_eq!(status, 200);
    let screen = screen_when(&bridge, &id, "exited").await;
    assert_eq!(screen["exit_code"], 0, "{screen}");
    assert_eq!(leftovers(&id), 0);
}

/// The look (inverse, background, foreground) of the menu's Apple and Cherry items.
async fn looks(bridge: &TestBridge, id: &str) -> ((bool, String, String), (bool, String, String)) {
    let (status, screen) = bridge
        .get(&format!("/v1/sessions/{id}/screen?cells=1"))
        .await;
    assert_eq!(status, 200);
    let look = |word: &str| {
        let run = screen["cells"]
            .as_array()
            .expect("cells")
            .iter()
            .flat_map(|row| row.as_array().into_iter().flatten())
            .find(|run| run["text"].as_str().unwrap_or_default().contains(word))
            .unwrap_or_else(|| panic!("no run holds {word}: {screen}"));
        (
            run["inverse"] == true,
            run["bg"].to_string(),
            run["fg"].to_string(),
        )
    };
    (look("Apple"), look("Cherry"))
}

#[tokio::test]
async fn a_spinner_that_never_settles_gets_409_at_the_deadline_and_is_deleted_cleanly() {
    let programs = Programs::new();
    let bridge = programs.bridge().await;
    let id = start(&bridge, json!({"adapter": "spinner"})).await;

    let started = Instant::now();
    let (status, refused) = bridge
        .get(&format!(
            "/v1/sessions/{id}/screen?wait=idle&timeout_ms=1500"
        ))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "session_not_idle");
    assert_eq!(refused["state"]["state"], "busy");
    assert!(text(&refused["screen"]).contains("working"), "{refused}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "{waited:?}"
    );

    let (status, refused) = input(
        &bridge,
        &id,
        json!({"keys": ["Space"], "wait_idle": true, "timeout_ms": 800}),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "session_not_idle");

    assert!(
        leftovers(&id) >= 1,
        "the spinner runs with the session's marker"
    );
    let (status, record) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["state"], "exited");
    assert_eq!(record["reason"], "deleted");
    assert_eq!(leftovers(&id), 0);
    let (status, again) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(
        (status, &again["reason"]),
        (reqwest::StatusCode::OK, &json!("deleted"))
    );
}

#[tokio::test]
async fn a_program_killed_from_outside_ends_the_session_with_its_status() {
    let programs = Programs::new();
    let bridge = programs.bridge().await;
    let id = start(&bridge, json!({"adapter": "readloop"})).await;
    screen_when(&bridge, &id, "idle").await;

    // The program is the marked process that is not the shim.
    let program = processes_with_env(format!("{RUN_MARKER}={id}").as_bytes())
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "bash")
        })
        .expect("the read loop's bash");
    nix::sys::signal::kill(program, nix::sys::signal::Signal::SIGKILL).expect("kill -9");

    let record = record_when_exited(&bridge, &id, Duration::from_secs(20)).await;
    assert_eq!(record["reason"], "process_exited", "{record}");
    // The shim reports a signal N as 128 + N, as shells do.
    assert_eq!(record["exit_code"], 137, "{record}");
    assert_eq!(leftovers(&id), 0);
}

#[tokio::test]
async fn limits_end_sessions_with_their_reason() {
    let programs = Programs::new();
    let bridge = programs
        .builder()
        .var("HB_MAX_SESSIONS", "2")
        .var("HB_SESSION_MAX_OUTPUT_RATE", "64K")
        .start()
        .await;

    let idle = start(&bridge, json!({"adapter": "readloop", "idle_timeout_s": 1})).await;
    let short = start(&bridge, json!({"adapter": "readloop", "timeout_s": 1})).await;
    let (status, refused) = bridge
        .post("/v1/sessions", &json!({"adapter": "readloop"}))
        .await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "too_many_sessions");

    let record = record_when_exited(&bridge, &short, Duration::from_secs(20)).await;
    assert_eq!(record["reason"], "max_lifetime", "{record}");
    let record = record_when_exited(&bridge, &idle, Duration::from_secs(20)).await;
    assert_eq!(record["reason"], "idle_timeout", "{record}");

    let flood = start(&bridge, json!({"adapter": "flood"})).await;
    let record = record_when_exited(&bridge, &flood, Duration::from_secs(30)).await;
    assert_eq!(record["reason"], "output_rate_exceeded", "{record}");
    for id in [&idle, &short, &flood] {
        assert_eq!(leftovers(id), 0);
    }
}

#[tokio::test]
async fn bad_session_requests_get_clear_codes() {
    let programs = Programs::new();
    let bridge = programs.bridge().await;
    let cases = [
        (json!({"adapter": "nope"}), "unknown_adapter"),
        (
            json!({"adapter": "readloop", "rows": 0, "cols": 80}),
            "invalid_size",
        ),
        (json!({"adapter": "readloop", "rows": 24}), "invalid_size"),
        (
            json!({"adapter": "readloop", "colour": true}),
            "unknown_field",
        ),
        (
            json!({"adapter": "readloop", "quiet_ms": 0}),
            "invalid_field",
        ),
    ];
    for (body, code) in cases {
        let (status, refused) = bridge.post("/v1/sessions", &body).await;
        assert_eq!(
            (status.as_u16(), refused["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }

    let missing = "0193a1b2-0000-7000-8000-000000000000";
    for (method, path) in [
        (Method::GET, format!("/v1/sessions/{missing}")),
        (Method::GET, format!("/v1/sessions/{missing}/screen")),
        (Method::DELETE, format!("/v1/sessions/{missing}")),
        (Method::GET, "/v1/sessions/not-a-uuid/screen".to_owned()),
    ] {
        let (status, refused) = bridge.send(method, &path, None).await;
        assert_eq!(status, 404, "{path}: {refused}");
        assert_eq!(refused["error"]["code"], "session_not_found");
    }

    let id = start(&bridge, json!({"adapter": "readloop"})).await;
    let cases = [
        (json!({"keys": ["Enter", "Hyper"]}), "unknown_key"),
        (json!({"text": "a", "keys": ["Enter"]}), "invalid_input"),
        (json!({}), "invalid_input"),
        (json!({"text": "a", "wait": "forever"}), "invalid_wait"),
    ];
    for (body, code) in cases {
        let (status, refused) = input(&bridge, &id, body.clone()).await;
        assert_eq!(
            (status.as_u16(), refused["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let (status, refused) = bridge
        .post(
            &format!("/v1/sessions/{id}/resize"),
            &json!({"rows": 5, "cols": 2}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), refused["error"]["code"].as_str()),
        (400, Some("invalid_size"))
    );
    let (status, resized) = bridge
        .post(
            &format!("/v1/sessions/{id}/resize"),
            &json!({"rows": 30, "cols": 100}),
        )
        .await;
    assert_eq!(
        (
            status.as_u16(),
            resized["rows"].as_u64(),
            resized["cols"].as_u64()
        ),
        (200, Some(30), Some(100))
    );

    for path in ["screen", "events"] {
        let (status, refused) = bridge
            .get(&format!("/v1/sessions/{id}/{path}?cells=yes"))
            .await;
        assert_eq!(
            (status.as_u16(), refused["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}"
        );
    }

    let unauthenticated = bridge
        .client
        .get(format!("{}/v1/sessions/{id}/screen", bridge.url))
        .send()
        .await
        .expect("an answer");
    assert_eq!(unauthenticated.status(), 401);
    bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(leftovers(&id), 0);
}

/// A ChatGPT login (whose sessions hold its single writer) and a stand-in for the Codex TUI
/// that only waits: what matters here is who holds the writer, not what Codex does.
fn chatgpt_world() -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let jwt = |claims: Value| crate::support::unsigned_jwt(&claims);
    let auth_claims = json!({"chatgpt_plan_type": "pro", "chatgpt_account_id": "acct-1"});
    let auth = json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": jwt(json!({"email": "dev@example.com", "https://api.openai.com/auth": auth_claims})),
            "access_token": jwt(json!({"exp": 4_000_000_000_i64, "https://api.openai.com/auth": auth_claims})),
            "refresh_token": "rt_session_writer_0c1d",
            "account_id": "acct-1",
        },
        "last_refresh": "2026-01-01T00:00:00Z",
    });
    let login = dir.path().join("login");
    std::fs::create_dir(&login).unwrap();
    std::fs::write(login.join("auth.json"), auth.to_string()).unwrap();
    let tui = dir.path().join("codex-tui");
    std::fs::write(&tui, "#!/bin/sh\necho waiting\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&tui, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test]
async fn a_start_the_client_hangs_up_on_still_becomes_a_listed_deletable_session() {
    let programs = Programs::new();
    let world = chatgpt_world();
    let bridge = programs
        .builder()
        .codex_dir(&world.path().join("login"))
        .var(
            "HB_CODEX_BIN",
            world.path().join("codex-tui").display().to_string(),
        )
        .var("HB_MAX_SESSIONS", "2")
        .start()
        .await;
    let first = start(&bridge, json!({"adapter": "codex"})).await;

    // The second Codex session waits for the login's writer; its client gives up.
    let hung_up = bridge
        .client
        .post(format!("{}/v1/sessions", bridge.url))
        .bearer_auth(crate::support::TOKEN)
        .json(&json!({"adapter": "codex"}))
        .timeout(Duration::from_millis(800))
        .send()
        .await;
    assert!(hung_up.is_err(), "the start should wait for the writer");

    // Once the writer is free, the abandoned start is a session like any other: listed,
    // and deletable.
    let (status, _) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{first}"), None)
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let (_, list) = bridge.get("/v1/sessions").await;
        let live: Vec<String> = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] != "exited")
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        if let [id] = live.as_slice() {
            break id.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned start never showed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, record) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{second}"), None)
        .await;
    assert_eq!(
        (status.as_u16(), &record["reason"]),
        (200, &json!("deleted")),
        "{record}"
    );
    assert_eq!(leftovers(&second), 0);

    // Both places are free again.
    let spinners = [
        start(&bridge, json!({"adapter": "spinner"})).await,
        start(&bridge, json!({"adapter": "spinner"})).await,
    ];
    for id in spinners {
        bridge
            .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await;
    }
    bridge.stop().await;
}

/// A bridge with [`unstartable_profiles`], and the directory holding them.
async fn bridge_with_unstartable_profiles() -> (TempDir, TestBridge) {
    let world = unstartable_profiles();
    let bridge = BridgeBuilder::new()
        .var(
            "HB_ADAPTERS_DIR",
            world.path().join("adapters").display().to_string(),
        )
        .start()
        .await;
    (world, bridge)
}

/// Profiles whose CLI cannot be started (an absent path, a name on no directory of PATH, a
/// script whose interpreter is absent), and one that runs and exits 127 by itself.
fn unstartable_profiles() -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    let script = dir.path().join("needs-interpreter");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let profiles = dir.path().join("adapters");
    std::fs::create_dir(&profiles).unwrap();
    let write = |name: &str, text: String| {
        std::fs::write(profiles.join(format!("{name}.toml")), text).unwrap()
    };
    write(
        "missing",
        "executable = \"/nonexistent/cli\"\n[session]\n".to_owned(),
    );
    write(
        "unnamed",
        "executable = \"hb-no-such-cli\"\n[session]\n".to_owned(),
    );
    write(
        "interpreter",
        format!("executable = \"{}\"\n[session]\n", script.display()),
    );
    write(
        "exits127",
        r#"executable = "/bin/sh"
[session]
args = ["-c", "echo 'sh: 1: frob: not found' >&2; exit 127"]
"#
        .to_owned(),
    );
    dir
}

/// Regression: under the run shim, a session of a CLI that is not installed answered 201
/// and then ended as `process_exited` with code 127, the shim's words only on its screen.
#[tokio::test]
async fn a_session_of_a_missing_cli_is_refused_as_cli_not_found() {
    let (_world, bridge) = bridge_with_unstartable_profiles().await;

    for (adapter, program) in [
        ("missing", "/nonexistent/cli"),
        ("unnamed", "hb-no-such-cli"),
    ] {
        let (status, refused) = bridge
            .post("/v1/sessions", &json!({"adapter": adapter}))
            .await;
        assert_eq!(
            (status.as_u16(), refused["error"]["code"].as_str()),
            (422, Some("cli_not_found")),
            "{adapter}: {refused}"
        );
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "failed to start {program}: No such file or directory"
            )) && message.contains("install it, or set the adapter's executable"),
            "{message}"
        );
    }

    // Nothing of the refused starts stays: no session, no record, no workspace (an emptied
    // one may wait in `.spare` for the next).
    let (_, list) = bridge.get("/v1/sessions").await;
    assert_eq!(list["sessions"], json!([]), "{list}");
    for dir in ["sessions", "workspaces"] {
        let left: Vec<_> = std::fs::read_dir(bridge.data_dir().join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name())
            .filter(|name| name != ".spare")
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    bridge.stop().await;
}

/// A CLI that is there but that the shim still cannot start (here its interpreter is
/// missing) ends the session as `cli_not_found`, as a run says; a program that ran and
/// exited 127 itself is an ordinary exit.
#[tokio::test]
async fn a_cli_the_shim_cannot_start_ends_the_session_as_cli_not_found() {
    let (world, bridge) = bridge_with_unstartable_profiles().await;

    let id = start(&bridge, json!({"adapter": "interpreter"})).await;
    let record = record_when_exited(&bridge, &id, Duration::from_secs(20)).await;
    assert_eq!(
        (&record["reason"], &record["exit_code"]),
        (&json!("cli_not_found"), &json!(127)),
        "{record}"
    );
    let script = world.path().join("needs-interpreter");
    let message = record["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!(
            "failed to start {}: No such file or directory",
            script.display()
        )) && message.contains("install it"),
        "{message}"
    );
    assert_eq!(leftovers(&id), 0);

    let id = start(&bridge, json!({"adapter": "exits127"})).await;
    let record = record_when_exited(&bridge, &id, Duration::from_secs(20)).await;
    assert_eq!(
        (&record["reason"], &record["exit_code"]),
        (&json!("process_exited"), &json!(127)),
        "{record}"
    );
    bridge.stop().await;
}
