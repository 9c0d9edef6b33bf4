//! A session's terminal over a WebSocket, with a real WebSocket client (tokio-tungstenite)
//! driving a real bash on the bridge's pseudo-terminal: keystrokes in, raw output out, a
//! resize the program sees, the session's state and cast kept while attached, and the
//! refusals (no token, a used ticket, an ended session, a plain GET).

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::sessions::{leftovers, screen_when, start};
use crate::support::{BridgeBuilder, TOKEN, TestBridge};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An id no session has.
const NO_SESSION: &str = "01a24269-0000-7000-8000-000000000000";
/// How long a test waits for output it expects.
const PATIENCE: Duration = Duration::from_secs(20);

/// A bridge with a `shell` profile (bash without startup files) and a `quitter` that exits
/// at once.
async fn bridge() -> (TestBridge, TempDir) {
    let profiles = tempfile::tempdir().expect("a temp dir");
    std::fs::write(
        profiles.path().join("shell.toml"),
        "executable = \"/bin/bash\"\n[session]\nargs = [\"--norc\", \"--noprofile\"]\nquiet_ms = 300\n",
    )
    .unwrap();
    std::fs::write(
        profiles.path().join("quitter.toml"),
        "executable = \"/bin/sh\"\n[session]\nargs = [\"-c\", \"exit 4\"]\n",
    )
    .unwrap();
    let bridge = BridgeBuilder::new()
        .var("HB_ADAPTERS_DIR", profiles.path().display().to_string())
        .start()
        .await;
    (bridge, profiles)
}

fn attach_url(bridge: &TestBridge, id: &str, query: &str) -> String {
    let base = bridge.url.replacen("http://", "ws://", 1);
    format!("{base}/v1/sessions/{id}/attach{query}")
}

/// Opens the socket with the API token in the `Authorization` header.
async fn attach(bridge: &TestBridge, id: &str) -> Socket {
    let mut request = attach_url(bridge, id, "").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("a header value"),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);
    socket
}

