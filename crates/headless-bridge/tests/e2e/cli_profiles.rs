//! Runs of plain CLIs through declarative adapter profiles: how the run engine copes with
//! real processes that misbehave (escape their group, hold the output pipe, read stdin, flood
//! stdout, ask questions), and with many runs at once.

use std::path::Path;

use headless_bridge::run::supervisor::{RUN_MARKER, processes_with_env};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{BridgeBuilder, BridgeProcess, TestBridge, traversable_data_dir};

/// A profile running `script` with /bin/sh; the prompt is its `$1`.
fn sh_profile(dir: &Path, name: &str, script: &str, extra: &str) {
    let text = format!(
        "description = \"test CLI\"\nexecutable = \"/bin/sh\"\nargs = [\"-c\", {script:?}, \"sh\", \"{{prompt}}\"]\n{extra}"
    );
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

async fn bridge_with(profiles: &TempDir, vars: &[(&'static str, &str)]) -> TestBridge {
    let mut builder =
        BridgeBuilder::new().var("HB_ADAPTERS_DIR", profiles.path().display().to_string());
    for (name, value) in vars {
        builder = builder.var(name, *value);
    }
    builder.start().await
}

async fn run(bridge: &TestBridge, adapter: &str, prompt: &str) -> Value {
    let (status, run) = bridge
        .post(
            "/v1/runs?wait=300",
            &json!({"adapter": adapter, "prompt": prompt}),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    run
}

fn assert_no_process_left(run: &Value) {
    let marker = format!("{RUN_MARKER}={}", run["id"].as_str().unwrap());
    assert_eq!(
        processes_with_env(marker.as_bytes()),
        vec![],
        "processes of the run survived it"
    );
}

#[tokio::test]
async fn profiles_are_listed_and_run_with_the_prompt_as_one_argument() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "echo", "printf 'got: %s\\n' \"$1\"", "");
    let bridge = bridge_with(&profiles, &[]).await;

    let (_, adapters) = bridge.get("/v1/adapters").await;
    let names: Vec<&str> = adapters["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["codex", "claude", "echo", "gemini"]);
    let echo = &adapters["adapters"][2];
    assert_eq!(echo["kind"], "profile");
    assert_eq!(
        echo["health"]["ok"], true,
        "a profile without secrets or probe is healthy: {echo}"
    );

    let run = run(&bridge, "echo", "a; touch /tmp/pwned $(id)").await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["output"], "got: a; touch /tmp/pwned $(id)\n");
}

/// Regression: a grandchild that left the process group and kept stdout open held runs open.
#[tokio::test]
async fn a_grandchild_holding_stdout_cannot_keep_the_run_open() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "escaper",
        "setsid sleep 300 & nohup sleep 301 & echo parent done",
        "",
    );
    let bridge = bridge_with(&profiles, &[]).await;

    let run = run(&bridge, "escaper", "x").await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(run["logs"].as_str().unwrap().contains("parent done"));
    assert_no_process_left(&run);
}

#[tokio::test]
async fn a_cli_reading_stdin_until_eof_gets_eof_at_once() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "reader", "cat; echo \"stdin closed\"", "");
    let bridge = bridge_with(&profiles, &[]).await;

    let run = run(&bridge, "reader", "x").await;

    assert_eq!(
        (&run["outcome"], &run["output"]),
        (&json!("succeeded"), &json!("stdin closed\n"))
    );
}

#[tokio::test]
async fn a_silent_cli_is_stalled_and_a_question_blocks_at_once() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "silent", "echo working; sleep 300", "");
    sh_profile(
        profiles.path(),
        "asker",
        "echo 'Enter a value:'; sleep 300",
        "prompt_patterns = [\"Enter a value:\"]\n",
    );
    let bridge = bridge_with(&profiles, &[]).await;

    let request = json!({"adapter": "silent", "prompt": "x", "idle_timeout_s": 1});
    let (_, stalled) = bridge.post("/v1/runs?wait=60", &request).await;
    assert_eq!(
        (&stalled["outcome"], &stalled["reason"]),
        (&json!("timed_out"), &json!("stalled")),
        "{stalled}"
    );
    assert_no_process_left(&stalled);

    let blocked = run(&bridge, "asker", "x").await;
    assert_eq!(
        (&blocked["outcome"], &blocked["reason"]),
        (&json!("failed"), &json!("interactive_prompt_blocked")),
        "{blocked}"
    );
    assert_no_process_left(&blocked);
}

