//! A session's terminal over a WebSocket: `GET /v1/sessions/{id}/attach`, and the single-use
//! tickets a browser needs for it, `POST /v1/sessions/{id}/attach-ticket`.
//!
//! The socket carries the terminal raw. To the client: binary frames of output, the first
//! one drawing the screen as it is (so a late attacher sees something), and when the session
//! ends a text frame `{"exited": {...}}` with its final state, then a close. From the client:
//! binary frames are keystrokes, typed as they are; a text frame holding a JSON object is a
//! control message (`{"resize": {"rows": R, "cols": C}}`); any other text frame is typed too.
//! Input over the socket is input like any other: it counts as activity, moves the session's
//! state, and is recorded in the cast. Leaving the socket leaves the session running.
//!
//! The upgrade takes the API token in the `Authorization` header, as every route does.
//! Browsers cannot set headers on a WebSocket, so they ask for a ticket (with the token) and
//! put it in the URL as `?ticket=`: it names one session, works once, and expires after a
//! minute. The API token itself never goes in a URL.

use std::sync::Arc;

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::auth;
use super::body::{ApiPath, ApiQuery};
use super::error::ApiError;
use super::sessions::{COLS, ROWS, exited, live};
use crate::session::Session;
use crate::session::tickets::TICKET_LIFETIME;

/// Query of the attach route.
#[derive(Debug, Deserialize)]
pub struct AttachQuery {
    ticket: Option<String>,
}

/// Issues a single-use ticket to attach to a running session.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/attach-ticket", tag = "sessions",
    summary = "A single-use ticket to attach to a session's terminal",
    description = "For a browser, which cannot send the token on a WebSocket: the ticket, valid 60 s for this session only, goes in `?ticket=` of `GET /v1/sessions/{id}/attach`.",
    params(("id" = String, Path, description = "the session's id")),
    responses(
        (status = 201, description = "`ticket`, `expires_in_s` and the attach `url`", body = Object),
        (status = 404, description = "`session_not_found`", body = super::error::ErrorBody),
        (status = 409, description = "`session_exited`", body = super::error::ErrorBody),
    ),
)]
pub async fn ticket(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let session = live(&state, &id)?;
    if session.is_exited() {
        return Err(exited(&session.record().state));
    }
    let ticket = state
        .sessions
        .tickets()
        .issue(session.id)
        .map_err(|e| ApiError::internal(&e))?;
    let body = json!({
        "ticket": ticket,
        "expires_in_s": TICKET_LIFETIME.as_secs(),
        "url": format!("/v1/sessions/{id}/attach?ticket={ticket}"),
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Upgrades to a WebSocket carrying the session's terminal.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/attach", tag = "sessions",
    summary = "Attach to a session's terminal over a WebSocket",
    description = "A WebSocket handshake (RFC 6455): a GET with `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`, answered 101. To the client go binary frames of raw output (the first draws the screen as it is) and, when the session ends, a text frame `{\"exited\": {...}}` with its final state, then a close (1000). From the client, binary frames are keystrokes; a text frame holding a JSON object is a control message, `{\"resize\": {\"rows\": R, \"cols\": C}}` (a bad one is answered with a text frame `{\"error\": {\"code\", \"message\"}}`, code `invalid_size` or `unknown_control`); any other text frame is typed. The token goes in `Authorization`; a client that cannot send headers on a WebSocket (a browser) puts a ticket from `POST /v1/sessions/{id}/attach-ticket` in `?ticket=` instead.",
    params(
        ("id" = String, Path, description = "the session's id"),
        ("Connection" = String, Header, example = "Upgrade", description = "`Upgrade`, alone or among other options"),
        ("Upgrade" = String, Header, example = "websocket", description = "`websocket`"),
        ("Sec-WebSocket-Version" = String, Header, example = "13", description = "`13`"),
        ("Sec-WebSocket-Key" = String, Header, example = "dGhlIHNhbXBsZSBub25jZQ==", description = "16 random bytes in base64 (RFC 6455, section 4.1)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open",
         headers(
             ("Connection" = String, description = "`upgrade`"),
             ("Upgrade" = String, description = "`websocket`"),
             ("Sec-WebSocket-Accept" = String, description = "the key's answer (RFC 6455, section 4.2.2)"),
         )),
        (status = 401, description = "`unauthorized`: no valid bearer token; or `invalid_ticket`: the ticket is unknown, used, expired or for another session", body = super::error::ErrorBody),
        (status = 404, description = "`session_not_found`", body = super::error::ErrorBody),
        (status = 409, description = "`session_exited`", body = super::error::ErrorBody),
        (status = 426, description = "`websocket_required`: the GET was not a WebSocket handshake", body = super::error::ErrorBody),
    ),
    security(("bearer" = []), ("ticket" = [])),
)]
pub async fn attach(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<AttachQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Who may attach is settled before anything about the session is said.
    match &query.ticket {
        Some(ticket) => {
            let redeemed = id
                .parse()
                .is_ok_and(|session| state.sessions.tickets().redeem(session, ticket));
            if !redeemed {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_ticket",
                    "the attach ticket is unknown, used, expired or for another session; \
                     ask POST /v1/sessions/{id}/attach-ticket for a new one",
                ));
            }
        }
        None => auth::check(&state, &headers)?,
    }
    let session = live(&state, &id)?;
    if session.is_exited() {
        return Err(exited(&session.record().state));
    }
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            format!(
                "this route speaks WebSocket only: {}",
                rejection.body_text()
            ),
        )
    })?;
    Ok(upgrade.on_upgrade(move |socket| relay(socket, session)))
}

