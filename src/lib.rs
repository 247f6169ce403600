//! Chorus: a real-time collaboration engine. Every room is an actor holding
//! one Yjs document (`yrs`) and a presence map; every WebSocket connection is
//! a session actor speaking the native MessagePack protocol (`/ws`) or
//! y-protocols (`/yjs/{room}`, for stock `y-websocket` editors).
//!
//! # Layout
//!
//! - [`auth`]: token verification (JWT HS256, or RS256 / ES256 / EdDSA
//!   public keys) into `Grants`: who a session is and its rights
//!   (`r` / `rp` / `rw`) per room pattern. Pure; sessions and `http` use it.
//! - [`limit`]: token buckets (per-session messages/s and bytes/s, per-IP
//!   connection rate) and the per-IP open-connection table.
//! - [`config`]: the one `Config` (clap; every flag is also a `CHORUS_*` env
//!   var) and every named limit; depends on nothing else in the crate.
//! - [`protocol`]: wire types and codecs, pure and free of I/O. `native` is
//!   the MessagePack protocol v1 specified in `proto/PROTOCOL.md`; `yjs` is
//!   y-protocols (sync, awareness, auth) with bounds-checked decoding;
//!   `yupdate` walks a Yjs v1 update or state vector without allocating and
//!   refuses counts the bytes cannot hold, before yrs decodes it.
//! - [`session`]: one actor per WebSocket (`NativeSession` on `/ws`,
//!   `yjs::YjsSession` on `/yjs/{room}`), each embedding a
//!   `session::core::SessionCore` (registration, heartbeat and resync,
//!   stream intake, per-session rate, close, rooms joined, token expiry);
//!   the protocol files keep only decoding and per-message checks.
//! - [`sync`]: the y-protocols sync logic of one client on one document,
//!   sans I/O: frames in, actions for the room (or a refusal) out; the
//!   `/yjs` session is a thin adapter over it.
//! - [`outbox`]: a session's queue of ready-made WebSocket frames, shared
//!   with its rooms, and the byte count that lets rooms see a slow consumer
//!   before it costs memory.
//! - [`room`]: the room actor (document, members, coalesced fan-out, resync
//!   of lagging members, idle eviction) and the `Registry` that finds or
//!   starts rooms on a pool of arbiters; `room::awareness` maps awareness
//!   client ids to members and expires silent ones.
//! - [`presence`]: who is in a room, their state, cursor and typing.
//! - [`store`]: the `DocStore` trait (snapshot + update log) and its
//!   implementations.
//! - [`http`]: the actix-web app (routes, health, metrics, the demo page
//!   from `demo_dir`), connection admission before the upgrade (token from
//!   the URL / `Authorization`, `Origin`, per-IP limits), TLS, and the
//!   server lifecycle, including graceful shutdown; `http::api` is the REST
//!   API under `/api/v1` (API key or tokens, JSON errors, SSE, long poll,
//!   NDJSON);
//!   `room::events` is the event window it streams from.
//! - [`cluster`]: cluster mode (`--redis-url`): the bridge that delivers
//!   each room's Redis channel to the room — the shared log's entries
//!   (`Log`, appended and published in one script by `store::redis`, with
//!   `(epoch, seq)` offsets; gaps are read back from the stream) and other
//!   nodes' presence, cursors, typing and events (`Remote`) — and node
//!   liveness by heartbeat.
//! - [`metrics`]: the server's counters and atomic histograms, the
//!   `Sampled` collector for values other parts own, and their encoding as
//!   OpenMetrics text through one `prometheus_client` registry (built by
//!   `http`, served at `/metrics`).
//! - [`webhook`]: the bounded webhook queue and its signed, retried delivery
//!   over `reqwest` (http and https through rustls); reads `config`.
#![deny(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
pub mod http;
pub mod ids;
pub mod limit;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod room;
pub mod session;
pub mod store;
pub mod sync;
pub mod webhook;
