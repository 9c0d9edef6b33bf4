//! `/v1/sessions`: interactive sessions (see [`crate::session`]).
//!
//! A request that needs the tool in a given state (`?wait=idle` on the screen, `"wait_idle":
//! true` on input) waits on the session's state with a deadline, never on the program: at the
//! deadline, or at once when the state can no longer become the one asked for (the session
//! exited, or waits for a person), it answers 409 with the state it found.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::AppState;
use super::body::{self, ApiPath, ApiQuery, JsonObject};
use super::error::ApiError;
use super::error::ErrorBody;
use crate::run::ReasonCode;
use crate::session::{
    EndReason, LookupError, Session, SessionState, StartError, StartRequest, keys,
};

/// Terminal sizes a session may have: a status line is the least a program can draw on, and
/// beyond these the emulator's memory grows for no screen anyone reads.
pub(super) const ROWS: std::ops::RangeInclusive<u64> = 2..=500;
pub(super) const COLS: std::ops::RangeInclusive<u64> = 10..=1000;
/// The most text one input request may type.
const MAX_INPUT: usize = 256 << 10;
/// The longest a first prompt may be (one argument; Linux caps those at 128 KiB).
const MAX_PROMPT: usize = 120 << 10;
/// How long a request waits for a state unless it says otherwise, and at most.
const DEFAULT_WAIT_MS: u64 = 30_000;
const MAX_WAIT_MS: u64 = 600_000;
/// Screen events are sent at most this often: a spinner redraws far faster than anyone reads.
const SCREEN_EVENT_INTERVAL: Duration = Duration::from_millis(100);
const START_FIELDS: &[&str] = &[
    "adapter",
    "rows",
    "cols",
    "prompt",
    "timeout_s",
    "idle_timeout_s",
    "quiet_ms",
];
const INPUT_FIELDS: &[&str] = &["text", "keys", "paste", "wait_idle", "wait", "timeout_ms"];

/// Starts a session.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "sessions",
    summary = "Start an interactive session",
    description = "Starts an adapter's CLI in a pseudo-terminal of the given size, with a workspace, private HOME and credentials as a run gets.",
    request_body(content = Object, content_type = "application/json", description = "`adapter`, optional `rows`, `cols`, `prompt`, `idle_timeout_s`, `max_lifetime_s`, `quiet_ms`"),
    responses(
        (status = 201, description = "the session's record", body = Object),
        (status = 422, description = "the CLI or its login cannot start: `cli_not_found`, `credentials_*`", body = ErrorBody),
        (status = 429, description = "`too_many_sessions`", body = ErrorBody),
        (status = 503, description = "`shutting_down`", body = ErrorBody),
    ),
)]
pub async fn start(State(state): State<AppState>, body: JsonObject) -> Result<Response, ApiError> {
    only_fields(&body, START_FIELDS)?;
    let adapter = body.string("adapter", 64, "the adapter whose CLI to start")?;
    let (rows, cols) = size(&body, Some((24, 80)))?;
    let seconds = |field: &str| -> Result<Option<Duration>, ApiError> {
        match body.optional_u64(field)? {
            Some(0) => Err(ApiError::bad_request(
                "invalid_field",
                format!("`{field}` must be at least 1"),
            )),
            other => Ok(other.map(Duration::from_secs)),
        }
    };
    let quiet = match body.optional_u64("quiet_ms")? {
        Some(ms) if !(1..=crate::session::spec::MAX_QUIET_MS).contains(&ms) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!(
                    "`quiet_ms` must be between 1 and {}",
                    crate::session::spec::MAX_QUIET_MS
                ),
            ));
        }
        other => other.map(Duration::from_millis),
    };
    let request = StartRequest {
        adapter,
        rows,
        cols,
        prompt: body.optional_string("prompt", MAX_PROMPT)?,
        lifetime: seconds("timeout_s")?,
        idle_timeout: seconds("idle_timeout_s")?,
        quiet,
    };
    let session = state
        .sessions
        .start(request)
        .await
        .map_err(|e| start_error(&state, e))?;
    let location = HeaderValue::from_str(&format!("/v1/sessions/{}", session.id))
        .expect("a uuid path is a valid header");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(session.record()),
    )
        .into_response())
}

/// The sessions in memory, newest first.
#[utoipa::path(
    get, path = "/v1/sessions", tag = "sessions",
    summary = "List the sessions",
    responses((status = 200, description = "`{\"sessions\": [...]}`, newest first", body = Object)),
)]
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "sessions": state.sessions.list() }))
}

