//! The REST API under `/api/v1` (specified in `proto/openapi.json`): rooms,
//! documents, presence, backend-triggered events, and the room event stream
//! as SSE, long poll and NDJSON.
//!
//! - **Auth**: [`authorize`] is the one check (server API key, `Authorization:
//!   Bearer <key>`, compared in constant time; open when no key is set).
//! - **Errors**: every failure is an [`ApiError`], mapped to its status and
//!   the JSON body `{"error": {"code", "message"}}` in ONE place
//!   ([`ApiError::status`]).
//! - **Routes**: [`ROUTES`] is the list the scope is built from; a test checks
//!   it against the OpenAPI document both ways.
//! - **Gate** ([`gate`], wrapping the whole scope): `Origin` against
//!   `--allowed-origins` (403; CORS preflight and headers for allowed
//!   origins), then the request rates per client IP and per bearer
//!   credential (429 with `Retry-After`), before any route runs.
//! - **Room ids** come from the raw path segment, percent-decoded once
//!   ([`crate::protocol::decode_room_segment`]), as on `/yjs/{room}`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::{now_secs, Rights};
use crate::cluster::Item;
use crate::protocol::{decode_room_segment, validate_room_id, ErrorCode};
use crate::room::api::{
    ApiUpdate, DeleteRoom, DocBody, DocFormat, ReadDoc, ReadPresence, ReadStats, RoomError,
    Trigger, SERVER,
};
use crate::room::history::{
    parse_version_id, version_view, VersionAsk, VersionReply, VersionRequest,
    DEFAULT_VERSIONS_PAGE, MAX_VERSIONS_PAGE,
};
use crate::room::presence::check_page;
use crate::room::{RoomId, RoomsFull};
use crate::session::Shared;

/// Most rooms one `POST /api/v1/events` may name.
pub const MAX_TRIGGER_ROOMS: usize = 100;

/// Every API route, `(method, path under /api/v1)`. The scope is built from
/// this list, and `tests/it/http.rs` checks it against `proto/openapi.json`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/rooms"),
    ("DELETE", "/rooms/{room}"),
    ("GET", "/rooms/{room}/doc"),
    ("GET", "/rooms/{room}/update"),
    ("POST", "/rooms/{room}/update"),
    ("GET", "/rooms/{room}/presence"),
    ("GET", "/rooms/{room}/events"),
    ("POST", "/rooms/{room}/events"),
    ("GET", "/rooms/{room}/poll"),
    ("GET", "/rooms/{room}/stream"),
    ("GET", "/rooms/{room}/versions"),
    ("POST", "/rooms/{room}/versions"),
    ("GET", "/rooms/{room}/versions/{id}/doc"),
    ("GET", "/rooms/{room}/versions/{id}/update"),
    ("POST", "/rooms/{room}/versions/{id}/restore"),
    ("DELETE", "/rooms/{room}/versions/{id}"),
    ("POST", "/events"),
];

/// An API failure; [`ApiError::status`] is the one mapping to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a missing field, a bad query parameter. 400.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong API key or token. 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token whose grants do not cover the request. 403.
    #[error("{0}")]
    Forbidden(String),
    /// No such room (delete of a room that is neither live nor stored). 404.
    #[error("{0}")]
    NotFound(String),
    /// No route with this method and path under /api/v1. 404.
    #[error("no such API route")]
    NoRoute,
    /// The body is over `--api-max-body-bytes`. 413.
    #[error("{0}")]
    TooLarge(String),
    /// The body did not arrive within `--api-body-timeout-ms`. 408.
    #[error("{0}")]
    BodyTimeout(String),
    /// The room refused the request (bad update, document too large,
    /// room unavailable, store failure).
    #[error(transparent)]
    Room(#[from] RoomError),
    /// The room or the store did not answer. 503.
    #[error("{0}")]
    Unavailable(String),
    /// Over `--api-requests-per-sec` (this IP) or
    /// `--api-key-requests-per-sec` (this credential); retry after the
    /// duration. 429 with `Retry-After`.
    #[error("too many API requests ({0}); retry later")]
    RateLimited(&'static str, Duration),
    /// A browser request whose `Origin` is not in `--allowed-origins`. 403.
    #[error("this Origin is not allowed (allowed_origins)")]
    OriginNotAllowed,
}

impl From<RoomsFull> for ApiError {
    fn from(e: RoomsFull) -> Self {
        ApiError::Room(RoomError {
            code: ErrorCode::RoomUnavailable,
            message: e.to_string(),
        })
    }
}

impl ApiError {
    /// HTTP status and stable code of this error: the one mapping.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::RateLimited(..) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::OriginNotAllowed => (StatusCode::FORBIDDEN, "origin_not_allowed"),
            ApiError::Room(e) => {
                let status = match e.code {
                    ErrorCode::BadUpdate | ErrorCode::MissingDependencies => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    ErrorCode::DocTooLarge | ErrorCode::EventTooLarge => {
                        StatusCode::PAYLOAD_TOO_LARGE
                    }
                    ErrorCode::BadRoom | ErrorCode::BadMessage => StatusCode::BAD_REQUEST,
                    ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::RoomUnavailable | ErrorCode::StoreFailed | ErrorCode::GoingAway => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, e.code.as_str())
            }
        }
    }

    fn bad_room(e: &str) -> ApiError {
        ApiError::Room(RoomError {
            code: ErrorCode::BadRoom,
            message: e.to_owned(),
        })
    }
}

