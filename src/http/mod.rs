//! The actix-web application: WebSocket routes, the REST API ([`api`]),
//! health, readiness and metrics, and the server's lifecycle (start,
//! graceful shutdown), with TLS when configured.
//!
//! Connection-level checks happen here, before the upgrade (`admit`): the
//! `Origin` header against `allowed_origins`, the per-IP open-connection
//! count and connection rate, and a token from the `token` query parameter
//! or `Authorization: Bearer`. On `/ws` a refusal is an HTTP status (403,
//! 429, 401) with a text body; on `/yjs` a token or `Origin` refusal is
//! delivered after the upgrade as a close code (4401 / 4403), since the
//! y-websocket client cannot read an HTTP status and would retry forever.

pub mod api;
pub mod demo;
mod shed;
mod stream;
mod tls;
mod upgrade;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::Codec;
use actix_web::{web, App, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::auth::{now_secs, Verifier};
use crate::cluster::Bridge;
use crate::config::{Config, StoreKind};
use crate::limit::IpLimiter;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxBody};
use crate::protocol::close;
use crate::room::{Registry, RoomServices};
use crate::session::flow::{FrameGuard, Gate, GatedPayload};
use crate::session::hocuspocus::HocuspocusSession;
use crate::session::watchdog::Abort;
use crate::session::yjs::YjsSession;
use crate::session::{Admission, NativeSession, Sessions, Shared};
use crate::store::memory::MemoryStore;
use crate::store::postgres::PostgresStore;
use crate::store::redb::RedbStore;
use crate::store::{DocStore, StoreError};
use crate::webhook::Webhooks;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server thread failed to start.
    #[error("server thread failed: {0}")]
    Thread(String),
    /// The document store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token key is unusable.
    #[error("authentication: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A started server, running on the current actix `System`.
pub struct Server {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    running: actix_web::dev::Server,
    shared: Shared,
    /// Closed last at shutdown, after rooms have flushed into it.
    store: Arc<dyn DocStore>,
}