/// One session's record.
#[utoipa::path(
    get, path = "/v1/sessions/{id}", tag = "sessions",
    summary = "Get a session",
    params(("id" = String, Path, description = "the session's id")),
    responses(
        (status = 200, description = "the session's record", body = Object),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let record = state.sessions.record(&id).map_err(not_found)?;
    Ok(Json(record).into_response())
}

/// Ends a session: its process group is killed and reaped. Ending an ended one is no error.
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", tag = "sessions",
    summary = "End a session",
    params(("id" = String, Path, description = "the session's id")),
    responses(
        (status = 200, description = "the session's record once its processes are gone", body = Object),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let record = match state.sessions.get(&id) {
        Ok(session) => session.stop(EndReason::Deleted).await,
        Err(_) => state.sessions.record(&id).map_err(not_found)?,
    };
    Ok(Json(record).into_response())
}

/// Query of the screen.
#[derive(Debug, Deserialize)]
pub struct ScreenQuery {
    cells: Option<String>,
    wait: Option<String>,
    timeout_ms: Option<u64>,
}

/// The rendered screen; `?wait=idle|settled|exited&timeout_ms=N` first waits for that state.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/screen", tag = "sessions",
    summary = "The rendered screen",
    params(
        ("id" = String, Path, description = "the session's id"),
        ("wait" = Option<String>, Query, description = "`idle`, `settled` or `exited`: answer once the session is in that state"),
        ("timeout_ms" = Option<u64>, Query, description = "how long to wait"),
        ("cells" = Option<String>, Query, description = "`1` adds cells with attributes and the cursor"),
    ),
    responses(
        (status = 200, description = "the screen and the state", body = Object),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "the state waited for was not reached: the state and the screen", body = Object),
    ),
)]
pub async fn screen(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ScreenQuery>,
) -> Result<Response, ApiError> {
    let session = live(&state, &id)?;
    let cells = cells_flag(query.cells.as_deref())?;
    let wait = Wait::parse(query.wait.as_deref(), query.timeout_ms)?;
    if let Some(wait) = wait {
        let (reached, found) = wait.on(&session).await;
        if !reached {
            return Ok(not_reached(&session, wait, &found, cells));
        }
    }
    Ok(Json(screen_json(&session, cells)).into_response())
}

/// `?cells=`: whether a screen comes with its cells.
fn cells_flag(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            "invalid_query",
            format!("`cells` is 1 or 0, not `{other}`"),
        )),
    }
}

/// Types text, keys or a paste; with `"wait_idle": true` (or `"wait": "idle"|"settled"`)
/// answers once the tool is idle again, with the screen.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/input", tag = "sessions",
    summary = "Type text, keys or a paste",
    params(("id" = String, Path, description = "the session's id")),
    request_body(content = Object, content_type = "application/json", description = "one of `text`, `keys`, `paste`; optional `wait_idle` or `wait`"),
    responses(
        (status = 200, description = "typed; with a wait, the screen once the state is reached", body = Object),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`session_exited`, or the state waited for was not reached", body = Object),
    ),
)]
pub async fn input(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let session = live(&state, &id)?;
    only_fields(&body, INPUT_FIELDS)?;
    let bytes = input_bytes(&session, &body)?;
    let wait_name = match (body.0.get("wait_idle"), body.0.get("wait")) {
        (Some(Value::Bool(true)), _) => Some("idle".to_owned()),
        (None | Some(Value::Bool(false)), Some(Value::String(name))) => Some(name.clone()),
        (None | Some(Value::Bool(false)), None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "`wait_idle` is a boolean and `wait` a state name (idle, settled or exited)",
            ));
        }
    };
    let wait = Wait::parse(wait_name.as_deref(), body.optional_u64("timeout_ms")?)?;

    if let Err(found) = session.input(bytes).await {
        return Err(exited(&found));
    }
    if let Some(wait) = wait {
        let (reached, found) = wait.on(&session).await;
        if !reached {
            return Ok(not_reached(&session, wait, &found, false));
        }
        return Ok(Json(screen_json(&session, false)).into_response());
    }
    let mut answer = Map::new();
    answer.insert("accepted".into(), Value::Bool(true));
    merge_state(&mut answer, &session.record().state);
    Ok(Json(Value::Object(answer)).into_response())
}