/// The status a refused upgrade got.
async fn refused(
    request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> u16 {
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

/// Reads binary frames into `seen` until it contains `wanted`; returns the text frames met.
async fn read_until(socket: &mut Socket, seen: &mut String, wanted: &str) -> Vec<Value> {
    let mut texts = Vec::new();
    let reading = async {
        while !seen.contains(wanted) {
            match socket.next().await.expect("the socket stays open").unwrap() {
                Message::Binary(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                Message::Text(text) => texts.push(serde_json::from_str(&text).unwrap()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, reading)
        .await
        .unwrap_or_else(|_| panic!("`{wanted}` never came; seen: {seen:?}"));
    texts
}

#[tokio::test]
async fn an_attached_terminal_types_reads_resizes_and_sees_the_end() {
    let (bridge, _profiles) = bridge().await;
    let id = start(&bridge, json!({"adapter": "shell", "rows": 24, "cols": 80})).await;
    screen_when(&bridge, &id, "idle").await;

    // The first frame draws the screen as it is: a late attacher sees bash's prompt.
    let mut socket = attach(&bridge, &id).await;
    let mut seen = String::new();
    read_until(&mut socket, &mut seen, "bash").await;

    seen.clear();
    socket
        .send(Message::binary(&b"echo hi\r"[..]))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "\rhi\r\n").await;
    // Typing over the socket moves the state like any input: it settles to idle again.
    screen_when(&bridge, &id, "idle").await;

    // The resize is served before the next keystrokes, so the program sees it.
    let resize = json!({"resize": {"rows": 30, "cols": 90}}).to_string();
    socket.send(Message::text(resize)).await.unwrap();
    seen.clear();
    socket
        .send(Message::binary(&b"stty size\r"[..]))
        .await
        .unwrap();
    read_until(&mut socket, &mut seen, "30 90").await;
    let (_, screen) = bridge.get(&format!("/v1/sessions/{id}/screen")).await;
    assert_eq!(
        (screen["rows"].as_u64(), screen["cols"].as_u64()),
        (Some(30), Some(90))
    );

    // A control message it cannot follow is answered, and the socket stays.
    let bad = json!({"resize": {"rows": 0, "cols": 90}}).to_string();
    socket.send(Message::text(bad)).await.unwrap();
    socket
        .send(Message::binary(&b"echo still here\r"[..]))
        .await
        .unwrap();
    let texts = read_until(&mut socket, &mut seen, "\rstill here\r\n").await;
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert_eq!(texts[0]["error"]["code"], "invalid_size");

    // When the program ends, the socket says how, and closes.
    socket
        .send(Message::binary(&b"exit 7\r"[..]))
        .await
        .unwrap();
    let ending = tokio::time::timeout(PATIENCE, async {
        let mut exited = None;
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    exited = Some(serde_json::from_str::<Value>(&text).unwrap())
                }
                Ok(Message::Close(frame)) => return (exited, frame.map(|f| u16::from(f.code))),
                Ok(_) => {}
                Err(e) => panic!("the socket broke: {e}"),
            }
        }
        (exited, None)
    })
    .await
    .expect("the socket closes when the session ends");
    let exited = ending.0.expect("an exited message");
    assert_eq!(exited["exited"]["exit_code"], 7, "{exited}");
    assert_eq!(exited["exited"]["reason"], "process_exited");
    assert_eq!(ending.1, Some(1000));
    assert_eq!(leftovers(&id), 0);

    // The keystrokes typed over the socket are in the cast as input.
    let (status, cast) = bridge
        .get_bytes(&format!("/v1/sessions/{id}/recording"))
        .await;
    assert_eq!(status, 200);
    let cast = String::from_utf8(cast).unwrap();
    assert!(cast.contains(r#""i","echo hi\r""#), "{cast}");
}

#[tokio::test]
async fn attaching_takes_the_token_or_a_single_use_ticket_and_a_running_session() {
    let (bridge, _profiles) = bridge().await;
    let id = start(&bridge, json!({"adapter": "shell"})).await;

    // No token, a wrong one, a made-up ticket: 401 before anything is said of the session.
    assert_eq!(refused(attach_url(&bridge, &id, "")).await, 401);
    let mut wrong = attach_url(&bridge, &id, "").into_client_request().unwrap();
    wrong
        .headers_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    assert_eq!(refused(wrong).await, 401);
    assert_eq!(refused(attach_url(&bridge, &id, "?ticket=abc")).await, 401);
    assert_eq!(refused(attach_url(&bridge, NO_SESSION, "")).await, 401);

    // A ticket opens the socket once, without the token.
    let (status, issued) = bridge
        .post(&format!("/v1/sessions/{id}/attach-ticket"), &json!({}))
        .await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["expires_in_s"], 60);
    let ticket = issued["ticket"].as_str().expect("a ticket");
    let with_ticket = attach_url(&bridge, &id, &format!("?ticket={ticket}"));
    let (mut socket, _) = tokio_tungstenite::connect_async(with_ticket.as_str())
        .await
        .expect("the ticket works");
    assert!(matches!(socket.next().await, Some(Ok(Message::Binary(_)))));
    assert_eq!(
        refused(with_ticket.as_str()).await,
        401,
        "a ticket works once"
    );

    // Leaving the socket leaves the session running.
    socket.close(None).await.unwrap();
    drop(socket);
    let (_, record) = bridge.get(&format!("/v1/sessions/{id}")).await;
    assert_ne!(record["state"], "exited", "{record}");

    // A plain GET is told to upgrade.
    let (status, body) = bridge.get(&format!("/v1/sessions/{id}/attach")).await;
    assert_eq!(status, 426, "{body}");
    assert_eq!(body["error"]["code"], "websocket_required");
    let (status, _) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);

    // An ended session (deleted, or exited by itself) cannot be attached to, nor get a ticket.
    let quitter = start(&bridge, json!({"adapter": "quitter"})).await;
    screen_when(&bridge, &quitter, "exited").await;
    for ended in [&id, &quitter] {
        let mut request = attach_url(&bridge, ended, "")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        assert_eq!(refused(request).await, 409);
        let (status, body) = bridge
            .post(&format!("/v1/sessions/{ended}/attach-ticket"), &json!({}))
            .await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "session_exited");
    }
    assert_eq!(leftovers(&id), 0);
}

/// Whether the terminal of `master` is in canonical (cooked) mode.
fn canonical(master: &dyn portable_pty::MasterPty) -> bool {
    let termios = master.get_termios().expect("a unix terminal has termios");
    termios.local_flags.bits() & libc::ICANON != 0
}

/// What `headless-bridge attach` wrote to its terminal, read by a thread.
struct Screen {
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Screen {
    fn wait_for(&mut self, wanted: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !self.seen.contains(wanted) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("`{wanted}` never came; seen: {:?}", self.seen),
            }
        }
    }
}