impl Server {
    /// Binds and starts the server. Must be called inside an actix `System`.
    pub fn start(config: Config) -> Result<Server, ServerError> {
        config.validate().map_err(ServerError::Config)?;
        let config = Arc::new(config);
        let node = format!("{:08x}", rand::random::<u32>());
        let store: Arc<dyn DocStore> = match config.store_kind() {
            StoreKind::Redb => Arc::new(RedbStore::open(&config)?),
            StoreKind::Memory => Arc::new(MemoryStore::new()),
            StoreKind::Postgres => Arc::new(PostgresStore::open(&config)?),
        };
        let bridge = match &config.redis_url {
            Some(url) => {
                Some(Bridge::start(url, &node).map_err(|e| ServerError::Config(e.to_string()))?)
            }
            None => None,
        };
        let auth = match (&config.auth_secret, &config.auth_public_key) {
            (Some(secret), _) => Some(Arc::new(Verifier::from_secret(secret.as_bytes())?)),
            (None, Some(path)) => Some(Arc::new(Verifier::from_public_key_file(path)?)),
            (None, None) => None,
        };
        match (&config.api.api_key, &auth) {
            (None, None) => tracing::warn!(
                "no --api-key (CHORUS_API_KEY) set: the HTTP API under /api/v1 is open to anyone who can reach this server"
            ),
            (None, Some(_)) => tracing::info!(
                "no --api-key: /api/v1 room routes take tokens; server-wide routes (room list, delete, multi-room events) are refused"
            ),
            _ => {}
        }
        if auth.is_none() {
            tracing::warn!(
                "AUTHENTICATION IS OFF: no --auth-secret or --auth-public-key, so ANYONE who \
                 can reach this server may read and write EVERY room. Do not expose it."
            );
        } else if config.allow_anonymous_read {
            tracing::warn!(
                "--allow-anonymous-read: connections without a token may read every room"
            );
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
            _ => None,
        };
        tracing::info!(node = %node, cluster = bridge.is_some(), "node id");
        let metrics = Arc::new(Metrics::default());
        let services = RoomServices {
            config: config.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            hooks: Webhooks::start(&config.api, metrics.clone()),
            bridge: bridge.clone(),
        };
        let shared = Shared {
            registry: Registry::new(services),
            metrics,
            store: store.clone(),
            bridge,
            sessions: Arc::new(Sessions::new(node)),
            config: config.clone(),
            auth,
            ips: IpLimiter::new(
                config.limits.max_connections_per_ip,
                config.limits.connections_per_ip_per_sec,
            ),
            api_rates: Arc::new(crate::limit::ApiRates::new(&config.api)),
            draining: Arc::default(),
        };
        actix_web::rt::spawn(shed::rebalance(shared.clone()));
        let data = web::Data::new(shared.clone());
        let metrics = web::Data::new(metrics_registry(&shared));
        let app = move || {
            App::new()
                .app_data(data.clone())
                .app_data(metrics.clone())
                .configure(routes)
        };
        let bind = (config.bind, config.port);
        let listener = listen(bind).map_err(|source| ServerError::Bind {
            addr: format!("{}:{}", config.bind, config.port),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: format!("{}:{}", config.bind, config.port),
            source,
        })?;
        let mut server = actix_server::Server::build()
            .disable_signals()
            .shutdown_timeout(config.limits.shutdown_timeout().as_secs().max(1));
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        // One HTTP service per worker: the actix-web application `app` for
        // every request, and for upgrade requests the same application
        // behind `upgrade::serve`, which serves switched connections
        // without actix-http's per-connection buffers. Timeouts as
        // actix-web's `HttpServer` sets them; no Nagle delay. (Nothing in
        // Chorus reads the application's `AppConfig`, so its default host
        // and address stay.)
        macro_rules! http_service {
            () => {{
                let upgrades = app.clone();
                actix_http::HttpService::build()
                    .keep_alive(actix_http::KeepAlive::Timeout(Duration::from_secs(5)))
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .h1_allow_half_closed(true)
                    // Nagle's algorithm would hold a small frame back while
                    // an earlier one is unacknowledged (up to the client's
                    // delayed ACK, 40 ms): real-time traffic goes at once.
                    .tcp_nodelay(true)
                    .local_addr(addr)
                    .upgrade(actix_service::fn_factory(move || {
                        let app = upgrades();
                        async move {
                            let service = actix_service::ServiceFactory::new_service(
                                &actix_service::IntoServiceFactory::into_factory(app),
                                actix_web::dev::AppConfig::default(),
                            )
                            .await?;
                            let service = std::rc::Rc::new(service);
                            Ok::<_, ()>(actix_service::fn_service(move |(req, framed)| {
                                let served = upgrade::serve_quietly(service.clone(), req, framed);
                                async move { served.await.map_err(actix_web::Error::from) }
                            }))
                        }
                    }))
                    .finish(actix_service::map_config(app(), |_| {
                        actix_web::dev::AppConfig::default()
                    }))
            }};
        }
        let bound = match tls {
            Some(tls) => {
                let handshakes = IpLimiter::new(config.limits.max_tls_handshakes_per_ip, 0);
                let timeout = config.limits.tls_handshake_timeout();
                let metrics = shared.metrics.clone();
                server.listen("chorus-https", listener, move || {
                    tls::listener(
                        tls.clone(),
                        timeout,
                        handshakes.clone(),
                        metrics.clone(),
                        http_service!(),
                    )
                })
            }
            None => server.listen("chorus-http", listener, move || http_service!().tcp()),
        };
        let server = bound.map_err(|source| ServerError::Bind {
            addr: format!("{}:{}", config.bind, config.port),
            source,
        })?;
        let running = server.run();
        Ok(Server {
            addr,
            handle: running.handle(),
            running,
            shared,
            store,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs until `stop` resolves (then shuts down gracefully) or the
    /// server fails.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.run(stop, std::future::pending()).await
    }

    /// Runs until `stop` resolves, then drains and shuts down gracefully;
    /// `hurry` resolving during the drain (a second signal) skips the rest
    /// of the drain.
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()>,
        hurry: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Server {
            handle,
            running,
            shared,
            store,
            ..
        } = self;
        // The server future processes its own commands (pause, stop), so it
        // keeps running as a task while shutdown talks to it.
        let mut running = actix_web::rt::spawn(running);
        tokio::select! {
            res = &mut running => return res.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            () = stop => {}
        }
        tokio::select! {
            () = shed::drain(&shared) => {}
            () = hurry => tracing::warn!("second signal: skipping the rest of the drain"),
        }
        shutdown(&handle, &shared, &*store).await;
        running
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// A listening socket as actix-web binds one (address reuse, a backlog of
/// 1 024).
fn listen(bind: (std::net::IpAddr, u16)) -> std::io::Result<std::net::TcpListener> {
    let addr = SocketAddr::from(bind);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A rustls server config (ring provider) from PEM files.
fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServerError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(format!("private key {}: {e}", key.display())))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))
}