/// Resizes the terminal.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/resize", tag = "sessions",
    summary = "Resize the terminal",
    params(("id" = String, Path, description = "the session's id")),
    request_body(content = Object, content_type = "application/json", description = "`rows` and `cols`"),
    responses(
        (status = 200, description = "the session's record", body = Object),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`session_exited`", body = ErrorBody),
    ),
)]
pub async fn resize(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let session = live(&state, &id)?;
    only_fields(&body, &["rows", "cols"])?;
    let (rows, cols) = size(&body, None)?;
    session.resize(rows, cols).await.map_err(|s| exited(&s))?;
    Ok(Json(session.record()).into_response())
}

/// Query of the events stream.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    cells: Option<String>,
}

/// Server-Sent Events: `state` at every change of state (the first is the current one), and
/// `screen` with the screen's lines when it changed (at most every 100 ms; the last screen
/// goes out before the `exited` state), with its cells when `?cells=1` (what the runs page
/// draws its terminal from). Each event's id is the screen's revision. The stream ends after
/// the `exited` state.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/events", tag = "sessions",
    summary = "Follow a session: Server-Sent Events of its state and screen",
    params(
        ("id" = String, Path, description = "the session's id"),
        ("cells" = Option<String>, Query, description = "`1` adds cells with attributes to each `screen` event"),
    ),
    responses(
        (status = 200, description = "`state` and `screen` events, until the session exits", content_type = "text/event-stream", body = String),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`session_exited`", body = ErrorBody),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let cells = cells_flag(query.cells.as_deref())?;
    let session = live(&state, &id)?;
    let follow = Follow::new(session, cells);
    let stream = futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok::<_, Infallible>(event), follow))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The session's asciinema v2 cast, with everything recorded up to the request.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/recording", tag = "sessions",
    summary = "The session's asciinema v2 recording",
    params(("id" = String, Path, description = "the session's id")),
    responses(
        (status = 200, description = "the cast", content_type = "application/x-asciicast", body = String),
        (status = 404, description = "`session_not_found` or `recording_not_found`", body = ErrorBody),
    ),
)]
pub async fn recording(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.sessions.record(&id).map_err(not_found)?;
    // A running session's cast is written at pauses in its output; the download gets it all.
    if let Ok(session) = state.sessions.get(&id) {
        let _ = session.flush_recording().await;
    }
    let parsed = id.parse().expect("a found session's id parses");
    let path = state.sessions.dir(parsed).join("recording.cast");
    let bytes = tokio::fs::read(&path).await.map_err(|_| {
        ApiError::not_found(
            "recording_not_found",
            format!("session `{id}` has no recording"),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-asciicast"),
        )],
        Body::from(bytes),
    )
        .into_response())
}

/// Where a follower of a session's events is.
struct Follow {
    session: Arc<Session>,
    /// Screen events carry the cells.
    cells: bool,
    states: broadcast::Receiver<SessionState>,
    view: tokio::sync::watch::Receiver<crate::session::View>,
    /// The view's sender is gone: the session's actor has ended.
    view_closed: bool,
    last_state: Option<SessionState>,
    /// The screen changed since the last screen event.
    screen_dirty: bool,
    last_screen_at: tokio::time::Instant,
    started: bool,
    ended: bool,
    pending: VecDeque<Event>,
}