/// Turns a handler's result into a response; errors become the JSON error
/// body and are counted in `chorus_errors_total`.
pub(super) fn respond(shared: &Shared, res: Result<HttpResponse, ApiError>) -> HttpResponse {
    match res {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = e.status();
            shared.metrics.error(code);
            let mut r = HttpResponse::build(status);
            if let ApiError::RateLimited(_, wait) = &e {
                // Whole seconds, rounded up: never "0" while still limited.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                r.insert_header((header::RETRY_AFTER, secs.max(1)));
            }
            r.json(json!({ "error": { "code": code, "message": e.to_string() } }))
        }
    }
}

/// Methods and request headers a CORS preflight may ask for.
const CORS_METHODS: &str = "GET, POST, DELETE, OPTIONS";
const CORS_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID";

/// Runs before every `/api/v1` route (and the scope's 404):
///
/// 1. `Origin`: with `--allowed-origins` set, a request whose `Origin` is
///    not listed gets 403 `origin_not_allowed`; a CORS preflight (`OPTIONS`
///    with `Access-Control-Request-Method`) from a listed origin is answered
///    here (204), and responses to listed origins carry
///    `Access-Control-Allow-Origin` (+ `Vary: Origin`). Requests without
///    `Origin` (servers, curl) are unaffected; with the list empty, no CORS
///    headers are sent (browsers then keep to same-origin use).
/// 2. Rates: one request from the client IP (as WebSocket admission sees
///    it, `--trust-forwarded-for`) and one for the bearer credential
///    presented, if any; over either, 429 `rate_limited` with `Retry-After`.
pub async fn gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(shared) = req.app_data::<web::Data<Shared>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let allowed = &shared.config.allowed_origins;
    let origin = req.headers().get(header::ORIGIN).cloned();
    let cors_origin = match &origin {
        Some(o) if !allowed.is_empty() => {
            if !o.to_str().is_ok_and(|o| allowed.iter().any(|a| a == o)) {
                let res = respond(&shared, Err(ApiError::OriginNotAllowed));
                return Ok(req.into_response(res).map_into_right_body());
            }
            Some(o.clone())
        }
        _ => None,
    };
    if let Some(origin) = &cors_origin {
        let preflight = req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            let res = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, CORS_METHODS))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, CORS_HEADERS))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, 600))
                .insert_header((header::VARY, "Origin"))
                .finish();
            return Ok(req.into_response(res).map_into_right_body());
        }
    }
    if let Err(e) = rate_check(req.request(), &shared) {
        if let ApiError::RateLimited(which, _) = &e {
            crate::http::note_refusal(
                &shared,
                req.request(),
                which,
                "REST API rate exceeded (429)",
            );
        }
        let mut res = respond(&shared, Err(e));
        if let Some(origin) = cors_origin {
            cors_headers(res.headers_mut(), origin);
        }
        return Ok(req.into_response(res).map_into_right_body());
    }
    let mut res = next.call(req).await?;
    if let Some(origin) = cors_origin {
        cors_headers(res.headers_mut(), origin);
    }
    Ok(res.map_into_left_body())
}