/// Graceful shutdown, after the drain ([`shed::drain`]): tell every session
/// still open "going away", let rooms flush to the store, close the store,
/// then stop the HTTP server. Until then the node keeps answering HTTP (new
/// upgrades get 503, as while draining), so a load balancer never waits on
/// a connection nobody accepts.
async fn shutdown(handle: &actix_web::dev::ServerHandle, shared: &Shared, store: &dyn DocStore) {
    tracing::info!("shutting down: closing sessions, flushing rooms");
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shared
        .sessions
        .close_all(close::GOING_AWAY, "server shutting down");
    let deadline = tokio::time::Instant::now() + shared.config.limits.shutdown_timeout();
    while shared.sessions.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the close frames a moment to reach the sockets.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Rooms give up a moment before the deadline, so that they log what
    // they could not store before the process goes.
    let rooms_until = deadline
        .checked_sub(Duration::from_millis(200))
        .unwrap_or(deadline)
        .into_std();
    let flush = shared.registry.flush_all(rooms_until);
    if tokio::time::timeout_at(deadline, flush).await.is_err() {
        tracing::warn!("rooms did not finish flushing before the shutdown timeout");
    }
    if let Some(bridge) = &shared.bridge {
        // The members' departures reach the other nodes now, not after
        // the liveness timeout.
        if tokio::time::timeout_at(deadline, bridge.drain())
            .await
            .is_err()
        {
            tracing::warn!("cluster items not all published before the shutdown timeout");
        }
    }
    if let Err(e) = store.close().await {
        tracing::error!("closing the {} store: {e}", store.name());
    }
    handle.stop(true).await;
    tracing::info!("shutdown complete");
}