/// Polls the session's size (the record does not count as using it) until it is `size`.
async fn size_becomes(bridge: &TestBridge, id: &str, size: (u64, u64)) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, record) = bridge.get(&format!("/v1/sessions/{id}")).await;
        if (record["rows"].as_u64(), record["cols"].as_u64()) == (Some(size.0), Some(size.1)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "size never became {size:?}: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// The command's terminal is read with blocking waits, so the bridge serves from other threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attach_command_joins_a_terminal_raw_and_detaches_on_ctrl_bracket() {
    use portable_pty::{CommandBuilder, PtySize};

    let (bridge, _profiles) = bridge().await;
    let id = start(&bridge, json!({"adapter": "shell", "rows": 20, "cols": 70})).await;
    screen_when(&bridge, &id, "idle").await;

    // The command runs on a terminal of its own, as a person's would be.
    let size = |rows, cols| PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    };
    let pty = portable_pty::native_pty_system()
        .openpty(size(24, 80))
        .unwrap();
    let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_headless-bridge"));
    command.args(["attach", &id]);
    command.env_clear();
    command.env("HB_URL", &bridge.url);
    command.env("HB_TOKEN", TOKEN);
    let mut child = pty.slave.spawn_command(command).unwrap();
    drop(pty.slave);
    assert!(canonical(&*pty.master), "a new terminal starts cooked");
    let mut reader = pty.master.try_clone_reader().unwrap();
    let mut keyboard = pty.master.take_writer().unwrap();
    let (tx, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut screen = Screen {
        output,
        seen: String::new(),
    };

    // Attached: the screen is drawn, the terminal is raw, and the session takes its size.
    screen.wait_for("bash");
    assert!(!canonical(&*pty.master), "raw while attached");
    size_becomes(&bridge, &id, (24, 80)).await;
    pty.master.resize(size(30, 100)).unwrap();
    size_becomes(&bridge, &id, (30, 100)).await;

    // Ctrl-C goes to the session's program, not to the command. The program says it runs
    // first: bash echoes the line before it starts it, and a Ctrl-C in between can be lost.
    keyboard
        .write_all(b"sh -c 'echo sleeping-now; exec sleep 30'\r")
        .unwrap();
    screen.wait_for("\rsleeping-now\r\n");
    keyboard.write_all(b"\x03").unwrap();
    screen.wait_for("^C");
    keyboard.write_all(b"echo from-cli\r").unwrap();
    screen.wait_for("\rfrom-cli\r\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "Ctrl-C did not stop the command"
    );

    // Ctrl-] detaches: the command ends well, the terminal is cooked again, the session runs.
    keyboard.write_all(&[0x1d]).unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    screen.wait_for("detached");
    assert!(canonical(&*pty.master), "the terminal is put back");
    let (_, record) = bridge.get(&format!("/v1/sessions/{id}")).await;
    assert_ne!(record["state"], "exited", "{record}");

    let (status, _) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(leftovers(&id), 0);
}

/// Regression: a cast downloaded while the program kept printing lacked everything since the
/// output last paused, which sat in the recorder's buffer.
#[tokio::test]
async fn a_cast_downloaded_while_the_program_prints_has_the_output_so_far() {
    let (bridge, _profiles) = bridge().await;
    let id = start(&bridge, json!({"adapter": "shell"})).await;
    screen_when(&bridge, &id, "idle").await;
    let mut socket = attach(&bridge, &id).await;
    let mut seen = String::new();
    read_until(&mut socket, &mut seen, "bash").await;

    // Never quiet for the profile's 300 ms, so the recorder finds no pause to write at.
    let ticking = b"for i in $(seq 100000); do echo tick-$i; sleep 0.02; done\r";
    socket.send(Message::binary(&ticking[..])).await.unwrap();
    read_until(&mut socket, &mut seen, "tick-5\r\n").await;
    let (status, cast) = bridge
        .get_bytes(&format!("/v1/sessions/{id}/recording"))
        .await;
    assert_eq!(status, 200);
    let cast = String::from_utf8(cast).unwrap();
    assert!(cast.contains("tick-5\\r\\n"), "{cast}");

    let (status, _) = bridge
        .send(Method::DELETE, &format!("/v1/sessions/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(leftovers(&id), 0);
}