#[tokio::test]
async fn a_failing_cli_reports_its_exit_code() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "failer",
        "echo 'no such file' >&2; exit 3",
        "",
    );
    let bridge = bridge_with(&profiles, &[]).await;

    let run = run(&bridge, "failer", "x").await;

    assert_eq!(
        (&run["outcome"], &run["reason"], &run["exit_code"]),
        (&json!("failed"), &json!("cli_error"), &json!(3))
    );
    assert!(
        run["logs"].as_str().unwrap().contains("no such file"),
        "{run}"
    );
}

/// Regression: under the run shim (the default) a missing CLI ended as `cli_error` with the
/// shim's own words, not as `cli_not_found` with the hint on how to fix it.
#[tokio::test]
async fn a_missing_cli_under_the_shim_is_cli_not_found() {
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("missing.toml"),
        "description = \"not installed\"\nexecutable = \"/nonexistent/cli\"\nargs = []\n",
    )
    .unwrap();
    sh_profile(
        profiles.path(),
        "exits127",
        "echo 'sh: 1: frob: not found' >&2; exit 127",
        "",
    );
    let bridge = bridge_with(&profiles, &[]).await;

    let missing = run(&bridge, "missing", "x").await;
    assert_eq!(
        (&missing["outcome"], &missing["reason"]),
        (&json!("failed"), &json!("cli_not_found")),
        "{missing}"
    );
    let message = missing["message"].as_str().unwrap();
    assert!(
        message.starts_with("failed to start /nonexistent/cli: No such file or directory")
            && message.contains("install it"),
        "{message}"
    );

    // A CLI that ran and exited 127 itself is not one that could not be started.
    let exited = run(&bridge, "exits127", "x").await;
    assert_eq!(
        (&exited["reason"], &exited["exit_code"]),
        (&json!("cli_error"), &json!(127)),
        "{exited}"
    );
}

/// Regression: a root bridge (umask 077) made a missing HB_DATA_DIR 0700, and every run as
/// another user then failed as `workspace_error`.
#[tokio::test]
async fn a_data_dir_the_bridge_creates_lets_a_cli_run_as_another_user_through() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "switching users needs root (CI and the development machines run as root)"
    );
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "nobody",
        "echo \"$(id -u) $(stat -c '%a %u' \"$HOME/..\")\"",
        "run_as = { uid = 65534, gid = 65534 }\n",
    );
    let parent = traversable_data_dir();
    let data_dir = parent.path().join("not-yet/data");
    let bridge =
        BridgeProcess::start_with(&data_dir, &[("HB_ADAPTERS_DIR", profiles.path())]).await;

    let run = run(&bridge.client(), "nobody", "x").await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(
        run["output"], "65534 700 65534\n",
        "the CLI's user passes through, and its workspace stays its own"
    );
    bridge.stop_and_read_log().await;
}

/// Regression: a `Last-Event-ID` above i64::MAX wrapped around and replayed every event.
#[tokio::test]
async fn a_last_event_id_past_the_end_replays_nothing() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "echo", "echo \"$1\"", "");
    let bridge = bridge_with(&profiles, &[]).await;
    let run = run(&bridge, "echo", "x").await;
    let path = format!("/v1/runs/{}/events", run["id"].as_str().unwrap());
    assert!(!bridge.sse(&path, None).await.is_empty());

    for past_the_end in [99_999, 1 << 63, u64::MAX] {
        let replayed = bridge.sse(&path, Some(past_the_end)).await;
        assert_eq!(replayed.len(), 0, "after {past_the_end}: {replayed:?}");
    }
}

