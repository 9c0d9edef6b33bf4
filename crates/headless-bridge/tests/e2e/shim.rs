//! The run shim executable on its own: exit codes, stopping, and no process left behind.
//! (Runs through the bridge use it in every other test of this suite.)

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn shim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_headless-bridge-shim"))
}

fn status_of(args: &[&str]) -> i32 {
    shim()
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("the shim starts")
        .code()
        .expect("the shim exits with a code")
}

fn alive(pid: i32) -> bool {
    // A zombie has no command line; one still running has.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[test]
fn exits_with_the_clis_code_and_signals_as_128_plus() {
    assert_eq!(status_of(&["--", "/bin/sh", "-c", "exit 7"]), 7);
    assert_eq!(status_of(&["/bin/sh", "-c", "kill -KILL $$"]), 128 + 9);
    assert_eq!(status_of(&["--", "/nonexistent/cli"]), 127);
    assert_eq!(status_of(&["--no-such-option", "--", "true"]), 2);
    assert_eq!(status_of(&[]), 2);
}

#[test]
fn kills_an_escaped_grandchild_when_the_cli_exits() {
    // The grandchild leaves the process group (setsid) and is orphaned by a double fork; it
    // hands its pid to the CLI through a fifo, then sleeps long. The CLI prints that pid and
    // exits.
    let dir = tempfile::tempdir().expect("a temp dir");
    let fifo = dir.path().join("pid");
    let mut child = shim()
        .args([
            "--",
            "/bin/sh",
            "-c",
            "mkfifo \"$0\"; (setsid sh -c 'echo $$ > \"$0\"; exec sleep 300' \"$0\" &); \
             read pid < \"$0\"; echo $pid; exit 3",
        ])
        .arg(&fifo)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the shim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the grandchild's pid");
    let grandchild: i32 = line.trim().parse().expect("a pid");
    let status = child.wait().expect("the shim exits");
    assert_eq!(status.code(), Some(3));
    assert!(
        !alive(grandchild),
        "the grandchild {grandchild} outlived the shim"
    );
}

#[test]
fn sigterm_is_passed_to_the_cli_which_may_finish_cleanly() {
    let mut child = shim()
        .args([
            "--",
            "/bin/sh",
            "-c",
            "trap 'echo stopping; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the shim starts");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready");
    assert_eq!(line, "ready\n");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal the shim");
    line.clear();
    out.read_line(&mut line).expect("the trap ran");
    assert_eq!(line, "stopping\n");
    assert_eq!(child.wait().expect("the shim exits").code(), Some(42));
}

#[test]
fn a_cli_that_ignores_sigterm_is_killed_after_the_grace() {
    let mut child = shim()
        .args([
            "--",
            "/bin/sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the shim starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("ready");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal the shim");
    assert_eq!(
        child.wait().expect("the shim exits").code(),
        Some(128 + 9),
        "SIGKILL after the grace period"
    );
}

#[test]
fn the_cli_starts_with_no_signal_blocked_or_ignored_by_the_shim() {
    for tty in [false, true] {
        let mut command = shim();
        if tty {
            command.arg("--tty");
        }
        let output = command
            .args([
                "--",
                "/bin/grep",
                "-E",
                "^Sig(Blk|Ign):",
                "/proc/self/status",
            ])
            .output()
            .expect("the shim runs grep");
        let text = String::from_utf8_lossy(&output.stdout);
        let mask = |name: &str| {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"));
            u64::from_str_radix(line.split_whitespace().nth(1).expect("a mask"), 16).expect("hex")
        };
        assert_eq!(mask("SigBlk:"), 0, "tty {tty}: {text}");
        // Signals 1 to 31 are bits 0 to 30; the C library keeps 32 and 33 for itself.
        assert_eq!(mask("SigIgn:") & 0x7fff_ffff, 0, "tty {tty}: {text}");
    }
}

/// Regression: a signal the bridge's own parent ignored (a shell starting it in the background
/// ignores SIGINT and SIGQUIT, `nohup` SIGHUP) stayed ignored in the CLI: exec keeps an
/// ignored signal ignored, and the shim only reset the ones it catches.
#[test]
fn a_signal_ignored_above_the_shim_is_at_its_default_for_the_cli() {
    for tty in [false, true] {
        let option = if tty { "--tty" } else { "--" };
        let output = Command::new("/bin/sh")
            .args([
                "-c",
                "trap '' HUP INT QUIT USR1 USR2 ALRM TSTP TTIN TTOU WINCH; \
                 exec \"$0\" \"$1\" /bin/grep -E '^SigIgn:' /proc/self/status",
            ])
            .arg(env!("CARGO_BIN_EXE_headless-bridge-shim"))
            .arg(option)
            .output()
            .expect("sh runs the shim");
        let text = String::from_utf8_lossy(&output.stdout);
        let ignored = text
            .split_whitespace()
            .nth(1)
            .map(|hex| u64::from_str_radix(hex, 16).expect("hex"))
            .unwrap_or_else(|| panic!("no SigIgn in {text}"));
        // Signals 1 to 31 are bits 0 to 30; the C library keeps 32 and 33 for itself.
        assert_eq!(ignored & 0x7fff_ffff, 0, "tty {tty}: {text}");
    }
}