fn cors_headers(h: &mut header::HeaderMap, origin: HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

fn rate_check(req: &HttpRequest, shared: &Shared) -> Result<(), ApiError> {
    let rates = &shared.api_rates;
    if let Some(ip) = crate::http::client_ip(req, shared.config.trust_forwarded_for) {
        rates
            .by_ip
            .check(ip)
            .map_err(|wait| ApiError::RateLimited("api_requests_per_sec", wait))?;
    }
    if let Some(token) = crate::http::request_token(req) {
        let digest = Sha256::digest(token.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        rates
            .by_key
            .check(key)
            .map_err(|wait| ApiError::RateLimited("api_key_requests_per_sec", wait))?;
    }
    Ok(())
}

/// What a route needs.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Server-wide routes (list, delete, trigger into many rooms): the API
    /// key only.
    Admin,
    /// A route on one room: the API key, or a token granting `Rights` there.
    Room(&'a str, Rights),
}

/// The one API authorization check.
///
/// - `Authorization: Bearer <--api-key>` allows every route (compared in
///   constant time: the SHA-256 digests of both, so the length does not
///   leak either).
/// - With authentication on (`--auth-secret` / `--auth-public-key`), a
///   token (`Authorization: Bearer` or `?token=`, which `EventSource` can
///   send) allows a room's routes as far as its grants go: reads need `r`,
///   events `rp`, updates `rw`. `--allow-anonymous-read` lets requests
///   without a token read.
/// - With neither configured the API is open (logged at start).
pub fn authorize(req: &HttpRequest, shared: &Shared, need: Need<'_>) -> Result<(), ApiError> {
    let token = crate::http::request_token(req);
    let key = shared.config.api.api_key.as_deref();
    if let (Some(key), Some(given)) = (key, token.as_deref()) {
        let a = Sha256::digest(given.as_bytes());
        let b = Sha256::digest(key.as_bytes());
        if a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
        {
            return Ok(());
        }
    }
    let Some(verifier) = &shared.auth else {
        return match key {
            None => Ok(()),
            Some(_) => Err(ApiError::Unauthorized(
                "missing or wrong API key (Authorization: Bearer <key>)".into(),
            )),
        };
    };
    let (room, rights) = match need {
        Need::Admin => {
            return Err(ApiError::Unauthorized(match key {
                Some(_) => "this route needs the API key (Authorization: Bearer <key>)".into(),
                None => "this route needs an API key: start the server with --api-key".into(),
            }))
        }
        Need::Room(room, rights) => (room, rights),
    };
    let granted = match token {
        Some(token) => verifier
            .verify(&token, now_secs())
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?
            .rights(room),
        None if shared.config.allow_anonymous_read => Some(Rights::Read),
        None => {
            return Err(ApiError::Unauthorized(
                "a token (Authorization: Bearer or ?token=) or the API key is required".into(),
            ))
        }
    };
    match granted {
        Some(g) if g >= rights => Ok(()),
        _ => Err(ApiError::Forbidden(format!(
            "the token does not grant {} in room {room:?}",
            match rights {
                Rights::Read => "r",
                Rights::Presence => "rp",
                Rights::Write => "rw",
            }
        ))),
    }
}

/// Registers the `/api/v1` scope from [`ROUTES`].
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut scope = web::scope("/api/v1");
    for (method, path) in ROUTES {
        let route = match (*method, *path) {
            ("GET", "/rooms") => web::get().to(list_rooms),
            ("DELETE", "/rooms/{room}") => web::delete().to(delete_room),
            ("GET", "/rooms/{room}/doc") => web::get().to(get_doc),
            ("GET", "/rooms/{room}/update") => web::get().to(get_update),
            ("POST", "/rooms/{room}/update") => web::post().to(post_update),
            ("GET", "/rooms/{room}/presence") => web::get().to(get_presence),
            ("GET", "/rooms/{room}/events") => web::get().to(super::stream::sse),
            ("POST", "/rooms/{room}/events") => web::post().to(trigger_room),
            ("GET", "/rooms/{room}/poll") => web::get().to(super::stream::poll),
            ("GET", "/rooms/{room}/stream") => web::get().to(super::stream::ndjson),
            ("GET", "/rooms/{room}/versions") => web::get().to(list_versions),
            ("POST", "/rooms/{room}/versions") => web::post().to(create_version),
            ("GET", "/rooms/{room}/versions/{id}/doc") => web::get().to(version_doc),
            ("GET", "/rooms/{room}/versions/{id}/update") => web::get().to(version_update),
            ("POST", "/rooms/{room}/versions/{id}/restore") => web::post().to(restore_version),
            ("DELETE", "/rooms/{room}/versions/{id}") => web::delete().to(delete_version),
            ("POST", "/events") => web::post().to(trigger_many),
            _ => web::route().to(no_route),
        };
        scope = scope.route(path, route);
    }
    cfg.service(
        scope
            .default_service(web::to(no_route))
            .wrap(actix_web::middleware::from_fn(gate)),
    );
}

async fn no_route(shared: web::Data<Shared>) -> HttpResponse {
    respond(&shared, Err(ApiError::NoRoute))
}

/// The `{room}` path segment (`/api/v1/rooms/{room}…`, segment 4 of the
/// raw path), percent-decoded and validated.
pub(super) fn room_of(req: &HttpRequest, shared: &Shared) -> Result<RoomId, ApiError> {
    let room =
        decode_room_segment(crate::http::raw_path_segment(req, 4)).map_err(ApiError::bad_room)?;
    validate_room_id(&room, shared.config.limits.max_room_id_bytes).map_err(ApiError::bad_room)?;
    Ok(Arc::from(room))
}

/// Reads the body, refusing more than `--api-max-body-bytes` (413).
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    shared: &Shared,
) -> Result<Bytes, ApiError> {
    let max = shared.config.api.api_max_body_bytes;
    let too_large = || ApiError::TooLarge(format!("body over api_max_body_bytes ({max})"));
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let timeout = shared.config.api.api_body_timeout_ms;
    let deadline =
        (timeout > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(timeout));
    let slow = || {
        ApiError::BodyTimeout(format!(
            "body not received within api_body_timeout_ms ({timeout})"
        ))
    };
    let mut body = BytesMut::new();
    loop {
        let next = match deadline {
            Some(at) => tokio::time::timeout_at(at, payload.next())
                .await
                .map_err(|_| slow())?,
            None => payload.next().await,
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    shared.metrics.received(body.len());
    Ok(body.freeze())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))
}

