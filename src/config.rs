//! One `Config` for the whole server: every flag is also an environment
//! variable `CHORUS_*`, and every limit has a documented default. The
//! README's limits table is written by hand; `tests/it/docs.rs` checks that
//! it names every flag and states each numeric default as it is here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command line of the `chorus` binary.
#[derive(Debug, Parser)]
#[command(name = "chorus", version, about = "Real-time collaboration engine")]
pub struct Cli {
    /// What to run; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Server options, accepted without the `serve` word too.
    #[command(flatten)]
    pub serve: Config,
}

/// Subcommands of the binary.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the server (the default).
    Serve(Config),
    /// Mint a signed token for development; prints it alone on the last line.
    Token(TokenArgs),
    /// Work on a store offline (`chorus store copy`).
    Store(StoreArgs),
}

/// `chorus store …`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// Subcommands of `chorus store`.
#[derive(Debug, Clone, Subcommand)]
pub enum StoreCommand {
    /// Copy every room (snapshot and log, sequence numbers kept) from one
    /// store to another: a redb data directory or a PostgreSQL URL, either
    /// way. Rooms already identical in the target are skipped, so a rerun
    /// resumes an interrupted copy.
    Copy(CopyArgs),
}

/// `chorus store copy`; see `store::copy`.
#[derive(Debug, Clone, Args)]
pub struct CopyArgs {
    /// Source: a `postgres://` / `postgresql://` URL, or the data directory
    /// of a redb store (the one holding `chorus.redb`).
    #[arg(long)]
    pub from: String,
    /// Target, in the same forms as `--from`; a redb directory is created
    /// if missing.
    #[arg(long)]
    pub to: String,
    /// Rooms read, compared and written per transaction.
    #[arg(long, default_value_t = 100)]
    pub batch_rooms: usize,
    /// Pause between two batches, in ms, to spare a database in use.
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
    /// PEM file of extra root certificates for a PostgreSQL server's
    /// certificate (as the server's `--postgres-ca-file`).
    #[arg(long, env = "CHORUS_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<PathBuf>,
}

/// `chorus token`: mints an HS256 token (see `auth` for the claims).
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Shared secret, the same as the server's `--auth-secret` (at least
    /// 16 bytes, as the server requires). `--secret` is an alias.
    #[arg(
        long = "auth-secret",
        alias = "secret",
        env = "CHORUS_AUTH_SECRET",
        hide_env_values = true
    )]
    pub secret: String,
    /// Room pattern granted: exact, or ending in `*` (prefix). Repeatable.
    #[arg(long = "room", required = true)]
    pub rooms: Vec<String>,
    /// Rights in those rooms: `r` read-only, `rp` read + own presence,
    /// cursor, typing and events, `rw` everything.
    #[arg(long, default_value = "rw")]
    pub rights: String,
    /// User id (`sub`).
    #[arg(long)]
    pub user: String,
    /// Display name (`name`).
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime in seconds (`exp` = now + this).
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

impl Cli {
    /// The server configuration, whichever way it was given.
    pub fn into_config(self) -> Config {
        match self.command {
            Some(Command::Serve(config)) => config,
            Some(Command::Token(_) | Command::Store(_)) | None => self.serve,
        }
    }
}

/// Which `DocStore` keeps documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// Embedded, crash-safe redb database `chorus.redb` in `--data-dir`
    /// (the default): every acknowledged update survives `kill -9`.
    Redb,
    /// In process memory: lost when the process exits.
    Memory,
    /// In PostgreSQL at `--postgres-url`: durable, shared by every node of
    /// a cluster (any node can open any room), usable on one node too.
    Postgres,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Server configuration. Constructors take this (or an `Arc` of it) rather