/// Regression: a full page offered a `next_cursor` even when no run followed it.
#[tokio::test]
async fn a_page_of_runs_offers_a_cursor_only_when_more_follow() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "echo", "echo \"$1\"", "");
    let bridge = bridge_with(&profiles, &[]).await;
    for prompt in ["a", "b"] {
        run(&bridge, "echo", prompt).await;
    }

    let (_, exact) = bridge.get("/v1/runs?limit=2").await;
    assert_eq!(exact["runs"].as_array().unwrap().len(), 2);
    assert_eq!(exact["next_cursor"], Value::Null, "{exact}");

    let (_, first) = bridge.get("/v1/runs?limit=1").await;
    let cursor = first["next_cursor"].as_str().expect("a run follows");
    let (_, last) = bridge
        .get(&format!("/v1/runs?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(last["runs"].as_array().unwrap().len(), 1);
    assert_eq!(last["next_cursor"], Value::Null, "{last}");
}

#[tokio::test]
async fn two_hundred_concurrent_runs_are_all_recorded_and_leave_nothing_behind() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "quick", "echo \"run $1\"", "");
    let bridge = bridge_with(
        &profiles,
        &[
            ("HB_MAX_CONCURRENT_RUNS", "16"),
            ("HB_MAX_QUEUED_RUNS", "256"),
        ],
    )
    .await;

    let submissions = (0..200).map(|i| {
        let bridge = &bridge;
        async move {
            bridge
                .post(
                    "/v1/runs?wait=300",
                    &json!({"adapter": "quick", "prompt": format!("{i}")}),
                )
                .await
        }
    });
    let runs = futures::future::join_all(submissions).await;

    for (i, (status, run)) in runs.iter().enumerate() {
        assert_eq!(*status, 200, "{run}");
        assert_eq!(run["output"], format!("run {i}\n"), "{run}");
        assert_no_process_left(run);
    }
    let (_, listed) = bridge.get("/v1/runs?limit=100&state=finished").await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn a_gigabyte_of_output_keeps_memory_flat_and_the_tail() {
    let profiles = tempfile::tempdir().unwrap();
    // 1 GiB in lines of 1 KiB, then a last line to look for.
    let script =
        "head -c 1073741824 /dev/zero | tr '\\000' x | fold -w 1023; echo; echo 'the very end'";
    sh_profile(profiles.path(), "flood", script, "");
    let data_dir = tempfile::tempdir().unwrap();
    let bridge =
        BridgeProcess::start_with(data_dir.path(), &[("HB_ADAPTERS_DIR", profiles.path())]).await;

    let client = bridge.client();
    let (_, started) = client
        .post("/v1/runs", &json!({"adapter": "flood", "prompt": "x"}))
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    // A subscriber that connects and never reads must not hold the run back.
    let stalled_subscriber = client
        .client
        .get(format!("{}/v1/runs/{id}/events", client.url))
        .bearer_auth(crate::support::TOKEN)
        .send()
        .await
        .unwrap();
    let (_, run) = client.get(&format!("/v1/runs/{id}")).await;
    let run = if run["state"] == "finished" {
        run
    } else {
        wait_for(&client, &id).await
    };
    drop(stalled_subscriber);

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert!(run["output"].as_str().unwrap().ends_with("the very end\n"));
    let peak_kib = bridge.peak_rss_kib();
    assert!(
        peak_kib < 64 * 1024,
        "the bridge peaked at {peak_kib} KiB while a CLI printed 1 GiB"
    );
    let log = std::fs::metadata(
        data_dir
            .path()
            .join("logs")
            .join(format!("{}.log", run["id"].as_str().unwrap())),
    )
    .unwrap();
    assert!(
        log.len() <= (64 << 20) + 200,
        "the spill file is capped: {}",
        log.len()
    );
}