/// Maps a mailbox failure (room stopped or overloaded).
pub(super) fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::Unavailable(format!("room did not answer: {e}"))
}

#[derive(serde::Serialize)]
struct RoomEntry {
    id: String,
    #[serde(flatten)]
    stats: crate::room::api::RoomStats,
}

/// Query of `GET /api/v1/rooms`.
#[derive(Deserialize)]
struct ListQuery {
    /// Page size, 1..=`--api-max-page` (default: the smaller of 100 and it).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The opaque cursor after `room`: its id, base64url.
fn encode_cursor(room: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(room.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| ApiError::BadRequest("cursor is not one this server made".into()))
}

/// Live rooms in id order, one page at a time: the page after `cursor`
/// (the last id of the previous page), with `next_cursor` when more
/// follow. Rooms opened or evicted between pages appear or not, but no room
/// live throughout is skipped or repeated.
async fn list_rooms(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        authorize(&req, &shared, Need::Admin)?;
        let query = web::Query::<ListQuery>::from_query(req.query_string())
            .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
        let max = shared.config.api.api_max_page;
        let limit = query.limit.unwrap_or(max.min(100));
        if limit == 0 || limit > max {
            return Err(ApiError::BadRequest(format!(
                "limit must be 1 to {max} (api_max_page)"
            )));
        }
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let mut live = shared.registry.live_page(after.as_deref(), limit + 1);
        let next_cursor = (live.len() > limit).then(|| {
            live.truncate(limit);
            live.last().map(|(id, _)| encode_cursor(id))
        });
        let stats =
            futures_util::future::join_all(live.iter().map(|(_, a)| a.send(ReadStats))).await;
        // A room evicted meanwhile is left out of its page.
        let rooms: Vec<RoomEntry> = live
            .iter()
            .zip(stats)
            .filter_map(|((id, _), s)| {
                s.ok().map(|stats| RoomEntry {
                    id: id.to_string(),
                    stats,
                })
            })
            .collect();
        let mut body = json!({ "rooms": rooms });
        if let Some(Some(next)) = next_cursor {
            body["next_cursor"] = Value::String(next);
        }
        Ok(HttpResponse::Ok().json(body))
    };
    respond(&shared, res.await)
}

