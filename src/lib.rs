//! Chorus: a real-time collaboration engine. Every room is an actor holding
//! one Yjs document (`yrs`) and a presence map; every WebSocket connection is
//! a session actor speaking the native MessagePack protocol (`/ws`),
//! y-protocols (`/yjs/{room}`, for stock `y-websocket` editors) or the
//! Hocuspocus protocol (`/hocuspocus`, many documents per socket).
//!
//! # Layout
//!
//! Leaves first: each module below depends only on modules listed above it
//! (no import cycles).
//!
//! - [`ids`]: `RoomId`, `MemberId` and the node id inside a member id.
//! - [`config`]: the one `Config` (clap; every flag is also a `CHORUS_*` env
//!   var) and every named limit; depends on nothing else in the crate.
//! - [`metrics`]: the server's counters and atomic histograms, the
//!   `Sampled` collector for values other parts own, and their encoding as
//!   OpenMetrics text through one `prometheus_client` registry (built by
//!   `http`, served at `/metrics`).
//! - [`auth`]: token verification (JWT HS256, or RS256 / ES256 / EdDSA
//!   public keys) into `Grants`: who a session is and its rights
//!   (`r` / `rp` / `rw`) per room pattern. Pure.
//! - [`limit`]: token buckets (per-session messages/s and bytes/s, per-IP
//!   connection rate, the REST API's rates per IP and per credential) and
//!   the per-IP open-connection table.
//! - [`protocol`]: wire types and codecs, pure and free of I/O. `native` is
//!   the MessagePack protocol v1 specified in `proto/PROTOCOL.md`; `yjs` is
//!   y-protocols (sync, awareness, auth) with bounds-checked decoding;
//!   `hocuspocus` is the Hocuspocus frame (document name, type, body);
//!   `yupdate` walks a Yjs v1 update or state vector without allocating and
//!   refuses counts the bytes cannot hold, before yrs decodes it; `lib0` is
//!   the var-uint codec they share.
//! - [`sync`]: the y-protocols sync logic of one client on one document,
//!   sans I/O: frames in, actions for the room (or a refusal) out.
//! - [`presence`]: who is in a room, their state, cursor and typing; which
//!   members a big room lists (the rest: a count, and pages).
//! - [`outbox`]: a session's queue of ready-made WebSocket frames, shared
//!   with its rooms, the byte count that lets rooms see a slow consumer
//!   before it costs memory, and the response body that drains it.
//! - [`store`]: the `DocStore` trait (snapshot + update log, nothing
//!   cluster-specific) and its embedded (`redb`), PostgreSQL (shared by a
//!   cluster's nodes; group commit, versioned migrations) and in-memory
//!   stores; `store::history` is each room's version history (deltas
//!   between versions, whole documents now and then), written once over a
//!   per-store `Rows` transaction.
//! - [`webhook`]: the bounded webhook queue and its signed, retried delivery
//!   over `reqwest` (http and https through rustls).
//! - [`tls`]: the rustls client configuration of outgoing connections
//!   (webhooks, PostgreSQL).
//! - [`cluster`]: cluster mode (`--redis-url`): the bridge that delivers
//!   each room's Redis channel to the room — the shared log's entries
//!   (`cluster::log`: frames published once the store committed them, with
//!   `(generation, seq)` positions; holes are read back from the store) and
//!   other nodes' presence, cursors, typing and events (`Remote`) — and
//!   node liveness by heartbeat, whose keys also carry each node's session
//!   count (`cluster::balance`: the shared counts and the rebalancing
//!   rule). Redis holds nothing durable.
//! - [`room`]: the room actor and the parts it owns (document,
//!   persistence, members and delivery, fan-out window, presence handlers,
//!   the `/yjs` awareness bridge, the HTTP event window, cluster state,
//!   version history and restores: `room::history`, `room::restore`), the
//!   messages it takes, and the `Registry` that finds or starts rooms on a
//!   pool of arbiters, supervised (a room that panics is replaced by a
//!   fresh one loaded from the store). `room::api` is what the HTTP API
//!   asks of a room.
//! - [`session`]: one actor per WebSocket (`NativeSession` on `/ws`,
//!   `yjs::YjsSession` on `/yjs/{room}`, a thin adapter over [`sync`],
//!   `hocuspocus::HocuspocusSession` on `/hocuspocus`, one [`sync`] per
//!   document), each
//!   embedding a `session::core::SessionCore` (registration, heartbeat and
//!   resync, stream intake, per-session rate, close, rooms joined, token
//!   expiry; `session::flow` pauses reading a socket over the rate or while
//!   its work waits in rooms; `session::watchdog` shuts stuck sockets).
//! - [`http`]: the actix-web app (routes, health, metrics, the demo page
//!   from `demo_dir`), connection admission before the upgrade (token from
//!   the URL / `Authorization`, `Origin`, per-IP limits), TLS, and the
//!   server lifecycle, including graceful shutdown (`http::shed`: the drain
//!   on SIGTERM and rebalancing, both moving sessions off the node with
//!   close codes clients retry); `http::api` is the REST
//!   API under `/api/v1` (API key or tokens, JSON errors, origins and CORS,
//!   rates), `http::stream` its SSE, long poll and NDJSON streams from
//!   `room::events`, and `http::upgrade` serves switched WebSocket
//!   connections (the upgrade request routed through the same app, then a
//!   small pump task per connection between its socket and its session,
//!   holding no buffer while idle).
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
pub mod tls;
pub mod webhook;