/// As PID 1 (a container without an init), the bridge must wait for the orphans its runs
/// leave, or they stay zombies for ever.
#[tokio::test]
async fn as_pid_1_the_bridge_reaps_the_orphans_of_its_runs() {
    let profiles = tempfile::tempdir().unwrap();
    // Each run leaves three short-lived orphans behind, re-parented to PID 1 when they exit.
    sh_profile(
        profiles.path(),
        "orphaner",
        "(sleep 0.2 &); (sleep 0.2 &); (sleep 0.2 &); echo left",
        "",
    );
    let data_dir = tempfile::tempdir().unwrap();
    let bridge = BridgeProcess::start_in_pid_namespace(
        data_dir.path(),
        &[("HB_ADAPTERS_DIR", profiles.path())],
    )
    .await;
    let client = bridge.client();

    for _ in 0..3 {
        assert_eq!(run(&client, "orphaner", "x").await["outcome"], "succeeded");
    }

    let init = bridge.namespace_init_pid();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let zombies = zombie_children(init);
        let alive = live_children(init);
        if zombies == 0 && alive == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{zombies} zombies and {alive} orphans remain under PID 1"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn children_of(parent: u32) -> Vec<char> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?.chars().next()?;
            (fields.next()?.parse::<u32>().ok()? == parent).then_some(state)
        })
        .collect()
}

fn zombie_children(parent: u32) -> usize {
    children_of(parent)
        .into_iter()
        .filter(|s| *s == 'Z')
        .count()
}

fn live_children(parent: u32) -> usize {
    children_of(parent)
        .into_iter()
        .filter(|s| *s != 'Z')
        .count()
}

/// The record once the run has finished.
async fn wait_for(bridge: &TestBridge, id: &str) -> Value {
    // The event stream ends with the outcome, which is stored after the finished record.
    let events = bridge.sse(&format!("/v1/runs/{id}/events"), None).await;
    assert_eq!(events.last().unwrap().event, "outcome");
    bridge.get(&format!("/v1/runs/{id}")).await.1
}

#[tokio::test]
async fn on_shutdown_a_run_within_the_grace_period_finishes() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "slow",
        "echo started; sleep 1; echo finished",
        "",
    );
    let bridge = bridge_with(&profiles, &[("HB_SHUTDOWN_GRACE", "30")]).await;
    let (_, run) = bridge
        .post("/v1/runs", &json!({"adapter": "slow", "prompt": "x"}))
        .await;
    let id = run["id"].as_str().unwrap().to_owned();
    let events = bridge
        .client
        .get(format!("{}/v1/runs/{id}/events", bridge.url))
        .bearer_auth(crate::support::TOKEN)
        .send()
        .await
        .unwrap();
    let mut events = events.bytes_stream();
    // Wait until the CLI has started before asking the bridge to stop.
    let mut seen = String::new();
    while !seen.contains("started") {
        use futures::StreamExt as _;
        seen.push_str(&String::from_utf8_lossy(
            &events.next().await.unwrap().unwrap(),
        ));
    }

    let data_dir = bridge.stop().await;
    let bridge = BridgeBuilder::new().data_dir(data_dir).start().await;
    let (_, after) = bridge.get(&format!("/v1/runs/{id}")).await;

    assert_eq!(after["outcome"], "succeeded", "{after}");
    assert_eq!(after["output"], "started\nfinished\n");
}

/// Regression: processes that cleared their environment (and so the run's marker), left
/// their session and ignored SIGTERM survived their run.
#[tokio::test]
async fn processes_that_shed_the_marker_and_ignore_sigterm_still_die_with_the_run() {
    let tag = format!("escapee-{}", std::process::id());
    // Each escapee reports through its own fifo once it has left the session, so the CLI
    // exits only after both have escaped.
    let script = format!(
        "mkfifo a b
         setsid env -i /bin/sh -c ': {tag}; echo > \"$0\"; exec sleep 4101' \"$PWD/a\" </dev/null >/dev/null 2>&1 &
         nohup setsid env -i /bin/sh -c ': {tag}; trap \"\" TERM HUP; echo > \"$0\"; while :; do sleep 1; done' \"$PWD/b\" </dev/null >/dev/null 2>&1 &
         read _ < a; read _ < b; echo escaped"
    );
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "escaper", &script, "");
    let bridge = bridge_with(&profiles, &[]).await;

    let run = run(&bridge, "escaper", "x").await;

    assert_eq!(run["outcome"], "succeeded", "{run}");
    assert_eq!(run["output"], "escaped\n");
    assert_eq!(
        processes_with_cmdline(&tag),
        Vec::<u32>::new(),
        "an escaped process outlived its run"
    );
}