/// Reads the room's document in `format` (the checks of every route first).
async fn read_doc(
    req: &HttpRequest,
    shared: &Shared,
    format: DocFormat,
) -> Result<DocBody, ApiError> {
    let room = room_of(req, shared)?;
    authorize(req, shared, Need::Room(&room, Rights::Read))?;
    shared
        .registry
        .request(&room, ReadDoc { format })
        .await?
        .await
        .map_err(mailbox)?
        .map_err(ApiError::from)
}

async fn get_doc(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = match read_doc(&req, &shared, DocFormat::Json).await {
        Ok(DocBody::Json(doc)) => match room_of(&req, &shared) {
            Ok(room) => Ok(HttpResponse::Ok().json(json!({ "room": &*room, "doc": doc }))),
            Err(e) => Err(e),
        },
        Ok(DocBody::Binary(_)) => Err(ApiError::Unavailable("unexpected document form".into())),
        Err(e) => Err(e),
    };
    respond(&shared, res)
}

async fn get_update(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = match read_doc(&req, &shared, DocFormat::Binary).await {
        Ok(DocBody::Binary(bytes)) => Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes)),
        Ok(DocBody::Json(_)) => Err(ApiError::Unavailable("unexpected document form".into())),
        Err(e) => Err(e),
    };
    respond(&shared, res)
}

/// The room of a write route, checked against `rights`, and its body.
async fn room_and_body(
    req: &HttpRequest,
    payload: web::Payload,
    shared: &Shared,
    rights: Rights,
) -> Result<(RoomId, Bytes), ApiError> {
    let room = room_of(req, shared)?;
    authorize(req, shared, Need::Room(&room, rights))?;
    let body = read_body(req, payload, shared).await?;
    Ok((room, body))
}

async fn post_update(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let res = async {
        let (room, data) = room_and_body(&req, payload, &shared, Rights::Write).await?;
        shared
            .registry
            .request(&room, ApiUpdate { data })
            .await?
            .await
            .map_err(mailbox)??;
        Ok(HttpResponse::Ok().json(json!({ "ok": true })))
    };
    respond(&shared, res.await)
}

/// Query of `GET /rooms/{room}/presence`: those of `presence_list`.
#[derive(Deserialize)]
struct PresenceQuery {
    /// The `next` of the previous page (a decimal join order).
    after: Option<String>,
    /// Page size, 1 to `--presence-list-max-members` (default: that).
    limit: Option<u64>,
}

/// A page of the room's member list in join order: the page a member's
/// `presence_list` reads (same `after`, `limit` and checks, same room-side
/// code), answered with the fields of `presence_page`. So no request makes
/// the room build more than `--presence-list-max-members` members, however
/// big the room.
async fn get_presence(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        let room = room_of(&req, &shared)?;
        authorize(&req, &shared, Need::Room(&room, Rights::Read))?;
        let query = web::Query::<PresenceQuery>::from_query(req.query_string())
            .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
        let max = shared.config.limits.presence_list_max_members;
        let (after, limit) =
            check_page(query.after.as_deref(), query.limit, max).map_err(ApiError::BadRequest)?;
        let page = shared
            .registry
            .request(&room, ReadPresence { after, limit })
            .await?
            .await
            .map_err(mailbox)??;
        Ok(HttpResponse::Ok().json(json!({
            "room": &*room,
            "members": page.members,
            "next": page.next.map(|n| n.to_string()),
            "total": page.total,
        })))
    };
    respond(&shared, res.await)
}

async fn delete_room(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        authorize(&req, &shared, Need::Admin)?;
        let room = room_of(&req, &shared)?;
        if shared.registry.live(&room).is_none() {
            let exists = shared
                .store
                .exists(&room)
                .await
                .map_err(|e| ApiError::Unavailable(format!("store: {e}")))?;
            if !exists {
                return Err(ApiError::NotFound(format!("no room {room:?}")));
            }
        }
        shared
            .registry
            .request(&room, DeleteRoom)
            .await?
            .await
            .map_err(mailbox)??;
        Ok(HttpResponse::Ok().json(json!({ "deleted": &*room })))
    };
    respond(&shared, res.await)
}

