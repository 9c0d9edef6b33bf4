//! `headless-bridge attach SESSION_ID`: the local terminal joined to a session's terminal on a
//! bridge, over the session's WebSocket (`GET /v1/sessions/{id}/attach`).
//!
//! The bridge's URL comes from `--url` or `HB_URL`; the API token only from `HB_TOKEN`, never
//! from an argument, which `ps` would show. While attached the local terminal is in raw mode
//! (every key goes to the session, Ctrl-C included) and is put back however the command ends;
//! a window size change is passed on. Ctrl-] detaches, as in telnet, and leaves the session
//! running. The socket's handshake goes through reqwest, so an `https://` bridge works with
//! the same TLS as the other client commands.
//!
//! Exit codes: 0 detached, or the session ended; 1 the connection failed or broke; 2 invalid
//! arguments; 3 the bridge refused (no or a wrong token, no such session, the session ended).

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use base64::Engine as _;
use clap::Args;
use futures::{SinkExt as _, StreamExt as _};
use rustix::termios::{self, OptionalActions, Termios};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The key that detaches: Ctrl-] (GS), telnet's escape, which no shell or TUI binds.
const DETACH: u8 = 0x1d;

/// Arguments of `attach`.
#[derive(Args)]
pub struct AttachArgs {
    /// The session's id.
    session: String,
    /// The bridge's base URL [env: HB_URL].
    #[arg(long, env = "HB_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
}

/// How an attachment ended.
enum Ending {
    Detached,
    /// The session ended; its state's message.
    SessionEnded(String),
}

/// Why attaching failed: the exit code and what to print.
struct Failure(u8, String);

/// Runs the command and maps its outcome to the documented exit codes.
pub fn run(args: AttachArgs) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("the tokio runtime starts");
    let session = args.session.clone();
    match runtime.block_on(attach(args)) {
        Ok(Ending::Detached) => {
            eprintln!("headless-bridge attach: detached; session {session} keeps running");
            ExitCode::SUCCESS
        }
        Ok(Ending::SessionEnded(message)) => {
            eprintln!("headless-bridge attach: the session ended: {message}");
            ExitCode::SUCCESS
        }
        Err(Failure(code, message)) => {
            eprintln!("headless-bridge attach: {message}");
            ExitCode::from(code)
        }
    }
}

async fn attach(args: AttachArgs) -> Result<Ending, Failure> {
    let id: uuid::Uuid = args
        .session
        .parse()
        .map_err(|_| Failure(2, format!("`{}` is not a session id", args.session)))?;
    let token = std::env::var("HB_TOKEN").ok().filter(|t| !t.is_empty());
    let url = format!("{}/v1/sessions/{id}/attach", args.url.trim_end_matches('/'));
    let socket = connect(&url, token.as_deref()).await?;

    // Raw from here on; the guard puts the terminal back on every way out of this function.
    let raw = RawMode::enter()
        .map_err(|e| Failure(1, format!("failed to set the terminal to raw mode: {e}")))?;
    let ending = relay(socket, raw.is_some()).await;
    drop(raw);
    // Leave the modes a full-screen program may have left on, so the shell is usable.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(b"\x1b[0m\x1b[?25h\x1b[?2004l\x1b[?1l\r\n");
    let _ = stdout.flush();
    ending
}

/// The WebSocket handshake, by hand over reqwest (RFC 6455, section 4.1).
async fn connect(
    url: &str,
    token: Option<&str>,
) -> Result<WebSocketStream<reqwest::Upgraded>, Failure> {
    let mut nonce = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .map_err(|e| Failure(1, format!("failed to read random bytes: {e}")))?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let mut request = reqwest::Client::new()
        .get(url)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", &key);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Failure(1, format!("failed to reach the bridge at {url}: {e}")))?;
    if response.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED && token.is_none() {
            " (set HB_TOKEN)"
        } else {
            ""
        };
        return Err(Failure(
            3,
            format!("the bridge refused ({status}): {message}{hint}"),
        ));
    }
    let accepted = response
        .headers()
        .get("sec-websocket-accept")
        .and_then(|v| v.to_str().ok());
    if accepted != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err(Failure(
            1,
            "the bridge's WebSocket handshake is invalid".into(),
        ));
    }
    let upgraded = response
        .upgrade()
        .await
        .map_err(|e| Failure(1, format!("failed to upgrade the connection: {e}")))?;
    Ok(WebSocketStream::from_raw_socket(upgraded, Role::Client, None).await)
}

/// Carries keys out and output in until a detach, the session's end, or a signal.
async fn relay(socket: WebSocketStream<reqwest::Upgraded>, tty: bool) -> Result<Ending, Failure> {
    let broken = |e: tokio_tungstenite::tungstenite::Error| {
        Failure(1, format!("the connection to the bridge broke: {e}"))
    };
    let (mut sink, mut incoming) = socket.split();
    let mut keys = read_stdin();
    let mut window = signal(SignalKind::window_change()).expect("a SIGWINCH handler installs");
    let mut hangup = signal(SignalKind::hangup()).expect("a SIGHUP handler installs");
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler installs");
    if tty && let Some(resize) = resize_message() {
        sink.send(resize).await.map_err(broken)?;
    }
    let mut ended = None;

    loop {
        tokio::select! {
            chunk = keys.recv() => {
                let Some(chunk) = chunk else { return Ok(Ending::Detached) };
                let detach = chunk.iter().position(|b| *b == DETACH);
                let typed = &chunk[..detach.unwrap_or(chunk.len())];
                if !typed.is_empty() {
                    sink.send(Message::binary(typed.to_vec())).await.map_err(broken)?;
                }
                if detach.is_some() {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(Ending::Detached);
                }
            }
            _ = window.recv() => {
                if let Some(resize) = resize_message() {
                    sink.send(resize).await.map_err(broken)?;
                }
            }
            _ = hangup.recv() => return Ok(Ending::Detached),
            _ = terminate.recv() => return Ok(Ending::Detached),
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(&bytes).and_then(|()| stdout.flush());
                }
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    if let Some(state) = value.get("exited") {
                        ended = Some(state["message"].as_str().unwrap_or("exited").to_owned());
                    } else if let Some(message) = value["error"]["message"].as_str() {
                        eprint!("\r\nheadless-bridge attach: {message}\r\n");
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    return match ended {
                        Some(message) => Ok(Ending::SessionEnded(message)),
                        None => Err(Failure(1, "the bridge closed the connection".into())),
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(broken(e)),
            }
        }
    }
}

/// Stdin, chunk by chunk, from a thread of its own: a blocking read cannot be cancelled, and
/// the process may exit while it waits.
fn read_stdin() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// `{"resize": ...}` with the local terminal's size, when it has one.
fn resize_message() -> Option<Message> {
    let size = termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_row > 0 && size.ws_col > 0).then(|| {
        let resize = json!({"resize": {"rows": size.ws_row, "cols": size.ws_col}});
        Message::text(resize.to_string())
    })
}

/// The local terminal in raw mode, put back as it was when dropped.
struct RawMode {
    original: Termios,
}

impl RawMode {
    /// Raw mode, when stdin is a terminal (`None` when it is not: a pipe stays as it is).
    fn enter() -> std::io::Result<Option<Self>> {
        let stdin = std::io::stdin();
        if !termios::isatty(&stdin) {
            return Ok(None);
        }
        let original = termios::tcgetattr(&stdin)?;
        let mut raw = original.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)?;
        Ok(Some(Self { original }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.original);
    }
}