/// A server running on a thread of its own (for tests and embedding in a
/// program that is not an actix `System`).
pub struct BackgroundServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// Starts a server with `config` on a new thread.
    pub fn spawn(config: Config) -> Result<BackgroundServer, ServerError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("chorus-server".into())
            .spawn(move || {
                let system = actix_web::rt::System::new();
                system.block_on(async move {
                    match Server::start(config) {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok(server.addr()));
                            let stop = async move {
                                let _ = stop_rx.await;
                            };
                            if let Err(e) = server.run_until(stop).await {
                                tracing::error!("server failed: {e}");
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| ServerError::Thread(e.to_string()))?;
        let addr = ready_rx
            .recv()
            .map_err(|_| ServerError::Thread("server thread exited during start".into()))??;
        Ok(BackgroundServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Shuts down gracefully and waits for the thread to end.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Registers every route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(native_ws))
        .route("/yjs/{room:[^/]*}", web::get().to(yjs_ws))
        .route("/hocuspocus", web::get().to(hocuspocus_ws))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/", web::get().to(demo::index))
        .route("/", web::head().to(demo::index))
        .route("/favicon.ico", web::get().to(demo::favicon))
        .route("/favicon.ico", web::head().to(demo::favicon))
        .route("/favicon.svg", web::get().to(demo::favicon))
        .route("/favicon.svg", web::head().to(demo::favicon))
        .route("/assets/{path:.*}", web::get().to(demo::asset))
        .route("/assets/{path:.*}", web::head().to(demo::asset))
        .configure(api::configure);
}

/// Which WebSocket route a connection is for: how refusals are delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `/ws`: refusals are HTTP statuses.
    Native,
    /// `/yjs`: token and `Origin` refusals are close codes after the upgrade.
    Yjs,
}

/// Counts a connection (or REST request) refused before its session (or
/// route) started, and logs it: at most one line per reason a second, which
/// says how many were not logged since (`suppressed`).
pub(crate) fn note_refusal(shared: &Shared, req: &HttpRequest, reason: &'static str, text: &str) {
    if let Some(suppressed) = shared.metrics.refused(reason) {
        tracing::info!(
            reason,
            path = req.path(),
            peer = ?req.peer_addr().map(|a| a.ip()),
            client = ?client_ip(req, shared.config.trust_forwarded_for),
            suppressed,
            "connection refused: {text}"
        );
    }
}

/// A plain-text refusal before the upgrade.
fn refuse(status: actix_web::http::StatusCode, text: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(text.into() + "\n")
}

/// Segment `n` of the request path as sent (still percent-encoded; segment
/// 0 is the empty string before the first `/`). actix's router decodes some
/// escapes in what it matches but keeps `%2F`, so routes find the segment
/// by position and decode it themselves ([`crate::protocol::decode_room_segment`]).
pub(crate) fn raw_path_segment(req: &HttpRequest, n: usize) -> &str {
    req.uri().path().split('/').nth(n).unwrap_or_default()
}

/// The client's IP: the socket peer, or the last `X-Forwarded-For` entry
/// with `--trust-forwarded-for`. Per-IP limits of WebSocket admission and of
/// the REST API both use it.
pub(crate) fn client_ip(req: &HttpRequest, trust_forwarded: bool) -> Option<IpAddr> {
    if trust_forwarded {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    req.peer_addr().map(|a| a.ip())
}

/// The token of a request: the `token` query parameter, else
/// `Authorization: Bearer <token>`.
pub(crate) fn request_token(req: &HttpRequest) -> Option<String> {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok();
    if let Some(token) = query.and_then(|q| q.into_inner().remove("token")) {
        return Some(token);
    }
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
}

/// Connection-level checks, before the upgrade: `Origin`, per-IP limits,
/// token. `Err` is the HTTP answer instead of the upgrade.
#[allow(clippy::result_large_err)] // built once per connection attempt
fn admit(req: &HttpRequest, shared: &Shared, route: Route) -> Result<Admission, HttpResponse> {
    use actix_web::http::StatusCode;
    let config = &shared.config;
    let mut admission = Admission::default();
    if shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        // Before any other check: a load balancer passes the upgrade to
        // another node (nginx: `proxy_next_upstream http_503`), and a
        // client retries it.
        let text = "this node is shutting down: connect to another";
        note_refusal(shared, req, "draining", text);
        let mut res = refuse(StatusCode::SERVICE_UNAVAILABLE, text);
        res.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("1"),
        );
        return Err(res);
    }
    if !config.allowed_origins.is_empty() {
        if let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) {
            let ok = origin
                .to_str()
                .is_ok_and(|o| config.allowed_origins.iter().any(|a| a == o));
            if !ok {
                let text = "this Origin is not allowed (allowed_origins)";
                note_refusal(shared, req, "origin", text);
                if route == Route::Native {
                    return Err(refuse(StatusCode::FORBIDDEN, text));
                }
                admission.refusal = Some((close::YJS_FORBIDDEN, text.into()));
                return Ok(admission);
            }
        }
    }
    if let Some(ip) = client_ip(req, config.trust_forwarded_for) {
        match shared.ips.admit(ip) {
            Ok(slot) => admission.slot = Some(slot),
            Err(e) => {
                let text = e.to_string();
                let reason = match e {
                    crate::limit::IpRefusal::TooManyConnections => "connections_per_ip",
                    crate::limit::IpRefusal::TooFast => "connection_rate_per_ip",
                };
                note_refusal(shared, req, reason, &text);
                return Err(refuse(StatusCode::TOO_MANY_REQUESTS, text));
            }
        }
    }
    match (&shared.auth, request_token(req)) {
        (Some(verifier), Some(token)) => match verifier.verify(&token, now_secs()) {
            Ok(grants) => admission.grants = Some(grants),
            Err(e) => {
                let text = e.to_string();
                note_refusal(shared, req, "bad_token", &text);
                if route == Route::Native {
                    return Err(refuse(StatusCode::UNAUTHORIZED, text));
                }
                admission.refusal = Some((close::UNAUTHORIZED, text));
            }
        },
        // The native session may still authenticate with `hello.token`.
        (Some(_), None) if route == Route::Native => {}
        _ => admission.grants = shared.anonymous_grants(),
    }
    Ok(admission)
}