/// Body of a trigger into one room.
#[derive(Deserialize)]
struct EventBody {
    name: String,
    #[serde(default)]
    data: Value,
}

/// Body of a trigger into several rooms.
#[derive(Deserialize)]
struct ManyEventBody {
    rooms: Vec<String>,
    name: String,
    #[serde(default)]
    data: Value,
}

/// Sends the event to each live room; returns the rooms it reached.
async fn trigger(
    shared: &Shared,
    rooms: Vec<RoomId>,
    name: String,
    data: Value,
) -> Result<HttpResponse, ApiError> {
    if name.is_empty() {
        return Err(ApiError::BadRequest("event name is empty".into()));
    }
    let size = name.len() + serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
    let max = shared.config.limits.max_event_bytes;
    if size > max {
        return Err(ApiError::TooLarge(format!(
            "event is {size} bytes, over max_event_bytes ({max})"
        )));
    }
    let mut delivered = Vec::new();
    for room in rooms {
        let msg = Trigger {
            name: name.clone(),
            data: data.clone(),
        };
        // A live room fans out and publishes to its other nodes itself; a
        // room not open here may be open on another node.
        if let Some(addr) = shared.registry.live(&room) {
            if addr.send(msg).await.is_ok() {
                delivered.push(room.to_string());
            }
        } else if let Some(bridge) = &shared.bridge {
            bridge.publish_unsequenced(
                &room,
                Item::Event {
                    from: SERVER.into(),
                    name: msg.name,
                    data: msg.data,
                },
            );
            delivered.push(room.to_string());
        }
    }
    Ok(HttpResponse::Accepted().json(json!({ "delivered": delivered })))
}

async fn trigger_room(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let res = async {
        let (room, body) = room_and_body(&req, payload, &shared, Rights::Presence).await?;
        let body: EventBody = parse_json(&body)?;
        trigger(&shared, vec![room], body.name, body.data).await
    };
    respond(&shared, res.await)
}

async fn trigger_many(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let res = async {
        authorize(&req, &shared, Need::Admin)?;
        let body: ManyEventBody = parse_json(&read_body(&req, payload, &shared).await?)?;
        if body.rooms.is_empty() || body.rooms.len() > MAX_TRIGGER_ROOMS {
            return Err(ApiError::BadRequest(format!(
                "rooms must name 1 to {MAX_TRIGGER_ROOMS} rooms"
            )));
        }
        let max = shared.config.limits.max_room_id_bytes;
        let mut rooms = Vec::with_capacity(body.rooms.len());
        for r in body.rooms {
            validate_room_id(&r, max).map_err(ApiError::bad_room)?;
            rooms.push(RoomId::from(r));
        }
        trigger(&shared, rooms, body.name, body.data).await
    };
    respond(&shared, res.await)
}

/// The user id of the request's token, when it carries one (an API key
/// names nobody).
fn request_user(req: &HttpRequest, shared: &Shared) -> Option<String> {
    let token = crate::http::request_token(req)?;
    let grants = shared.auth.as_ref()?.verify(&token, now_secs()).ok()?;
    grants.user.as_deref().map(str::to_owned)
}

/// The `{id}` path segment of a version route (segment 6).
fn version_of(req: &HttpRequest) -> Result<u64, ApiError> {
    parse_version_id(crate::http::raw_path_segment(req, 6)).map_err(ApiError::BadRequest)
}

/// Sends a history request to the room, after the checks of every room
/// route (`rights` in the room).
async fn ask_versions(
    req: &HttpRequest,
    shared: &Shared,
    rights: Rights,
    ask: impl FnOnce() -> Result<VersionAsk, ApiError>,
) -> Result<(RoomId, VersionReply), ApiError> {
    let room = room_of(req, shared)?;
    authorize(req, shared, Need::Room(&room, rights))?;
    let reply = send_version_request(req, shared, &room, ask()?).await?;
    Ok((room, reply))
}