/// than long argument lists.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "CHORUS_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// TCP port to listen on; 0 picks a free one.
    #[arg(long, env = "CHORUS_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Where documents are kept: `redb` (durable, in `--data-dir`; the
    /// default without `--postgres-url`), `postgres` (at `--postgres-url`;
    /// the default when it is given, and the only durable choice in cluster
    /// mode) or `memory` (ephemeral: tests and throwaway deployments).
    #[arg(long, env = "CHORUS_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Directory of the durable store (created if missing); the database is
    /// the file `chorus.redb` inside it. Unused with `--store memory`.
    #[arg(long, env = "CHORUS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Group commit: appends from every room that queue up while one commit
    /// is being written share the next commit (one fsync per batch). `false`
    /// commits (and fsyncs) every append on its own; for benchmarks.
    #[arg(long, env = "CHORUS_STORE_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub store_group_commit: bool,
    /// Most store operations (appends, compactions, deletes) written in one
    /// group commit. No delay is added to fill a batch: a batch is whatever
    /// queued while the previous commit was being written, up to this cap.
    #[arg(long, env = "CHORUS_STORE_MAX_BATCH", default_value_t = 1024)]
    pub store_max_batch: usize,
    /// First delay before a failed store write is tried again, in ms: an
    /// update that a room applied (and showed to its members) but could not
    /// append is kept by the room and appended again, the delay doubling
    /// after each failure up to `store_retry_max_ms`; the embedded store
    /// reopens its file on the same schedule after an I/O error.
    #[arg(long, env = "CHORUS_STORE_RETRY_MIN_MS", default_value_t = 100)]
    pub store_retry_min_ms: u64,
    /// Longest delay between two tries of a failed store write, in ms.
    #[arg(long, env = "CHORUS_STORE_RETRY_MAX_MS", default_value_t = 5_000)]
    pub store_retry_max_ms: u64,
    /// Redis URL (`redis://host:port`) that turns on cluster mode: rooms
    /// open on several nodes stay one room (see the README's "Cluster").
    /// Absent: a single node, nothing is published.
    #[arg(long, env = "CHORUS_REDIS_URL")]
    pub redis_url: Option<String>,
    /// PostgreSQL URL (`postgres://user:password@host:port/db`, libpq
    /// parameters such as `sslmode=require` in the query) of the document
    /// store; selects `--store postgres`. Required in cluster mode.
    #[arg(long, env = "CHORUS_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Connections the PostgreSQL store keeps open (one writes appends in
    /// group commits; the others load, compact and read logs).
    #[arg(long, env = "CHORUS_POSTGRES_POOL_SIZE", default_value_t = 8)]
    pub postgres_pool_size: usize,
    /// PEM file of extra root certificates trusted for the PostgreSQL
    /// server's certificate (a managed database's CA), besides the system's.
    #[arg(long, env = "CHORUS_POSTGRES_CA_FILE")]
    pub postgres_ca_file: Option<PathBuf>,
    /// How long an append waits for PostgreSQL (unreachable, restarting)
    /// before its client gets `store_failed`; the room keeps the update and
    /// retries it until it is stored.
    #[arg(
        long,
        env = "CHORUS_POSTGRES_APPEND_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub postgres_append_timeout_ms: u64,
    /// Cluster mode: how long a node waits for a missing log entry to arrive
    /// on Redis (entries of different nodes may arrive out of order) before
    /// reading it from the store.
    #[arg(long, env = "CHORUS_CLUSTER_GAP_WAIT_MS", default_value_t = 50)]
    pub cluster_gap_wait_ms: u64,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info` or `chorus=debug`).
    /// The binary also reads the older `CHORUS_LOG` when `CHORUS_LOG_LEVEL`
    /// is unset.
    #[arg(long, env = "CHORUS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "CHORUS_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// HTTP worker threads (0 = one per core).
    #[arg(long, env = "CHORUS_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Room arbiters (threads that run room actors; 0 = one per core).
    #[arg(long, env = "CHORUS_ROOM_THREADS", default_value_t = 0)]
    pub room_threads: usize,
    /// Directory of the built demo page (chat + editor) served at `/` and
    /// `/assets/*`; relative paths are taken from the working directory.
    /// Build it with `npm --prefix demo run build` (`npm --prefix demo start`
    /// builds it and starts the server). When it is missing, `/` answers
    /// 503 with these instructions; the WebSocket API works regardless.
    #[arg(long, env = "CHORUS_DEMO_DIR", default_value = "demo/dist")]
    pub demo_dir: PathBuf,
    /// HS256 secret (at least 16 bytes) that tokens are signed with. When
    /// set (or `--auth-public-key` is), connections without a valid token
    /// are refused; when neither is, the server is open to anyone.
    #[arg(long, env = "CHORUS_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// PEM public key (Ed25519, P-256 or RSA) that tokens are signed with
    /// (EdDSA / ES256 / RS256), instead of `--auth-secret`.
    #[arg(long, env = "CHORUS_AUTH_PUBLIC_KEY", conflicts_with = "auth_secret")]
    pub auth_public_key: Option<PathBuf>,
    /// With authentication on, let connections without a token read every
    /// room (rights `r`: no updates, no presence).
    #[arg(long, env = "CHORUS_ALLOW_ANONYMOUS_READ", default_value_t = false)]
    pub allow_anonymous_read: bool,
    /// Comma-separated `Origin`s browsers may connect from (e.g.
    /// `https://app.example.com`); a request with another `Origin` header is
    /// refused (403). Empty: any origin. Requests without `Origin`
    /// (non-browser clients) are not affected.
    #[arg(long, env = "CHORUS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Take the client IP for per-IP limits from the last `X-Forwarded-For`
    /// entry. Only behind a proxy that sets it; otherwise clients pick their IP.
    #[arg(long, env = "CHORUS_TRUST_FORWARDED_FOR", default_value_t = false)]
    pub trust_forwarded_for: bool,
    /// PEM certificate chain: serve https / wss with rustls (needs `--tls-key`).
    #[arg(long, env = "CHORUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "CHORUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Limits and timings.
    #[command(flatten)]
    pub limits: Limits,
    /// HTTP API, event streams and webhooks.
    #[command(flatten)]
    pub api: ApiConfig,
    /// Version history: automatic versions and retention.
    #[command(flatten)]
    pub history: HistoryConfig,
    /// TEST ONLY: makes a room panic, to prove that rooms are supervised
    /// (see `room::supervise`). `apply:N:ROOM` panics inside the yrs
    /// transaction of the Nth non-empty update applied to room `ROOM` (after
    /// yrs applied it, so the document is dirty); `handler:N:ROOM` panics in
    /// the room's handler right after that update was applied. Counted once
    /// per process: it fires once. Unset (the default), it does nothing.
    #[arg(long, env = "CHORUS_FAULT_PANIC", hide = true, value_parser = FaultPanic::parse)]
    pub fault_panic: Option<FaultPanic>,
}

/// Where `--fault-panic` (test only) makes a room panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAt {
    /// Inside the yrs transaction, after the update was applied.
    Apply,
    /// In the room's handler, after the update was applied.
    Handler,
}

/// A parsed `--fault-panic` (test only): panic at `at` on the `nth`
/// non-empty update applied to `room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPanic {
    /// Where.
    pub at: FaultAt,
    /// Which update (1 = the first).
    pub nth: u64,
    /// Which room.
    pub room: String,
}

impl FaultPanic {
    /// Parses `apply:N:ROOM` or `handler:N:ROOM` (the room id is the rest,
    /// colons included).
    pub fn parse(s: &str) -> Result<FaultPanic, String> {
        let mut parts = s.splitn(3, ':');
        let at = match parts.next() {
            Some("apply") => FaultAt::Apply,
            Some("handler") => FaultAt::Handler,
            _ => return Err("expected apply:N:ROOM or handler:N:ROOM".into()),
        };
        let nth = parts
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|n| *n > 0)
            .ok_or("N must be a number from 1")?;
        let room = parts
            .next()
            .filter(|r| !r.is_empty())
            .ok_or("ROOM is missing")?;
        Ok(FaultPanic {
            at,
            nth,
            room: room.to_owned(),
        })
    }
}

/// Options of the HTTP API under `/api/v1`, its event streams (SSE, long
/// poll, NDJSON) and outgoing webhooks.
#[derive(Debug, Clone, Args)]
pub struct ApiConfig {
    /// Server API key: `/api/v1` requests must carry
    /// `Authorization: Bearer <key>`. Unset: the API is open (logged at start).
    #[arg(long, env = "CHORUS_API_KEY")]
    pub api_key: Option<String>,
    /// Largest request body the API accepts, in bytes (larger: 413).
    #[arg(long, env = "CHORUS_API_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub api_max_body_bytes: usize,
    /// Longest a request body may take to arrive, in ms, counted from the
    /// end of its head (slower: 408 `body_timeout` and the connection is
    /// closed; 0: no limit). Without it a client sending a body a byte at a
    /// time held its connection and request for good.
    #[arg(long, env = "CHORUS_API_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub api_body_timeout_ms: u64,
    /// Requests per second to `/api/v1` from one client IP (token bucket,
    /// burst `api_requests_burst`); more: 429 `rate_limited` with
    /// `Retry-After`. The IP is the one WebSocket limits use
    /// (`--trust-forwarded-for`). 0: no limit.
    #[arg(long, env = "CHORUS_API_REQUESTS_PER_SEC", default_value_t = 100)]
    pub api_requests_per_sec: u32,
    /// Requests per second to `/api/v1` with one bearer credential (the API
    /// key or one token), from any IP; more: 429 as above. 0: no limit.
    #[arg(long, env = "CHORUS_API_KEY_REQUESTS_PER_SEC", default_value_t = 200)]
    pub api_key_requests_per_sec: u32,
    /// Burst of both API rate limits: requests a client that was quiet may
    /// send at once (at least the rate itself).
    #[arg(long, env = "CHORUS_API_REQUESTS_BURST", default_value_t = 200)]
    pub api_requests_burst: u32,
    /// Most rooms one `GET /api/v1/rooms` page lists (`limit` is capped at
    /// this; the default page size is the smaller of this and 100).
    #[arg(long, env = "CHORUS_API_MAX_PAGE", default_value_t = 1000)]
    pub api_max_page: usize,
    /// Events (updates, presence diffs, events) a room keeps for SSE resume
    /// and long polling.
    #[arg(long, env = "CHORUS_EVENT_WINDOW", default_value_t = 1024)]
    pub event_window: usize,
    /// Bytes of JSON a room's event window may hold (whichever of this and
    /// `event_window` comes first).
    #[arg(long, env = "CHORUS_EVENT_WINDOW_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub event_window_bytes: usize,
    /// Events queued for one SSE / NDJSON / poll subscriber; a subscriber
    /// further behind gets a `reset` event and its stream ends.
    #[arg(long, env = "CHORUS_SUBSCRIBER_BUFFER", default_value_t = 256)]
    pub subscriber_buffer: usize,
    /// How long a long poll is held when nothing happens, in ms (then 204).
    #[arg(long, env = "CHORUS_POLL_TIMEOUT_MS", default_value_t = 25_000)]
    pub poll_timeout_ms: u64,
    /// Interval of heartbeat comments on SSE streams (and empty lines on
    /// NDJSON streams), in ms.
    #[arg(long, env = "CHORUS_SSE_HEARTBEAT_MS", default_value_t = 15_000)]
    pub sse_heartbeat_ms: u64,
    /// Webhook receivers (`http://` or `https://` URLs; repeat the flag or
    /// separate by commas).
    #[arg(long, env = "CHORUS_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,
    /// PEM file of extra root certificates that `https://` webhook receivers
    /// may chain to (a private CA, or a self-signed receiver), trusted on top
    /// of the system's root store.
    #[arg(long, env = "CHORUS_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Secret of the `X-Chorus-Signature: sha256=<hex HMAC of the body>` header.
    #[arg(long, env = "CHORUS_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Webhook deliveries waiting to be sent; when full, new ones are
    /// dropped (and counted), never blocking a room.
    #[arg(long, env = "CHORUS_WEBHOOK_QUEUE", default_value_t = 1024)]
    pub webhook_queue: usize,
    /// Attempts per webhook delivery (first try included); the waits between
    /// them double from `webhook_backoff_ms`.
    #[arg(long, env = "CHORUS_WEBHOOK_ATTEMPTS", default_value_t = 5)]
    pub webhook_attempts: u32,
    /// First wait before retrying a failed webhook delivery, in ms.
    #[arg(long, env = "CHORUS_WEBHOOK_BACKOFF_MS", default_value_t = 500)]
    pub webhook_backoff_ms: u64,
    /// Timeout of one webhook request, in ms.
    #[arg(long, env = "CHORUS_WEBHOOK_TIMEOUT_MS", default_value_t = 5_000)]
    pub webhook_timeout_ms: u64,
    /// `document.stored` webhooks of a room are sent at most once per this
    /// many ms (debounce).
    #[arg(long, env = "CHORUS_WEBHOOK_DEBOUNCE_MS", default_value_t = 2_000)]
    pub webhook_debounce_ms: u64,
}

impl ApiConfig {
    /// The webhook receivers, parsed: absolute `http://` or `https://` URLs
    /// with a host. `Err` names the first bad one.
    pub fn webhook_targets(&self) -> Result<Vec<url::Url>, String> {
        self.webhook_url
            .iter()
            .map(|raw| {
                let url = url::Url::parse(raw).map_err(|e| format!("webhook URL {raw:?}: {e}"))?;
                if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
                    return Err(format!(
                        "webhook URL {raw:?}: only http:// and https:// URLs with a host are supported"
                    ));
                }
                Ok(url)
            })
            .collect()
    }

    /// The extra webhook roots of `--webhook-ca-file` (none when it is
    /// unset); `Err` when the file cannot be read or holds no certificate.
    pub fn webhook_roots(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        match &self.webhook_ca_file {
            Some(path) => crate::tls::pem_certs(path, "webhook CA file"),
            None => Ok(Vec::new()),
        }
    }
}

/// Version history (see `store::history` and the README's "History"):
/// when automatic versions are made, how many are kept, how they are stored.
#[derive(Debug, Clone, Args)]
pub struct HistoryConfig {
    /// An automatic version is made once a room's document has been quiet
    /// this long after edits, in ms. 0: no automatic versions.
    #[arg(long, env = "CHORUS_VERSION_IDLE_MS", default_value_t = 30_000)]
    pub version_idle_ms: u64,
    /// During continuous editing, an automatic version is made at least
    /// this often, in ms (counted from the first edit after a version).
    #[arg(long, env = "CHORUS_VERSION_EVERY_MS", default_value_t = 600_000)]
    pub version_every_ms: u64,
    /// Versions other than named ones kept per room (automatic and restore
    /// versions; the oldest go first). Named versions are kept until deleted.
    #[arg(long, env = "CHORUS_VERSION_KEEP", default_value_t = 200)]
    pub version_keep: usize,
    /// Versions other than named ones older than this are deleted, in ms.
    /// 0: no age limit. The default is 30 days.
    #[arg(
        long,
        env = "CHORUS_VERSION_MAX_AGE_MS",
        default_value_t = 2_592_000_000
    )]
    pub version_max_age_ms: u64,
    /// A version is stored as the whole document every this many versions
    /// (the ones between are deltas), or sooner when the deltas since the
    /// last whole document outweigh it: a rebuild reads at most this many
    /// updates.
    #[arg(long, env = "CHORUS_VERSION_SNAPSHOT_EVERY", default_value_t = 50)]
    pub version_snapshot_every: u64,
    /// Longest version name, in bytes (UTF-8).
    #[arg(long, env = "CHORUS_MAX_VERSION_NAME_BYTES", default_value_t = 200)]
    pub max_version_name_bytes: usize,
    /// Named versions one room may hold (they are never pruned): creating
    /// one more is refused (`bad_message`) until one is deleted.
    #[arg(long, env = "CHORUS_MAX_NAMED_VERSIONS", default_value_t = 1_000)]
    pub max_named_versions: usize,
    /// Versions one room rebuilds at a time for views and restores (each
    /// holds about two copies of the document); more requests wait.
    #[arg(long, env = "CHORUS_MAX_VERSION_REBUILDS", default_value_t = 2)]
    pub max_version_rebuilds: usize,
    /// History requests (`versions`, `version_*`) one native connection may
    /// have unanswered at once; more are refused with `rate_limited` (a
    /// view or restore rebuilds a whole document: this bounds what one
    /// client can make the server rebuild at a time).
    #[arg(
        long,
        env = "CHORUS_MAX_HISTORY_REQUESTS_IN_FLIGHT",
        default_value_t = 4
    )]
    pub max_history_requests_in_flight: usize,
}

/// Every limit and timing the server enforces. Each is a named flag and env
/// var; the defaults are listed in the README.
#[derive(Debug, Clone, Args)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes. Larger: close 1009.
    #[arg(long, env = "CHORUS_MAX_FRAME_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Open WebSocket connections from one IP address; more: HTTP 429. 0: no limit.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,
    /// New connections per second from one IP address (token bucket, burst
    /// of the same size); more: HTTP 429. 0: no limit.
    #[arg(long, env = "CHORUS_CONNECTIONS_PER_IP_PER_SEC", default_value_t = 30)]
    pub connections_per_ip_per_sec: u32,
    /// TLS handshakes in progress at once from one IP address (with
    /// `--tls-cert`); a connection beyond it is closed before its
    /// handshake. 0: no limit.
    #[arg(long, env = "CHORUS_MAX_TLS_HANDSHAKES_PER_IP", default_value_t = 64)]
    pub max_tls_handshakes_per_ip: usize,
    /// Longest a TLS handshake may take, in ms, before its connection is
    /// closed.
    #[arg(long, env = "CHORUS_TLS_HANDSHAKE_TIMEOUT_MS", default_value_t = 3000)]
    pub tls_handshake_timeout_ms: u64,
    /// Messages per second one session may send, every message of a frame
    /// counted (token bucket, burst of the same size). Over it the session
    /// stops reading its socket until the bucket refills (the client is
    /// slowed, not closed). 0: no limit.
    #[arg(long, env = "CHORUS_MAX_MESSAGES_PER_SEC", default_value_t = 500)]
    pub max_messages_per_sec: u32,
    /// Bytes per second one session may send (token bucket, burst of the
    /// larger of this and `max_frame_bytes`); over it the session is slowed
    /// like over `max_messages_per_sec`. 0: no limit.
    #[arg(long, env = "CHORUS_MAX_BYTES_PER_SEC", default_value_t = 8 * 1024 * 1024)]
    pub max_bytes_per_sec: u64,
    /// A session kept slowed by the rate limits without a break for this
    /// many ms is closed with 1013 (try again later: stock clients
    /// reconnect and resync, so no edit is lost).
    #[arg(long, env = "CHORUS_RATE_LIMIT_GRACE_MS", default_value_t = 30_000)]
    pub rate_limit_grace_ms: u64,
    /// Messages one `/yjs` frame may carry (stock clients send one or a
    /// few); more: close 4413, before any of them is acted on.
    #[arg(long, env = "CHORUS_MAX_MESSAGES_PER_FRAME", default_value_t = 1000)]
    pub max_messages_per_frame: usize,
    /// Messages one session may have queued on its rooms, not yet handled
    /// (the rest of a frame waits in the session); past it (or past
    /// `max_frame_bytes` of them) the session stops reading its socket
    /// until its rooms catch up. On `/hocuspocus` also: frames one socket may
    /// send for documents whose Auth has not come yet (past it: close 4413).
    #[arg(long, env = "CHORUS_MAX_QUEUED_MESSAGES", default_value_t = 64)]
    pub max_queued_messages: usize,
    /// Rooms one connection may have joined at once.
    #[arg(long, env = "CHORUS_MAX_ROOMS_PER_CONNECTION", default_value_t = 100)]
    pub max_rooms_per_connection: usize,
    /// Rooms live in memory at once. When full, the longest-idle rooms (no
    /// members, no followers) are evicted early (compacted into the store
    /// first); when none is idle, opening another room is refused
    /// (`room_unavailable`: REST 503, `/yjs` close 1013). 0: no limit.
    #[arg(long, env = "CHORUS_MAX_LIVE_ROOMS", default_value_t = 10_000)]
    pub max_live_rooms: usize,
    /// Largest document a room may hold, in bytes of encoded Yjs state
    /// (an upper bound tracked as snapshot + applied updates).
    #[arg(long, env = "CHORUS_MAX_DOC_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub max_doc_bytes: usize,
    /// Largest presence state of one member, in bytes of JSON.
    #[arg(long, env = "CHORUS_MAX_PRESENCE_BYTES", default_value_t = 8 * 1024)]
    pub max_presence_bytes: usize,
    /// Longest room id, in bytes.
    #[arg(long, env = "CHORUS_MAX_ROOM_ID_BYTES", default_value_t = 256)]
    pub max_room_id_bytes: usize,
    /// Largest event (name + payload) a client may broadcast, in bytes.
    #[arg(long, env = "CHORUS_MAX_EVENT_BYTES", default_value_t = 64 * 1024)]
    pub max_event_bytes: usize,
    /// Outbound bytes a session may have waiting before its document deltas
    /// are dropped (and later replaced by one resync from its state vector).
    #[arg(long, env = "CHORUS_OUTBOUND_BUFFER_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub outbound_buffer_bytes: usize,
    /// Outbound bytes waiting at which a session is disconnected (close 4008)
    /// because even its non-droppable messages pile up. Must leave room for
    /// one whole-document frame (`synced` or a resync) on top of the buffer.
    #[arg(long, env = "CHORUS_OUTBOUND_HARD_LIMIT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub outbound_hard_limit_bytes: usize,
    /// A `typing: on` not renewed within this many milliseconds turns off.
    #[arg(long, env = "CHORUS_TYPING_TTL_MS", default_value_t = 5_000)]
    pub typing_ttl_ms: u64,
    /// A presence state (awareness) not renewed within this many ms expires.
    #[arg(long, env = "CHORUS_PRESENCE_TTL_MS", default_value_t = 30_000)]
    pub presence_ttl_ms: u64,
    /// Awareness client ids one `/yjs` connection may announce (a stock
    /// client uses one; states for further ids are ignored).
    #[arg(long, env = "CHORUS_MAX_AWARENESS_CLIENTS", default_value_t = 8)]
    pub max_awareness_clients: usize,
    /// A room with no members is evicted from memory after this many ms.
    #[arg(long, env = "CHORUS_ROOM_IDLE_MS", default_value_t = 30_000)]
    pub room_idle_ms: u64,
    /// Window in which presence diffs and cursor moves are merged into one
    /// broadcast, in ms; also the longest a document update waits for the
    /// room's previous update broadcast to be written. The first message
    /// after a quiet window goes out at once.
    #[arg(long, env = "CHORUS_TICK_MS", default_value_t = 10)]
    pub tick_ms: u64,
    /// Most document-update frames a room sends per second, counted per
    /// recipient (0: no limit, every update goes out as soon as the last
    /// one is written). After a broadcast to N members a room holds its
    /// next one for N / this seconds and merges what arrives meanwhile:
    /// small rooms never wait, big busy rooms trade a few ms of latency
    /// for fewer, fuller frames (about half the server CPU per delivered
    /// update when it halves the frames).
    #[arg(long, env = "CHORUS_ROOM_MAX_SENDS_PER_SEC", default_value_t = 0)]
    pub room_max_sends_per_sec: u64,
    /// Longest a room's send budget (`room_max_sends_per_sec`) holds an
    /// update broadcast, in ms, however big the room: a very big room, or a
    /// budget set too low, costs this much latency at most, and what a room
    /// merges while it holds is what arrives in this time.
    #[arg(long, env = "CHORUS_ROOM_MAX_HOLD_MS", default_value_t = 1000)]
    pub room_max_hold_ms: u64,
    /// Presence (diffs, cursors, awareness) of a room is broadcast every
    /// tick × max(1, members / this): a big room's presence traffic grows as
    /// its members, not their square.
    #[arg(long, env = "CHORUS_PRESENCE_MEMBERS_PER_TICK", default_value_t = 1000)]
    pub presence_members_per_tick: usize,
    /// Longest member list sent in one presence message. A room with more
    /// members lists only its first this many (in join order) in snapshots
    /// and diffs, plus the total count; others' joins and leaves are not
    /// sent one by one, and clients page through the whole list with
    /// `presence_list` (at most this many per page).
    #[arg(long, env = "CHORUS_PRESENCE_LIST_MAX_MEMBERS", default_value_t = 500)]
    pub presence_list_max_members: usize,
    /// In a room above `presence_list_max_members`, a change of the member
    /// count alone is sent at most this often, in ms (changes of listed
    /// members and state changes go out at the presence interval and carry
    /// the count): while thousands join, every member gets a few small
    /// frames a second, not one per presence interval.
    #[arg(
        long,
        env = "CHORUS_PRESENCE_TOTAL_INTERVAL_MS",
        default_value_t = 1000
    )]
    pub presence_total_interval_ms: u64,
    /// Interval between server pings, in ms. At most half the client timeout.
    #[arg(long, env = "CHORUS_HEARTBEAT_MS", default_value_t = 5_000)]
    pub heartbeat_ms: u64,
    /// A connection silent for this long (no frame, no pong) is dropped, in ms.
    #[arg(long, env = "CHORUS_CLIENT_TIMEOUT_MS", default_value_t = 15_000)]
    pub client_timeout_ms: u64,
    /// Updates appended to a room's log before it is compacted to a snapshot.
    #[arg(long, env = "CHORUS_COMPACT_EVERY", default_value_t = 500)]
    pub compact_every: u64,
    /// Bytes of updates appended to a room's log before it is compacted to a
    /// snapshot (whichever of this and `compact_every` comes first).
    #[arg(long, env = "CHORUS_COMPACT_BYTES", default_value_t = 1024 * 1024)]
    pub compact_bytes: u64,
    /// How long shutdown waits for sessions to close and rooms to flush, in ms.
    #[arg(long, env = "CHORUS_SHUTDOWN_TIMEOUT_MS", default_value_t = 5_000)]
    pub shutdown_timeout_ms: u64,
    /// On SIGTERM, how long the node keeps serving its sessions while
    /// `/readyz` answers 503 (`"draining": true`) and new WebSocket upgrades
    /// get 503, so that load balancers stop sending it clients, in ms.
    #[arg(long, env = "CHORUS_DRAIN_DELAY_MS", default_value_t = 3_000)]
    pub drain_delay_ms: u64,
    /// After the drain delay, the window over which the node closes its
    /// sessions (1001, which clients retry), evenly spread so that the other
    /// nodes do not take every reconnection at once, in ms. 0: all at once.
    #[arg(long, env = "CHORUS_DRAIN_WINDOW_MS", default_value_t = 5_000)]
    pub drain_window_ms: u64,
    /// Cluster mode: a node holding more than this many percent above its
    /// fair share of the cluster's WebSocket sessions (total / live nodes)
    /// sheds the excess (close 1012, which clients retry).
    #[arg(long, env = "CHORUS_REBALANCE_TOLERANCE", default_value_t = 10)]
    pub rebalance_tolerance: u32,
    /// Cluster mode: most sessions per second a node sheds to rebalance,
    /// oldest first. 0 (the default): rebalancing off. Turn it on only
    /// behind a load balancer that spreads new connections over the nodes
    /// (round robin, least connections): a client that always reaches the
    /// same node would be shed again and again.
    #[arg(long, env = "CHORUS_REBALANCE_PER_SEC", default_value_t = 0)]
    pub rebalance_per_sec: u32,
}

impl Default for Config {
    fn default() -> Self {
        Cli::try_parse_from(["chorus"]).unwrap().into_config() // unwrap: an empty command line uses only the declared defaults
    }
}

impl Config {
    /// A config for tests and embedding: defaults, port 0, loopback, and
    /// the in-memory store (nothing is written to disk).
    pub fn ephemeral() -> Self {
        let mut config = Config {
            port: 0,
            store: Some(StoreKind::Memory),
            ..Config::default()
        };
        // No load balancer to wait for: stop at once.
        config.limits.drain_delay_ms = 0;
        config.limits.drain_window_ms = 0;
        config
    }

    /// The store in use: `--store`, else PostgreSQL when `--postgres-url` is
    /// given and redb otherwise.
    pub fn store_kind(&self) -> StoreKind {
        match (self.store, &self.postgres_url) {
            (Some(kind), _) => kind,
            (None, Some(_)) => StoreKind::Postgres,
            (None, None) => StoreKind::Redb,
        }
    }

    /// The backoff of failed store writes: `(first delay, longest delay)`.
    pub fn store_retry(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.store_retry_min_ms),
            Duration::from_millis(self.store_retry_max_ms),
        )
    }

    /// Checks relations between values that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.store_kind() == StoreKind::Postgres && self.postgres_url.is_none() {
            return Err("--store postgres needs --postgres-url".into());
        }
        if self.redis_url.is_some() && self.store_kind() != StoreKind::Postgres {
            return Err(
                "cluster mode (--redis-url) keeps documents in PostgreSQL, shared by the nodes \
                 (Redis only carries messages): add --postgres-url"
                    .into(),
            );
        }
        if self.postgres_pool_size < 2 {
            return Err("postgres pool size must be at least 2 (one writer, one reader)".into());
        }
        let l = &self.limits;
        if l.heartbeat_ms == 0 || l.heartbeat_ms * 2 > l.client_timeout_ms {
            return Err(format!(
                "heartbeat interval ({} ms) must be non-zero and at most half the client timeout ({} ms)",
                l.heartbeat_ms, l.client_timeout_ms
            ));
        }
        if l.outbound_hard_limit_bytes < l.outbound_buffer_bytes + l.max_doc_bytes {
            return Err(format!(
                "outbound hard limit ({}) must be at least outbound buffer + max doc bytes ({}): \
                 a whole-document frame must fit",
                l.outbound_hard_limit_bytes,
                l.outbound_buffer_bytes + l.max_doc_bytes
            ));
        }
        if l.max_frame_bytes < 1024 {
            return Err("max frame bytes must be at least 1024".into());
        }
        if self.store_max_batch == 0 {
            return Err("store max batch must be at least 1".into());
        }
        if self.store_retry_min_ms == 0 || self.store_retry_max_ms < self.store_retry_min_ms {
            return Err(format!(
                "store retry delays must be at least 1 ms, the longest ({}) at least the first ({})",
                self.store_retry_max_ms, self.store_retry_min_ms
            ));
        }
        let h = &self.history;
        if h.version_keep == 0
            || h.version_snapshot_every == 0
            || h.max_version_name_bytes == 0
            || h.max_named_versions == 0
            || h.max_version_rebuilds == 0
            || h.max_history_requests_in_flight == 0
        {
            return Err(
                "version keep, version snapshot every, max version name bytes, max named versions, max version rebuilds and max history requests in flight must be at least 1"
                    .into(),
            );
        }
        if h.version_idle_ms > 0 && h.version_every_ms == 0 {
            return Err("version every must be at least 1 ms when version idle is on".into());
        }
        if l.compact_every == 0 || l.compact_bytes == 0 {
            return Err("compact_every and compact_bytes must be at least 1".into());
        }
        if l.max_messages_per_frame == 0 || l.max_queued_messages == 0 {
            return Err("max messages per frame and max queued messages must be at least 1".into());
        }
        if l.tick_ms == 0 {
            return Err("tick must be at least 1 ms".into());
        }
        if l.presence_members_per_tick == 0 {
            return Err("presence members per tick must be at least 1".into());
        }
        if l.presence_list_max_members == 0 {
            return Err("presence list max members must be at least 1".into());
        }
        let a = &self.api;
        if a.event_window == 0 || a.subscriber_buffer == 0 || a.sse_heartbeat_ms == 0 {
            return Err(
                "event window, subscriber buffer and SSE heartbeat must be at least 1".into(),
            );
        }
        if a.api_max_page == 0 {
            return Err("api max page must be at least 1".into());
        }
        if a.webhook_queue == 0 || a.webhook_attempts == 0 {
            return Err("webhook queue and attempts must be at least 1".into());
        }
        a.webhook_targets()?;
        a.webhook_roots()?;
        Ok(())
    }

    /// Number of room threads to run.
    pub fn room_thread_count(&self) -> usize {
        if self.room_threads > 0 {
            self.room_threads
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

impl Limits {
    /// Typing expiry as a duration.
    pub fn typing_ttl(&self) -> Duration {
        Duration::from_millis(self.typing_ttl_ms)
    }
    /// Presence expiry as a duration.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms)
    }
    /// Idle eviction delay as a duration.
    pub fn room_idle(&self) -> Duration {
        Duration::from_millis(self.room_idle_ms)
    }
    /// TLS handshake timeout as a duration.
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.tls_handshake_timeout_ms)
    }
    /// Coalescing window as a duration.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
    /// How long a room that just sent an update to `recipients` members
    /// holds its next one (`room_max_sends_per_sec`, at most
    /// `room_max_hold_ms`; zero when unlimited).
    pub fn update_hold(&self, recipients: usize) -> Duration {
        match self.room_max_sends_per_sec {
            0 => Duration::ZERO,
            per_sec => Duration::from_secs_f64(recipients as f64 / per_sec as f64)
                .min(Duration::from_millis(self.room_max_hold_ms)),
        }
    }
    /// Least time between two count-only presence diffs of a big room.
    pub fn presence_total_interval(&self) -> Duration {
        Duration::from_millis(self.presence_total_interval_ms)
    }
    /// Heartbeat interval as a duration.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    /// Client timeout as a duration.
    pub fn client_timeout(&self) -> Duration {
        Duration::from_millis(self.client_timeout_ms)
    }
    /// Rate-limit grace as a duration.
    pub fn rate_limit_grace(&self) -> Duration {
        Duration::from_millis(self.rate_limit_grace_ms)
    }
    /// Shutdown grace as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
    /// Drain delay as a duration.
    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }
    /// Drain window as a duration.
    pub fn drain_window(&self) -> Duration {
        Duration::from_millis(self.drain_window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_http_or_https_with_a_host() {
        let mut api = Config::default().api;
        api.webhook_url = vec![
            "http://127.0.0.1:9000/hook".into(),
            "https://hooks.example/x".into(),
        ];
        let urls = api.webhook_targets().unwrap();
        assert_eq!(urls[0].port(), Some(9000));
        assert_eq!(urls[1].scheme(), "https");
        for bad in ["ftp://x/", "http://", "/relative", "not a url"] {
            api.webhook_url = vec![bad.into()];
            assert!(api.webhook_targets().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_send_budget_holds_a_room_n_over_budget_and_at_most_the_cap() {
        let mut limits = Config::default().limits;
        assert_eq!(limits.update_hold(1_000), Duration::ZERO, "no budget");
        limits.room_max_sends_per_sec = 40_000;
        assert_eq!(limits.update_hold(10), Duration::from_micros(250));
        assert_eq!(limits.update_hold(1_000), Duration::from_millis(25));
        // 100 000 members would be held 2.5 s: the cap, 1 s by default.
        assert_eq!(limits.update_hold(100_000), Duration::from_secs(1));
        limits.room_max_hold_ms = 5;
        assert_eq!(limits.update_hold(1_000), Duration::from_millis(5));
    }
}