/// `GET /ws`: upgrade to a native-protocol session.
async fn native_ws(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let mut response = ws::handshake(&req)?;
    let admission = match admit(&req, &shared, Route::Native) {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    Ok(Connection::start(
        &mut response,
        payload,
        &shared,
        admission,
        NativeSession::new,
    ))
}

/// `GET /yjs/{room}`: upgrade to a y-websocket session in `room` (the last
/// path segment, as `new WebsocketProvider(serverUrl, room, doc)` builds the
/// URL; query parameters are allowed; percent-decoded, `%2F` included). An
/// invalid room name is refused after the upgrade, with close code 4404, so
/// the stock client stops retrying.
async fn yjs_ws(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let mut response = ws::handshake(&req)?;
    let mut admission = match admit(&req, &shared, Route::Yjs) {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    // The raw segment, decoded like every route's (`%2F` included).
    let room = match crate::protocol::decode_room_segment(raw_path_segment(&req, 2)) {
        Ok(room) => room,
        Err(e) => {
            if admission.refusal.is_none() {
                admission.refusal = Some((close::YJS_BAD_ROOM, e.into()));
            }
            String::new()
        }
    };
    Ok(Connection::start(
        &mut response,
        payload,
        &shared,
        admission,
        |shared, outbox, admission, gate| YjsSession::new(shared, outbox, room, admission, gate),
    ))
}

/// `GET /hocuspocus`: upgrade to a Hocuspocus session (many documents on
/// one socket, each authorized by its own Auth frame; a `?token=` or
/// `Authorization` token is the default for documents sent without one).
/// Refusals of the connection itself are close codes after the upgrade.
async fn hocuspocus_ws(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let mut response = ws::handshake(&req)?;
    let admission = match admit(&req, &shared, Route::Yjs) {
        Ok(a) => a,
        Err(refused) => return Ok(refused),
    };
    Ok(Connection::start(
        &mut response,
        payload,
        &shared,
        admission,
        HocuspocusSession::new,
    ))
}

/// What every upgraded connection has besides its session: the outbox its
/// rooms write to, and the gate on its socket reads.
struct Connection {
    outbox: Arc<Outbox>,
    gate: Arc<Gate>,
}

impl Connection {
    /// The upgrade response of an admitted connection: its outbox and gate,
    /// the socket watched, and the session `make` builds from them.
    fn start<A>(
        response: &mut actix_web::HttpResponseBuilder,
        payload: web::Payload,
        shared: &web::Data<Shared>,
        admission: Admission,
        make: impl FnOnce(Arc<Shared>, Arc<Outbox>, Admission, Arc<Gate>) -> A,
    ) -> HttpResponse
    where
        A: actix::Actor<Context = ws::WebsocketContext<A>>
            + actix::StreamHandler<Result<ws::Message, ws::ProtocolError>>,
    {
        let limits = &shared.config.limits;
        let conn = Connection::new(limits);
        let abort = Arc::new(Abort::default());
        let admission = admission.with_abort(abort.clone());
        let session = make(
            shared.clone().into_inner(),
            conn.outbox.clone(),
            admission,
            conn.gate.clone(),
        );
        let mut response = conn.serve(response, session, payload, limits);
        // For the connection's pump (`upgrade::serve`), which resets the
        // socket when the watchdog fires it.
        response.extensions_mut().insert(abort);
        response
    }

    fn new(limits: &crate::config::Limits) -> Connection {
        Connection {
            outbox: Arc::new(Outbox::new(
                limits.outbound_buffer_bytes,
                limits.outbound_hard_limit_bytes,
            )),
            gate: Gate::new(limits.max_queued_messages, limits.max_frame_bytes),
        }
    }

    /// The upgrade response: `session` reads the gated payload and writes
    /// through the outbox, which the response body drains.
    fn serve<A>(
        self,
        response: &mut actix_web::HttpResponseBuilder,
        session: A,
        payload: web::Payload,
        limits: &crate::config::Limits,
    ) -> HttpResponse
    where
        A: actix::Actor<Context = ws::WebsocketContext<A>>
            + actix::StreamHandler<Result<ws::Message, ws::ProtocolError>>,
    {
        let codec = Codec::new().max_size(limits.max_frame_bytes);
        // A frame announcing more than the limit is refused at its header,
        // before its bytes are buffered (see `FrameGuard`).
        let payload = FrameGuard::new(payload, limits.max_frame_bytes);
        let payload = GatedPayload::new(payload, self.gate);
        let body = ws::WebsocketContext::with_codec(session, payload, codec);
        response.streaming(OutboxBody::new(body, self.outbox))
    }
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Why the store is failing, as far as this node knows without asking it:
/// the store says so (the embedded file after an I/O error), or rooms keep
/// updates they could not store.
fn store_failing(shared: &Shared) -> Option<String> {
    if let Some(why) = shared.store.failing() {
        return Some(why);
    }
    let kept = shared.metrics.store_unstored_updates.get();
    (kept > 0).then(|| {
        format!(
            "{kept} updates ({} bytes) applied but not stored yet; retried",
            shared.metrics.store_unstored_bytes.get()
        )
    })
}

/// The store as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreState {
    /// It writes.
    Ok,
    /// A store every node shares cannot write: every node has the same
    /// problem, so this one stays in the pool (200).
    Degraded,
    /// This node's own store cannot write: this node cannot serve (503).
    Failing,
}

impl StoreState {
    fn as_str(self) -> &'static str {
        match self {
            StoreState::Ok => "ok",
            StoreState::Degraded => "degraded",
            StoreState::Failing => "failing",
        }
    }
}

/// The readiness rule: a failing store takes this node out of the pool
/// only when it is this node's alone.
fn store_state(shared: bool, failing: bool) -> StoreState {
    match (failing, shared) {
        (false, _) => StoreState::Ok,
        (true, true) => StoreState::Degraded,
        (true, false) => StoreState::Failing,
    }
}

/// `GET /readyz`: can this node serve? 503 only for what is this node's
/// alone: its own store (the embedded file) cannot write — appends fail,
/// or the health check fails or takes over 2 s. An outage of what every
/// node shares (a shared store, Redis) answers 200 with `"degraded": true`
/// (a health check must not empty the whole pool at once).
async fn readyz(shared: web::Data<Shared>) -> HttpResponse {
    let store = &shared.store;
    let check = tokio::time::timeout(Duration::from_secs(2), store.health()).await;
    let problem = match check {
        Ok(Ok(())) => store_failing(&shared),
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("health check timed out".to_owned()),
    };
    let state = store_state(store.shared(), problem.is_some());
    let mut degraded = state == StoreState::Degraded;
    let mut store_body = serde_json::json!({
        "kind": store.name(),
        "shared": store.shared(),
        "state": state.as_str(),
    });
    if let Some(e) = problem {
        store_body["error"] = e.into();
    }
    let status = if state == StoreState::Failing {
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        actix_web::http::StatusCode::OK
    };
    // Draining (shutdown begun): unready, whatever the store says.
    let draining = shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    let status = if draining {
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE
    } else {
        status
    };
    let mut body = serde_json::json!({
        "ready": status.is_success(),
        "draining": draining,
        "store": store_body,
    });
    if let Some(bridge) = &shared.bridge {
        // Degraded, not unready: local clients are still served.
        let up = bridge
            .stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed);
        degraded |= !up;
        body["cluster"] = serde_json::json!({
            "node": bridge.node(),
            "redis": if up { "ok" } else { "degraded" },
        });
    }
    body["degraded"] = degraded.into();
    HttpResponse::build(status).json(body)
}