/// Sends `ask` to the room on behalf of the request's user.
async fn send_version_request(
    req: &HttpRequest,
    shared: &Shared,
    room: &RoomId,
    ask: VersionAsk,
) -> Result<VersionReply, ApiError> {
    let request = VersionRequest {
        ask,
        user: request_user(req, shared),
        member: None,
        counted: true,
    };
    shared
        .registry
        .request(room, request)
        .await?
        .await
        .map_err(mailbox)?
        .map_err(ApiError::from)
}

/// A room answered a history request with another kind of reply.
fn unexpected_reply() -> ApiError {
    ApiError::Unavailable("unexpected answer".into())
}

/// Query of `GET /rooms/{room}/versions`.
#[derive(Deserialize)]
struct VersionsQuery {
    limit: Option<usize>,
    before: Option<String>,
}

async fn list_versions(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        let (_, reply) = ask_versions(&req, &shared, Rights::Read, || {
            let q = web::Query::<VersionsQuery>::from_query(req.query_string())
                .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
            let limit = q.limit.unwrap_or(DEFAULT_VERSIONS_PAGE);
            if limit == 0 || limit > MAX_VERSIONS_PAGE {
                return Err(ApiError::BadRequest(format!(
                    "limit must be 1 to {MAX_VERSIONS_PAGE}"
                )));
            }
            let before = q
                .before
                .as_deref()
                .map(parse_version_id)
                .transpose()
                .map_err(ApiError::BadRequest)?;
            Ok(VersionAsk::List { before, limit })
        })
        .await?;
        let VersionReply::Page(page) = reply else {
            return Err(unexpected_reply());
        };
        let versions: Vec<_> = page.versions.iter().map(version_view).collect();
        Ok(HttpResponse::Ok().json(json!({
            "versions": versions,
            "next": page.next.map(|n| n.to_string()),
        })))
    };
    respond(&shared, res.await)
}

/// Body of `POST /rooms/{room}/versions`.
#[derive(Deserialize)]
struct CreateVersionBody {
    name: String,
}

async fn create_version(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let res = async {
        let (room, body) = room_and_body(&req, payload, &shared, Rights::Write).await?;
        let body: CreateVersionBody = parse_json(&body)?;
        let max = shared.config.history.max_version_name_bytes;
        crate::room::history::check_version_name(&body.name, max).map_err(ApiError::BadRequest)?;
        let reply =
            send_version_request(&req, &shared, &room, VersionAsk::Create { name: body.name })
                .await?;
        let VersionReply::Version(meta) = reply else {
            return Err(unexpected_reply());
        };
        Ok(HttpResponse::Created().json(json!({ "version": version_view(&meta) })))
    };
    respond(&shared, res.await)
}

async fn version_doc(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        let (room, reply) = ask_versions(&req, &shared, Rights::Read, || {
            Ok(VersionAsk::View {
                id: version_of(&req)?,
                json: true,
            })
        })
        .await?;
        let VersionReply::Json(doc) = reply else {
            return Err(unexpected_reply());
        };
        Ok(HttpResponse::Ok().json(json!({ "room": &*room, "doc": doc })))
    };
    respond(&shared, res.await)
}

async fn version_update(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        let (_, reply) = ask_versions(&req, &shared, Rights::Read, || {
            Ok(VersionAsk::View {
                id: version_of(&req)?,
                json: false,
            })
        })
        .await?;
        let VersionReply::Update(bytes) = reply else {
            return Err(unexpected_reply());
        };
        Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(bytes))
    };
    respond(&shared, res.await)
}

async fn restore_version(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        let (_, reply) = ask_versions(&req, &shared, Rights::Write, || {
            Ok(VersionAsk::Restore {
                id: version_of(&req)?,
            })
        })
        .await?;
        let VersionReply::Version(meta) = reply else {
            return Err(unexpected_reply());
        };
        Ok(HttpResponse::Ok().json(json!({ "version": version_view(&meta) })))
    };
    respond(&shared, res.await)
}

async fn delete_version(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let res = async {
        ask_versions(&req, &shared, Rights::Write, || {
            Ok(VersionAsk::Delete {
                id: version_of(&req)?,
            })
        })
        .await?;
        Ok(HttpResponse::NoContent().finish())
    };
    respond(&shared, res.await)
}
