//! `GET /v1/runs/{id}/events`: a run's event log as Server-Sent Events.
//!
//! The stream replays the log from the start (or from after `Last-Event-ID`, so a client that
//! lost its connection resumes where it was), then follows the run live, and ends after the
//! `outcome` event. Events are read from the store a page at a time, so a slow client costs
//! one page of memory and never holds the run back. Each event has its sequence number as
//! its SSE id and its kind as its SSE event name; the data is the event as JSON.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;

use super::AppState;
use super::body::ApiPath;
use super::error::{ApiError, ErrorBody};
use super::runs::parse_id;
use super::schema::RunEventSse;
use crate::run::RunId;
use crate::run::engine::Follow;
use crate::run::events::{EventKind, RunEvent};
use crate::store::Store;

/// Events read from the store per query.
const PAGE: usize = 256;

/// Streams the run's events.
#[utoipa::path(
    get, path = "/v1/runs/{id}/events", tag = "runs",
    summary = "Follow a run's events (Server-Sent Events)",
    description = "Each SSE event has the event's `seq` as its id, its `kind` as its name and a `RunEvent` as JSON data. The stream replays the log from the start, follows the run live and ends after the `outcome` event.",
    params(
        ("id" = String, Path, description = "the run's id"),
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event"),
    ),
    responses(
        (status = 200, description = "a stream of `RunEvent`s", body = RunEventSse, content_type = "text/event-stream"),
        (status = 404, description = "`run_not_found`", body = ErrorBody),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run = parse_id(&id)?;
    let store = state.engine.store().clone();
    if store
        .get(run)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .is_none()
    {
        return Err(ApiError::not_found(
            "run_not_found",
            format!("no run has id `{id}`"),
        ));
    }
    let after = last_event_id(&headers);

    let cursor = Cursor {
        store,
        run,
        after,
        follow: state.engine.follow(run),
        buffer: VecDeque::new(),
        ended: false,
    };
    let mut response = Sse::new(stream(cursor))
        .keep_alive(KeepAlive::default())
        .into_response();
    // Proxies such as nginx buffer responses unless told not to, which would hold events back.
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The event to resume after: `Last-Event-ID`, or 0 (the start) without one or with one that
/// is not a number, as no id this bridge sends would be. A number too large for a `u64` is
/// still past every event, so it resumes past the end rather than at the start.
fn last_event_id(headers: &HeaderMap) -> u64 {
    let Some(id) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    else {
        return 0;
    };
    match id.parse::<u64>() {
        Ok(seq) => seq,
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => u64::MAX,
        Err(_) => 0,
    }
}

/// Where a subscriber is in a run's log.
struct Cursor {
    store: Store,
    run: RunId,
    after: u64,
    follow: Option<Follow>,
    buffer: VecDeque<RunEvent>,
    ended: bool,
}

fn stream(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.next().await?;
        Some((Ok(to_sse(&event)), cursor))
    })
}

impl Cursor {
    async fn next(&mut self) -> Option<RunEvent> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.after = event.seq;
                self.ended = event.kind == EventKind::Outcome;
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match self.store.events_after(self.run, self.after, PAGE).await {
                Ok(page) if !page.is_empty() => {
                    self.buffer.extend(page);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "failed to read run events");
                    return None;
                }
            }
            // Nothing new is stored: wait for the writer, or end if the run is over.
            let follow = self.follow.as_mut()?;
            let after = self.after;
            let still_running = tokio::select! {
                changed = follow.latest_event.wait_for(|seq| *seq > after) => changed.is_ok(),
                _ = follow.done.wait_for(|done| *done) => false,
            };
            if !still_running {
                self.follow = None;
            }
        }
    }
}

fn to_sse(event: &RunEvent) -> Event {
    let data = serde_json::to_string(event).expect("an event serializes");
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(id: &str) -> u64 {
        let mut headers = HeaderMap::new();
        headers.insert(
            "last-event-id",
            HeaderValue::from_str(id).expect("a header"),
        );
        last_event_id(&headers)
    }

    #[test]
    fn last_event_id_resumes_after_the_number_given() {
        assert_eq!(last_event_id(&HeaderMap::new()), 0);
        assert_eq!(after(" 3 "), 3);
        assert_eq!(after("not-a-number"), 0);
    }

    #[test]
    fn a_last_event_id_past_any_number_is_past_every_event() {
        assert_eq!(after("18446744073709551615"), u64::MAX);
        assert_eq!(after("99999999999999999999999"), u64::MAX);
    }
}
