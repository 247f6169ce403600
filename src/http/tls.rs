//! The TLS listener: the handshake, then the same HTTP service as plain
//! connections.
//!
//! actix-http's own TLS service lets 256 handshakes run at once per worker
//! and stops accepting on that worker while they do, whoever opened them:
//! one address holding a few hundred silent TCP connections (each kept
//! for the 3 s handshake timeout, then reopened) kept every other client
//! from completing a handshake. Here handshakes are counted per client
//! address instead (`max_tls_handshakes_per_ip`; beyond it a new
//! connection from that address is closed at once) and each has its own
//! timeout (`tls_handshake_timeout_ms`), with no shared cap to exhaust.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_http::Protocol;
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use actix_tls::accept::rustls_0_23::{Acceptor, TlsStream};
use tokio::net::TcpStream;

use crate::limit::IpLimiter;
use crate::metrics::Metrics;

/// The stream an HTTP service behind [`listener`] serves.
pub type Stream = TlsStream<TcpStream>;

/// The listener's service: `handshakes` admits each connection's
/// handshake by client address (a refusal is counted and logged as
/// `tls_handshakes_per_ip`), `timeout` bounds it, then `http` serves the
/// connection (over HTTP/1.1, the only protocol offered by ALPN).
pub fn listener<F>(
    mut tls: rustls::ServerConfig,
    timeout: Duration,
    handshakes: Arc<IpLimiter>,
    metrics: Arc<Metrics>,
    http: F,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = (), InitError = ()>
where
    F: ServiceFactory<
            (Stream, Protocol, Option<SocketAddr>),
            Config = (),
            Response = (),
            InitError = (),
        > + 'static,
    F::Error: std::fmt::Display,
    F::Service: 'static,
{
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut acceptor = Acceptor::new(tls);
    acceptor.set_handshake_timeout(timeout);
    fn_factory(move || {
        let acceptor = ServiceFactory::<TcpStream>::new_service(&acceptor, ());
        let http = http.new_service(());
        let (handshakes, metrics) = (handshakes.clone(), metrics.clone());
        async move {
            let acceptor = Rc::new(acceptor.await?);
            let http = Rc::new(http.await?);
            Ok::<_, ()>(fn_service(move |io: TcpStream| {
                let (acceptor, http, handshakes, metrics) = (
                    acceptor.clone(),
                    http.clone(),
                    handshakes.clone(),
                    metrics.clone(),
                );
                async move {
                    let peer = io.peer_addr().ok();
                    let slot = match peer {
                        Some(peer) => match handshakes.admit(peer.ip()) {
                            Ok(slot) => Some(slot),
                            Err(_) => {
                                refused(&metrics, peer);
                                return Ok(());
                            }
                        },
                        None => None,
                    };
                    // Nagle's algorithm would hold small frames back (see
                    // the plain listener).
                    let _ = io.set_nodelay(true);
                    // The acceptor's own cap is not asked (its `poll_ready`):
                    // the per-address count and the timeout bound handshakes.
                    let stream = match acceptor.call(io).await {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::debug!(?peer, "TLS handshake failed: {e:?}");
                            return Ok(());
                        }
                    };
                    drop(slot);
                    std::future::poll_fn(|cx| http.poll_ready(cx))
                        .await
                        .map_err(|e| tracing::debug!("HTTP service not ready: {e}"))?;
                    http.call((stream, Protocol::Http1, peer))
                        .await
                        .map_err(|e| tracing::debug!(?peer, "connection ended: {e}"))
                }
            }))
        }
    })
}

/// Counts a connection closed before its handshake, and logs it as other
/// refusals are (at most a line a second, with the count not logged).
fn refused(metrics: &Metrics, peer: SocketAddr) {
    if let Some(suppressed) = metrics.refused("tls_handshakes_per_ip") {
        tracing::info!(
            reason = "tls_handshakes_per_ip",
            peer = %peer.ip(),
            suppressed,
            "connection refused: too many TLS handshakes in progress from this address"
        );
    }
}
