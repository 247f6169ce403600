//! The actix-web application: WebSocket routes, the REST API ([`api`]),
//! health, readiness and metrics, and the server's lifecycle (start,
//! graceful shutdown).

pub mod api;
pub mod demo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_http::ws::Codec;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;

use crate::config::{Config, StoreKind};
use crate::protocol::close;
use crate::room::Registry;
use crate::session::transport::{CountingBody, Outbox};
use crate::session::yjs::YjsSession;
use crate::session::{NativeSession, Sessions, Shared};
use crate::store::memory::MemoryStore;
use crate::store::redb::RedbStore;
use crate::store::{DocStore, StoreError};

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
        let store: Arc<dyn DocStore> = match config.store {
            StoreKind::Redb => Arc::new(RedbStore::open(&config)?),
            StoreKind::Memory => Arc::new(MemoryStore::new()),
        };
        if config.api.api_key.is_none() {
            tracing::warn!(
                "no --api-key (CHORUS_API_KEY) set: the HTTP API under /api/v1 is open to anyone who can reach this server"
            );
        }
        let node = format!("{:08x}", rand::random::<u32>());
        let shared = Shared {
            registry: Registry::new(config.clone(), store.clone()),
            sessions: Arc::new(Sessions::new(node)),
            config: config.clone(),
        };
        let data = web::Data::new(shared.clone());
        let mut server =
            HttpServer::new(move || App::new().app_data(data.clone()).configure(routes))
                .disable_signals()
                .shutdown_timeout(config.limits.shutdown_timeout().as_secs().max(1));
        if config.workers > 0 {
            server = server.workers(config.workers);
        }
        let bind = (config.bind, config.port);
        let server = server.bind(bind).map_err(|source| ServerError::Bind {
            addr: format!("{}:{}", config.bind, config.port),
            source,
        })?;
        let addr = server.addrs()[0];
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
        shutdown(&handle, &shared, &*store).await;
        running
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Graceful shutdown: stop accepting, tell every session "going away", let
/// rooms flush to the store, close the store, then stop the HTTP server.
async fn shutdown(handle: &actix_web::dev::ServerHandle, shared: &Shared, store: &dyn DocStore) {
    tracing::info!("shutting down: closing sessions, flushing rooms");
    handle.pause().await;
    shared
        .sessions
        .close_all(close::GOING_AWAY, "server shutting down");
    let deadline = tokio::time::Instant::now() + shared.config.limits.shutdown_timeout();
    while shared.sessions.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the close frames a moment to reach the sockets.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let flush = shared.registry.flush_all();
    if tokio::time::timeout_at(deadline, flush).await.is_err() {
        tracing::warn!("rooms did not finish flushing before the shutdown timeout");
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
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/", web::get().to(demo::index))
        .route("/assets/{path:.*}", web::get().to(demo::asset))
        .configure(api::configure);
}

/// `GET /ws`: upgrade to a native-protocol session.
async fn native_ws(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let limits = &shared.config.limits;
    let mut response = ws::handshake(&req)?;
    let outbox = Arc::new(Outbox::new(
        limits.outbound_buffer_bytes,
        limits.outbound_hard_limit_bytes,
    ));
    let session = NativeSession::new(shared.get_ref().clone(), outbox.clone());
    let codec = Codec::new().max_size(limits.max_frame_bytes);
    let body = ws::WebsocketContext::with_codec(session, payload, codec);
    Ok(response.streaming(CountingBody::new(body, outbox)))
}

/// `GET /yjs/{room}`: upgrade to a y-websocket session in `room` (the last
/// path segment, as `new WebsocketProvider(serverUrl, room, doc)` builds the
/// URL; query parameters are allowed). An invalid room name is refused after
/// the upgrade, with close code 4404, so the stock client stops retrying.
async fn yjs_ws(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let limits = &shared.config.limits;
    let room = req.match_info().get("room").unwrap_or_default().to_owned();
    let mut response = ws::handshake(&req)?;
    let outbox = Arc::new(Outbox::new(
        limits.outbound_buffer_bytes,
        limits.outbound_hard_limit_bytes,
    ));
    let session = YjsSession::new(shared.get_ref().clone(), outbox.clone(), room);
    let codec = Codec::new().max_size(limits.max_frame_bytes);
    let body = ws::WebsocketContext::with_codec(session, payload, codec);
    Ok(response.streaming(CountingBody::new(body, outbox)))
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// `GET /readyz`: 200 when the store answers (within 2 s), else 503. Redis
/// joins the check with cluster mode.
async fn readyz(shared: web::Data<Shared>) -> HttpResponse {
    let store = shared.registry.store();
    let check = tokio::time::timeout(Duration::from_secs(2), store.health()).await;
    let (status, store_state) = match check {
        Ok(Ok(())) => (actix_web::http::StatusCode::OK, "ok".to_owned()),
        Ok(Err(e)) => (
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
        Err(_) => (
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "timed out".to_owned(),
        ),
    };
    let ready = status.is_success();
    HttpResponse::build(status).json(serde_json::json!({
        "ready": ready,
        "store": { "kind": store.name(), "state": store_state },
    }))
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(shared: web::Data<Shared>) -> HttpResponse {
    let r = &shared.registry;
    let mut body = format!(
        "# HELP chorus_connections Open WebSocket sessions.\n\
         # TYPE chorus_connections gauge\n\
         chorus_connections {}\n\
         # HELP chorus_rooms_active Rooms loaded in memory.\n\
         # TYPE chorus_rooms_active gauge\n\
         chorus_rooms_active {}\n\
         # HELP chorus_rooms_started_total Rooms loaded since start.\n\
         # TYPE chorus_rooms_started_total counter\n\
         chorus_rooms_started_total {}\n\
         # HELP chorus_rooms_evicted_total Idle rooms evicted since start.\n\
         # TYPE chorus_rooms_evicted_total counter\n\
         chorus_rooms_evicted_total {}\n",
        shared.sessions.count(),
        r.live_rooms(),
        r.rooms_started(),
        r.rooms_evicted(),
    );
    r.metrics().render(&mut body);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}