impl Follow {
    fn new(session: Arc<Session>, cells: bool) -> Self {
        let (states, view) = session.subscribe();
        Self {
            session,
            cells,
            states,
            view,
            view_closed: false,
            last_state: None,
            screen_dirty: false,
            last_screen_at: tokio::time::Instant::now(),
            started: false,
            ended: false,
            pending: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            if !self.started {
                self.started = true;
                let state = self.view.borrow_and_update().state.clone();
                self.push_screen();
                self.push_state(state);
                continue;
            }
            // Every state change goes out at once; screen changes are coalesced, since a
            // spinner redraws far faster than anyone reads.
            let screen_due = self.last_screen_at + SCREEN_EVENT_INTERVAL;
            tokio::select! {
                state = self.states.recv() => match state {
                    Ok(state) => {
                        if state.is_exited() {
                            self.push_screen();
                        }
                        self.push_state(state);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => self.ended = true,
                },
                changed = self.view.changed(), if !self.screen_dirty && !self.view_closed => {
                    match changed {
                        Ok(()) => self.screen_dirty = true,
                        Err(_) => self.view_closed = true,
                    }
                }
                () = tokio::time::sleep_until(screen_due), if self.screen_dirty => {
                    self.view.borrow_and_update();
                    self.push_screen();
                }
            }
        }
    }

    fn push_screen(&mut self) {
        let revision = self.view.borrow().revision;
        let data =
            json!({ "revision": revision, "screen": screen_json(&self.session, self.cells) });
        self.pending.push_back(
            Event::default()
                .id(revision.to_string())
                .event("screen")
                .data(data.to_string()),
        );
        self.screen_dirty = false;
        self.last_screen_at = tokio::time::Instant::now();
    }

    fn push_state(&mut self, state: SessionState) {
        if self.last_state.as_ref() == Some(&state) {
            return;
        }
        let mut data = Map::new();
        merge_state(&mut data, &state);
        let revision = self.view.borrow().revision;
        self.pending.push_back(
            Event::default()
                .id(revision.to_string())
                .event("state")
                .data(Value::Object(data).to_string()),
        );
        self.ended = state.is_exited();
        self.last_state = Some(state);
    }
}

/// A state a request waits for, and until when.
#[derive(Debug, Clone, Copy)]
struct Wait {
    kind: WaitKind,
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitKind {
    /// Idle: waiting for a person or exited ends the wait at once.
    Idle,
    /// Idle or waiting for a person.
    Settled,
    Exited,
}

impl Wait {
    fn parse(name: Option<&str>, timeout_ms: Option<u64>) -> Result<Option<Self>, ApiError> {
        let kind = match name {
            None => {
                if timeout_ms.is_some() {
                    return Err(ApiError::bad_request(
                        "invalid_wait",
                        "`timeout_ms` needs a state to wait for (`wait`)",
                    ));
                }
                return Ok(None);
            }
            Some("idle") => WaitKind::Idle,
            Some("settled") => WaitKind::Settled,
            Some("exited") => WaitKind::Exited,
            Some(other) => {
                return Err(ApiError::bad_request(
                    "invalid_wait",
                    format!("cannot wait for `{other}`; wait for idle, settled or exited"),
                ));
            }
        };
        let timeout_ms = timeout_ms.unwrap_or(DEFAULT_WAIT_MS);
        if timeout_ms > MAX_WAIT_MS {
            return Err(ApiError::bad_request(
                "invalid_wait",
                format!("`timeout_ms` may be at most {MAX_WAIT_MS}"),
            ));
        }
        Ok(Some(Self {
            kind,
            timeout: Duration::from_millis(timeout_ms),
        }))
    }

    async fn on(self, session: &Session) -> (bool, SessionState) {
        let kind = self.kind;
        let ready = move |state: &SessionState| match kind {
            WaitKind::Idle => matches!(state, SessionState::Idle),
            WaitKind::Settled => matches!(
                state,
                SessionState::Idle | SessionState::WaitingForInput { .. }
            ),
            WaitKind::Exited => state.is_exited(),
        };
        let refuse = move |state: &SessionState| match kind {
            WaitKind::Idle => matches!(
                state,
                SessionState::Exited { .. } | SessionState::WaitingForInput { .. }
            ),
            WaitKind::Settled => state.is_exited(),
            WaitKind::Exited => false,
        };
        session.wait_for(ready, refuse, self.timeout).await
    }
}

/// A 409 naming the state found instead of the one waited for, with the screen as it is.
fn not_reached(session: &Session, wait: Wait, found: &SessionState, cells: bool) -> Response {
    let wanted = match wait.kind {
        WaitKind::Idle => "idle",
        WaitKind::Settled => "settled",
        WaitKind::Exited => "exited",
    };
    let code = match found {
        SessionState::Exited { .. } => "session_exited",
        SessionState::WaitingForInput { .. } => "session_waiting_for_input",
        _ => "session_not_idle",
    };
    let message = format!(
        "the session is {} and did not become {wanted} within {} ms",
        found.name(),
        wait.timeout.as_millis()
    );
    let mut state = Map::new();
    merge_state(&mut state, found);
    let body = json!({
        "error": { "code": code, "message": message },
        "state": state,
        "screen": session.screen(cells),
    });
    (StatusCode::CONFLICT, Json(body)).into_response()
}

fn screen_json(session: &Session, cells: bool) -> Value {
    let mut object = match serde_json::to_value(session.screen(cells)) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    merge_state(&mut object, &session.record().state);
    Value::Object(object)
}

/// Adds the state's fields (`state`, and for some `question` or `exit_code`...) to `object`.
fn merge_state(object: &mut Map<String, Value>, state: &SessionState) {
    if let Ok(Value::Object(fields)) = serde_json::to_value(state) {
        object.extend(fields);
    }
}

/// The bytes an input request types.
fn input_bytes(session: &Session, body: &JsonObject) -> Result<Vec<u8>, ApiError> {
    let given: Vec<&str> = ["text", "keys", "paste"]
        .into_iter()
        .filter(|f| body.0.get(*f).is_some_and(|v| !v.is_null()))
        .collect();
    if given.len() != 1 {
        return Err(ApiError::bad_request(
            "invalid_input",
            "send exactly one of `text`, `keys` (a list of key names) and `paste`",
        ));
    }
    let (application_cursor, bracketed_paste) = session.input_modes();
    let text = |field: &str| match body.0.get(field) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_INPUT => Ok(s.clone()),
        _ => Err(ApiError::bad_request(
            "invalid_input",
            format!("`{field}` must be a non-empty string of at most {MAX_INPUT} bytes"),
        )),
    };
    match given[0] {
        "text" => Ok(text("text")?.into_bytes()),
        "paste" => Ok(keys::paste(&text("paste")?, bracketed_paste)),
        _ => {
            let names: Vec<String> = match body.0.get("keys") {
                Some(Value::Array(items)) if !items.is_empty() && items.len() <= 256 => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                        ApiError::bad_request("invalid_input", "`keys` must hold key names")
                    })?,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_input",
                        "`keys` must be a list of 1 to 256 key names",
                    ));
                }
            };
            keys::encode(&names, application_cursor)
                .map_err(|e| ApiError::bad_request("unknown_key", e.to_string()))
        }
    }
}