fn processes_with_cmdline(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .collect()
}

/// Regression: a cancel while the CLI ran could drop its supervisor half-way (the run's stop
/// raced the supervisor's own), so the group was never stopped nor swept and the CLI's other
/// processes outlived the run.
#[tokio::test]
async fn a_cancel_while_the_cli_runs_stops_every_process_of_the_run() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "waiter",
        "sleep 300 & setsid sleep 301 & echo started; wait",
        "",
    );
    let bridge = bridge_with(&profiles, &[]).await;

    for _ in 0..3 {
        let (status, run) = bridge
            .post("/v1/runs", &json!({"adapter": "waiter", "prompt": "x"}))
            .await;
        assert_eq!(status, 202, "{run}");
        let id = run["id"].as_str().unwrap();
        wait_for_output(&bridge, id, "started").await;

        let (status, cancelled) = bridge
            .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
            .await;
        assert_eq!(
            (status.as_u16(), &cancelled["outcome"]),
            (200, &json!("cancelled")),
            "{cancelled}"
        );
        assert_no_process_left(&cancelled);
    }
}

/// Follows the run's event stream until an output line contains `text`.
async fn wait_for_output(bridge: &TestBridge, id: &str, text: &str) {
    let mut response = bridge
        .client
        .get(format!("{}/v1/runs/{id}/events", bridge.url))
        .bearer_auth(crate::support::TOKEN)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains(text) {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the run is still going");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_cli_that_fills_its_workspace_is_stopped_and_the_bridge_carries_on() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "filler",
        "head -c 8388608 /dev/zero > big.bin; echo filled; sleep 300",
        "",
    );
    sh_profile(profiles.path(), "small", "echo fine", "");
    let bridge = bridge_with(&profiles, &[("HB_WORKSPACE_MAX_BYTES", "4M")]).await;

    let filled = run(&bridge, "filler", "x").await;

    assert_eq!(
        (&filled["outcome"], &filled["reason"]),
        (&json!("failed"), &json!("workspace_disk_full")),
        "{filled}"
    );
    assert!(
        filled["message"]
            .as_str()
            .unwrap()
            .contains("HB_WORKSPACE_MAX_BYTES"),
        "{filled}"
    );
    assert_no_process_left(&filled);
    let next = run(&bridge, "small", "x").await;
    assert_eq!(
        next["outcome"], "succeeded",
        "the bridge stays healthy: {next}"
    );
}

/// Regression: the log file was written through a 64 KiB buffer flushed only at the end, so
/// `GET /v1/runs/{id}/logs` (and `headless-bridge logs`) showed nothing of a running CLI that
/// had printed less than that.
#[tokio::test]
async fn the_logs_of_a_running_cli_hold_what_it_printed_so_far() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "talker",
        "echo hello; echo oops >&2; sleep 1; echo \"[$1]\"; sleep 300",
        "",
    );
    let bridge = bridge_with(&profiles, &[]).await;
    let (status, run) = bridge
        .post("/v1/runs", &json!({"adapter": "talker", "prompt": "x"}))
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap();
    // The first lines' batches were written before the last line was read.
    wait_for_output(&bridge, id, "[x]").await;

    let (status, logs) = bridge.get_bytes(&format!("/v1/runs/{id}/logs")).await;

    assert_eq!(status, 200);
    let logs = String::from_utf8(logs).unwrap();
    assert!(
        logs.contains("hello\n") && logs.contains("[stderr] oops\n"),
        "the log while the CLI runs: {logs:?}"
    );
    let (_, cancelled) = bridge
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled["outcome"], "cancelled", "{cancelled}");
}

