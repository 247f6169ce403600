//! The room event stream over HTTP: SSE (`/events`), NDJSON (`/stream`)
//! and long poll (`/poll`). Each subscribes to the room's event window
//! ([`crate::room::events`]) and frames the events it is sent; the frames
//! of one event are built once and shared by every subscriber.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use super::api::{authorize, mailbox, respond, room_of, ApiError, Need};
use crate::auth::Rights;
use crate::room::api::{Subscribe, Subscription, Unsubscribe};
use crate::room::events::RoomEvent;
use crate::room::{Room, RoomId};
use crate::session::Shared;

/// Query of the stream endpoints.
#[derive(Deserialize)]
struct StreamQuery {
    /// Resume after this sequence number (SSE also reads `Last-Event-ID`).
    since: Option<u64>,
}

/// Unsubscribes when the response (and its stream) is dropped.
struct SubGuard {
    addr: Addr<Room>,
    id: u64,
}

impl Drop for SubGuard {
    fn drop(&mut self) {
        self.addr.do_send(Unsubscribe { id: self.id });
    }
}

/// Subscribes to `room` after `since`.
async fn subscribe(
    shared: &Shared,
    room: &RoomId,
    since: Option<u64>,
) -> Result<(Subscription, SubGuard), ApiError> {
    let addr = shared.registry.enter_waiting(room).await?;
    let sub = addr.send(Subscribe { since }).await.map_err(mailbox)??;
    let guard = SubGuard { addr, id: sub.id };
    Ok((sub, guard))
}

fn since_of(req: &HttpRequest, sse: bool) -> Result<Option<u64>, ApiError> {
    let query = web::Query::<StreamQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    if query.since.is_some() || !sse {
        return Ok(query.since);
    }
    match req.headers().get("Last-Event-ID") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest("Last-Event-ID is not a sequence number".into())),
    }
}

/// How a stream frames events.
#[derive(Clone, Copy)]
enum Framing {
    Sse,
    Ndjson,
}

struct StreamState {
    replay: VecDeque<Arc<RoomEvent>>,
    sub: Subscription,
    _guard: SubGuard,
    framing: Framing,
    heartbeat: Duration,
    last: u64,
    done: bool,
}

impl StreamState {
    fn frame(&mut self, event: &RoomEvent) -> Bytes {
        if event.kind != "reset" || event.seq > self.last {
            self.last = self.last.max(event.seq);
        }
        match self.framing {
            Framing::Sse => event.sse(),
            Framing::Ndjson => event.ndjson(),
        }
    }
}

/// The event stream of a subscription: replay, then live events, with
/// heartbeats; ends with a `reset` if the room drops the subscriber.
fn event_stream(
    mut sub: Subscription,
    guard: SubGuard,
    framing: Framing,
    heartbeat: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let head = sub.head;
    let first = match framing {
        Framing::Sse => Bytes::from(format!("retry: 1000\n: chorus head={head}\n\n")),
        Framing::Ndjson => Bytes::new(),
    };
    let state = StreamState {
        replay: sub.replay.drain(..).collect(),
        sub,
        _guard: guard,
        framing,
        heartbeat,
        last: head,
        done: false,
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(event) = st.replay.pop_front() {
            let frame = st.frame(&event);
            return Some((Ok(frame), st));
        }
        tokio::select! {
            event = st.sub.rx.recv() => match event {
                Some(event) => {
                    let frame = st.frame(&event);
                    Some((Ok(frame), st))
                }
                None => {
                    st.done = true;
                    if st.sub.lagged.load(Ordering::Acquire) {
                        let reset = RoomEvent::reset(st.last, "dropped");
                        let frame = st.frame(&reset);
                        Some((Ok(frame), st))
                    } else {
                        None
                    }
                }
            },
            () = tokio::time::sleep(st.heartbeat) => {
                let beat = match st.framing {
                    Framing::Sse => Bytes::from_static(b": heartbeat\n\n"),
                    Framing::Ndjson => Bytes::from_static(b"\n"),
                };
                Some((Ok(beat), st))
            }
        }
    });
    futures_util::stream::once(async move { Ok(first) }).chain(body)
}

async fn stream_response(
    req: HttpRequest,
    shared: web::Data<Shared>,
    framing: Framing,
) -> HttpResponse {
    let res = async {
        let room = room_of(&req, &shared)?;
        authorize(&req, &shared, Need::Room(&room, Rights::Read))?;
        let since = since_of(&req, matches!(framing, Framing::Sse))?;
        let (sub, guard) = subscribe(&shared, &room, since).await?;
        let heartbeat = Duration::from_millis(shared.config.api.sse_heartbeat_ms);
        let content_type = match framing {
            Framing::Sse => "text/event-stream",
            Framing::Ndjson => "application/x-ndjson",
        };
        Ok(HttpResponse::Ok()
            .content_type(content_type)
            .insert_header(("Cache-Control", "no-cache"))
            .insert_header(("X-Accel-Buffering", "no"))
            .streaming(event_stream(sub, guard, framing, heartbeat)))
    };
    respond(&shared, res.await)
}

pub(super) async fn sse(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    stream_response(req, shared, Framing::Sse).await
}

pub(super) async fn ndjson(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    stream_response(req, shared, Framing::Ndjson).await
}

/// Long poll: events after `since` at once if there are any, else the
/// first ones within `--poll-timeout-ms`, else 204.
pub(super) async fn poll(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        let room = room_of(&req, &shared)?;
        authorize(&req, &shared, Need::Room(&room, Rights::Read))?;
        let since = since_of(&req, false)?;
        let (mut sub, _guard) = subscribe(&shared, &room, since).await?;
        let mut events = std::mem::take(&mut sub.replay);
        if events.is_empty() {
            let timeout = Duration::from_millis(shared.config.api.poll_timeout_ms);
            match tokio::time::timeout(timeout, sub.rx.recv()).await {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {
                    events.push(Arc::new(RoomEvent::reset(sub.head, "dropped")));
                }
                Err(_) => return Ok(HttpResponse::NoContent().finish()),
            }
        }
        while let Ok(event) = sub.rx.try_recv() {
            events.push(event);
        }
        let seq = events.iter().map(|e| e.seq).max().unwrap_or(sub.head);
        // Each event's JSON was serialized once by the room; splice it in.
        let mut body = format!("{{\"seq\":{seq},\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(std::str::from_utf8(&e.json).unwrap_or("null"));
        }
        body.push_str("]}");
        Ok(HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("Cache-Control", "no-cache"))
            .body(body))
    };
    respond(&shared, res.await)
}