/// `GET /metrics`: the metrics registry in OpenMetrics text.
async fn metrics(registry: web::Data<MetricsRegistry>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(crate::metrics::encode(&registry.0))
}

/// The one metrics registry of the server, read by `GET /metrics`.
struct MetricsRegistry(prometheus_client::registry::Registry);

/// Builds the registry: the server's own [`crate::metrics::Metrics`], the
/// values that the session table, IP limiter and room registry own, and
/// the cluster bridge's counters.
fn metrics_registry(shared: &Shared) -> MetricsRegistry {
    let mut registry = prometheus_client::registry::Registry::default();
    let read = |f: fn(&Shared) -> u64| {
        let shared = shared.clone();
        move || f(&shared)
    };
    let sampled = crate::metrics::Sampled::default()
        .gauge(
            "chorus_connections",
            "Open WebSocket sessions.",
            read(|s| s.sessions.count() as u64),
        )
        .gauge(
            "chorus_connections_admitted",
            "Connections holding a per-IP slot (sessions and upgrades under way).",
            read(|s| s.ips.open_total() as u64),
        )
        .gauge(
            "chorus_rooms_active",
            "Rooms loaded in memory.",
            read(|s| s.registry.live_rooms() as u64),
        )
        .counter(
            "chorus_rooms_started",
            "Rooms loaded since start.",
            read(|s| s.registry.rooms_started()),
        )
        .counter(
            "chorus_rooms_evicted",
            "Idle rooms evicted since start.",
            read(|s| s.registry.rooms_evicted()),
        )
        .gauge(
            "chorus_rooms_active_max",
            "Most rooms in memory at once since start (at most --max-live-rooms).",
            read(|s| s.registry.live_rooms_max()),
        )
        .counter(
            "chorus_rooms_evicted_early",
            "Idle rooms evicted before --room-idle-ms because --max-live-rooms was reached.",
            read(|s| s.registry.rooms_evicted_for_room()),
        )
        .counter(
            "chorus_rooms_refused",
            "Room openings refused because --max-live-rooms busy rooms were live.",
            read(|s| s.registry.rooms_refused_full()),
        )
        .gauge(
            "chorus_draining",
            "1 once shutdown has begun: /readyz answers 503 and sessions are being closed.",
            read(|s| u64::from(s.draining.load(std::sync::atomic::Ordering::Relaxed))),
        )
        .gauge(
            "chorus_store_failing",
            "1 while the store fails to write (appends fail, kept updates wait to be stored, or the store says so), else 0.",
            read(|s| u64::from(store_failing(s).is_some())),
        )
        .gauge(
            "chorus_api_tracked_ips",
            "Client IPs the REST rate limiter holds a bucket for.",
            read(|s| s.api_rates.tracked_ips() as u64),
        );
    registry.register_collector(Box::new(sampled));
    shared.metrics.register(&mut registry);
    if let Some(bridge) = &shared.bridge {
        bridge.register(&mut registry);
    }
    MetricsRegistry(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_fails_only_for_a_store_of_this_node_alone() {
        assert_eq!(store_state(false, false), StoreState::Ok);
        assert_eq!(store_state(true, false), StoreState::Ok);
        // The embedded file cannot write: this node cannot serve.
        assert_eq!(store_state(false, true), StoreState::Failing);
        // Redis or PostgreSQL down: every node's problem, stay in the pool.
        assert_eq!(store_state(true, true), StoreState::Degraded);
    }
}