/// Carries the terminal both ways until the session ends or the client leaves.
async fn relay(socket: WebSocket, session: Arc<Session>) {
    let (mut sink, mut incoming) = socket.split();
    let (drawing, mut output) = session.attach();
    // Holding the view counts as following the session, which keeps off its idle timeout.
    let (_, mut view) = session.subscribe();
    tracing::info!(session_id = %session.id, "a terminal attached");
    if sink.send(Message::Binary(drawing.into())).await.is_err() {
        return;
    }

    loop {
        tokio::select! {
            chunk = output.recv() => {
                let bytes = match chunk {
                    Ok(bytes) => bytes,
                    // Fallen too far behind to catch up chunk by chunk: draw it all again.
                    Err(RecvError::Lagged(_)) => session.redraw().into(),
                    Err(RecvError::Closed) => break,
                };
                if sink.send(Message::Binary(bytes)).await.is_err() {
                    return;
                }
            }
            () = ended(&mut view) => break,
            message = incoming.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if session.input(bytes.to_vec()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = control_or_input(&session, text.as_str()).await
                        && sink.send(Message::Text(reply.to_string().into())).await.is_err()
                    {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    tracing::info!(session_id = %session.id, "a terminal detached");
                    return;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    // The session ended: its last words, its state, and a clean close.
    while let Ok(bytes) = output.try_recv() {
        if sink.send(Message::Binary(bytes)).await.is_err() {
            return;
        }
    }
    let mut state = Map::new();
    if let Ok(Value::Object(fields)) = serde_json::to_value(session.record().state) {
        state.extend(fields);
    }
    let _ = sink
        .send(Message::Text(json!({ "exited": state }).to_string().into()))
        .await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "the session ended".into(),
        })))
        .await;
}

/// Resolves once the session has exited (or its actor is gone).
async fn ended(view: &mut tokio::sync::watch::Receiver<crate::session::View>) {
    // The guard `wait_for` answers with is dropped here, not held across the caller's awaits.
    let _ = view.wait_for(|v| v.state.is_exited()).await.is_ok();
}

/// Serves a text frame: a control message when it holds a JSON object, else keystrokes.
/// Answers an error frame for a control message it cannot follow.
async fn control_or_input(session: &Session, text: &str) -> Option<Value> {
    let Ok(Value::Object(control)) = serde_json::from_str::<Value>(text) else {
        let _ = session.input(text.as_bytes().to_vec()).await;
        return None;
    };
    let error = |code: &str, message: String| {
        Some(json!({ "error": { "code": code, "message": message } }))
    };
    let Some(size) = control.get("resize") else {
        return error(
            "unknown_control",
            "a JSON text frame is a control message; the one known is `resize`".into(),
        );
    };
    let rows = size["rows"].as_u64().filter(|r| ROWS.contains(r));
    let cols = size["cols"].as_u64().filter(|c| COLS.contains(c));
    match (rows, cols) {
        (Some(rows), Some(cols)) => {
            let _ = session.resize(rows as u16, cols as u16).await;
            None
        }
        _ => error(
            "invalid_size",
            format!(
                "`resize` takes `rows` ({} to {}) and `cols` ({} to {})",
                ROWS.start(),
                ROWS.end(),
                COLS.start(),
                COLS.end()
            ),
        ),
    }
}