/// Regression: a cancel that came while the run was already ending by itself answered 200
/// with the run's own outcome, as if it had cancelled it. Here the CLI asked a question,
/// which stops it, and ignores SIGTERM, so the run is still ending when the cancel comes.
#[tokio::test]
async fn a_cancel_that_comes_as_the_run_ends_by_itself_is_a_conflict() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(
        profiles.path(),
        "stubborn",
        "trap '' TERM; echo 'Enter a value:'; sleep 300",
        "prompt_patterns = [\"Enter a value:\"]\n",
    );
    let bridge = bridge_with(&profiles, &[]).await;
    let (_, run) = bridge
        .post("/v1/runs", &json!({"adapter": "stubborn", "prompt": "x"}))
        .await;
    let id = run["id"].as_str().unwrap();
    wait_for_output(&bridge, id, "Enter a value:").await;

    let (status, answer) = bridge
        .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
        .await;

    let (_, record) = bridge.get(&format!("/v1/runs/{id}")).await;
    assert_eq!(
        (&record["outcome"], &record["reason"]),
        (&json!("failed"), &json!("interactive_prompt_blocked")),
        "{record}"
    );
    assert_eq!(
        (status.as_u16(), answer["error"]["code"].as_str()),
        (409, Some("run_finished")),
        "the cancel did not stop the run: {answer}"
    );
    let events = bridge.sse(&format!("/v1/runs/{id}/events"), None).await;
    let outcomes: Vec<_> = events.iter().filter(|e| e.event == "outcome").collect();
    assert_eq!(outcomes.len(), 1, "{events:?}");
    assert_eq!(events.last().unwrap().event, "outcome");
    assert_eq!(outcomes[0].data["data"]["outcome"], record["outcome"]);
    assert_no_process_left(&record);
}

/// Regression: the queue's limit was checked before the idempotency key, so a client
/// retrying a request whose run was in the queue got 429 `queue_full` (and a different body
/// under that key 429 instead of 409) for as long as the queue stayed full.
#[tokio::test]
async fn a_repeated_request_gets_its_run_even_when_the_queue_is_full() {
    let profiles = tempfile::tempdir().unwrap();
    sh_profile(profiles.path(), "waiter", "echo \"$1\"; sleep 300", "");
    let bridge = bridge_with(
        &profiles,
        &[("HB_MAX_CONCURRENT_RUNS", "1"), ("HB_MAX_QUEUED_RUNS", "1")],
    )
    .await;
    let submit = |key: &'static str, prompt: &'static str| {
        bridge
            .client
            .post(format!("{}/v1/runs", bridge.url))
            .bearer_auth(crate::support::TOKEN)
            .header("idempotency-key", key)
            .json(&json!({"adapter": "waiter", "prompt": prompt}))
            .send()
    };
    let running: Value = submit("job-1", "one").await.unwrap().json().await.unwrap();
    let queued: Value = submit("job-2", "two").await.unwrap().json().await.unwrap();
    assert_eq!(queued["state"], "queued", "{queued}");

    for (key, prompt, earlier) in [("job-1", "one", &running), ("job-2", "two", &queued)] {
        let again = submit(key, prompt).await.unwrap();
        assert_eq!(again.status(), 200, "a repeat of {key}");
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let again: Value = again.json().await.unwrap();
        assert_eq!(again["id"], earlier["id"]);
    }
    let conflict = submit("job-1", "something else").await.unwrap();
    assert_eq!(conflict.status(), 409);
    let fresh = submit("job-3", "three").await.unwrap();
    assert_eq!(
        fresh.status(),
        429,
        "a new request still finds the queue full"
    );

    for run in [&queued, &running] {
        let id = run["id"].as_str().unwrap();
        bridge
            .post(&format!("/v1/runs/{id}/cancel"), &json!({}))
            .await;
    }
}