/// `rows` and `cols`, checked; `default` applies when both are absent.
fn size(body: &JsonObject, default: Option<(u16, u16)>) -> Result<(u16, u16), ApiError> {
    let rows = body.0.get("rows").filter(|v| !v.is_null());
    let cols = body.0.get("cols").filter(|v| !v.is_null());
    if let (None, None, Some(default)) = (rows, cols, default) {
        return Ok(default);
    }
    let invalid = || {
        ApiError::bad_request(
            "invalid_size",
            format!(
                "give `rows` ({} to {}) and `cols` ({} to {}) as whole numbers",
                ROWS.start(),
                ROWS.end(),
                COLS.start(),
                COLS.end()
            ),
        )
    };
    let rows = rows.and_then(Value::as_u64).filter(|r| ROWS.contains(r));
    let cols = cols.and_then(Value::as_u64).filter(|c| COLS.contains(c));
    match (rows, cols) {
        (Some(rows), Some(cols)) => Ok((rows as u16, cols as u16)),
        _ => Err(invalid()),
    }
}

fn only_fields(body: &JsonObject, allowed: &[&str]) -> Result<(), ApiError> {
    body::only_fields(&body.0, None, allowed)
}

pub(super) fn live(state: &AppState, id: &str) -> Result<Arc<Session>, ApiError> {
    state.sessions.get(id).map_err(|e| {
        // A session of an earlier process has a record but no terminal any more.
        if state.sessions.record(id).is_ok() {
            ApiError::new(
                StatusCode::CONFLICT,
                "session_exited",
                format!("session `{id}` has ended; only its record and recording are kept"),
            )
        } else {
            not_found(e)
        }
    })
}

fn not_found(err: LookupError) -> ApiError {
    ApiError::not_found("session_not_found", err.to_string())
}

pub(super) fn exited(state: &SessionState) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "session_exited",
        format!("the session is {}; start a new one to go on", state.name()),
    )
}

fn start_error(state: &AppState, err: StartError) -> ApiError {
    match err {
        StartError::UnknownAdapter(name) => ApiError::bad_request(
            "unknown_adapter",
            format!(
                "adapter `{name}` is not known; this bridge has: {}",
                state.engine.adapters().names().join(", ")
            ),
        ),
        StartError::TooMany { .. } => ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sessions",
                format!("{err}; end one or retry later"),
            )
        },
        StartError::ShuttingDown => ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the bridge is shutting down; retry against another replica or later",
            )
        },
        StartError::Credentials { reason, message } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            credential_code(reason),
            message,
        ),
        StartError::CliNotFound(message) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cli_not_found", message)
        }
        StartError::Spawn(e) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cli_not_found",
            e.to_string(),
        ),
        StartError::Prepare(message) => {
            tracing::error!(%message, "failed to prepare a session");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "workspace_error",
                "the bridge failed to prepare the session; its log says why",
            )
        }
    }
}

/// The stable code of a credential problem that stops a session from starting.
fn credential_code(reason: ReasonCode) -> &'static str {
    match reason {
        ReasonCode::CredentialsMissing => "credentials_missing",
        ReasonCode::CredentialsExpired => "credentials_expired",
        ReasonCode::CredentialsInvalidated => "credentials_invalidated",
        ReasonCode::CredentialsRefreshReused => "credentials_refresh_reused",
        _ => "credentials_invalid",
    }
}