/// Regression: a CLI printing one enormous line (cut into 4 MiB pieces as it is read) kept 200
/// whole pieces for its account, and copies of them: 3.6 GB of resident memory for a 1 GiB
/// line. And none of the line was kept: every piece was longer than the output's tail.
#[tokio::test]
async fn one_enormous_line_keeps_memory_flat_and_its_end() {
    let profiles = tempfile::tempdir().unwrap();
    // 256 MiB and 300 KiB without a newline, then the end to look for: the last piece read
    // (300 KiB) is longer than both the output's tail and the events' tail.
    let script = "head -c 268742656 /dev/zero | tr '\\000' x; printf 'the very end'";
    sh_profile(profiles.path(), "oneline", script, "");
    let data_dir = tempfile::tempdir().unwrap();
    let bridge =
        BridgeProcess::start_with(data_dir.path(), &[("HB_ADAPTERS_DIR", profiles.path())]).await;
    let client = bridge.client();

    let (status, run) = client
        .post(
            "/v1/runs?wait=600",
            &json!({"adapter": "oneline", "prompt": "x", "timeout_s": 600}),
        )
        .await;

    assert_eq!(status, 200, "{run}");
    assert_eq!(run["outcome"], "succeeded", "{run}");
    let output = run["output"].as_str().unwrap();
    assert!(
        output.ends_with("xxxthe very end\n") && output.len() <= 64 << 10,
        "{} bytes of output",
        output.len()
    );
    let peak_kib = bridge.peak_rss_kib();
    assert!(
        peak_kib < 128 * 1024,
        "the bridge peaked at {peak_kib} KiB while a CLI printed a 256 MiB line"
    );
    let id = run["id"].as_str().unwrap();
    let events = client.sse(&format!("/v1/runs/{id}/events"), None).await;
    let last_output = events
        .iter()
        .rev()
        .find(|e| e.event == "output")
        .expect("the end of the line is an event");
    assert!(
        last_output.data["data"]["line"]
            .as_str()
            .unwrap()
            .ends_with("xxxthe very end")
    );
}

/// Regression: `GET /v1/runs/{id}/logs` read the whole log file (up to HB_MAX_LOG_BYTES,
/// 64 MiB) into memory before answering, and held it until the client had read it all: 20
/// clients reading a 64 MiB log slowly took the bridge from 50 MB to 1.28 GB resident.
#[tokio::test]
async fn clients_reading_a_long_log_slowly_do_not_hold_it_in_memory() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let profiles = tempfile::tempdir().unwrap();
    // 32 MiB of output in lines of 1 KiB.
    let script = "head -c 33554432 /dev/zero | tr '\\000' x | fold -w 1023";
    sh_profile(profiles.path(), "chatty", script, "");
    let data_dir = tempfile::tempdir().unwrap();
    let bridge =
        BridgeProcess::start_with(data_dir.path(), &[("HB_ADAPTERS_DIR", profiles.path())]).await;
    let client = bridge.client();
    let run = run(&client, "chatty", "x").await;
    assert_eq!(run["outcome"], "succeeded", "{run}");
    let id = run["id"].as_str().unwrap();
    let address = client.url.strip_prefix("http://").unwrap().to_owned();
    let before_kib = bridge.rss_kib();

    // Readers that take the answer's head and then read nothing more.
    let mut readers = Vec::new();
    for _ in 0..8 {
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        let request = format!(
            "GET /v1/runs/{id}/logs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
            crate::support::TOKEN
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut byte = [0; 1];
            assert_eq!(
                socket.read(&mut byte).await.unwrap(),
                1,
                "the answer's head"
            );
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
        readers.push(socket);
    }

    let grown_kib = bridge.rss_kib().saturating_sub(before_kib);
    assert!(
        grown_kib < 32 * 1024,
        "8 slow readers of a 32 MiB log grew the bridge by {grown_kib} KiB"
    );
    let (status, log) = client.get_bytes(&format!("/v1/runs/{id}/logs")).await;
    assert_eq!(status, 200);
    assert_eq!(log.len(), 33554432 + 33554432 / 1023 + 1, "the whole log");
}
