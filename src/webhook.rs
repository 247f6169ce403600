//! Outgoing webhooks: room occupied / vacated, member joined / left,
//! document stored (debounced by the room). Rooms hand a hook (a [`HookKind`] and its payload) to
//! [`Webhooks::emit`], which never blocks: it queues the delivery on a
//! bounded channel, or drops and counts it when the queue is full. One task
//! drains the queue and POSTs each body (JSON) to every `--webhook-url`,
//! signed with `X-Chorus-Signature: sha256=<hex HMAC-SHA256 of the body>`
//! when `--webhook-secret` is set, retrying with exponential backoff.
//!
//! Deliveries go through `reqwest` (HTTP/1.1; `https://` over rustls with
//! the ring provider). Receivers are trusted through the system's root
//! store plus the PEM roots of `--webhook-ca-file`. Redirects are not
//! followed (a 3xx counts as a refusal) and proxy variables are ignored.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;
use url::Url;

use crate::config::ApiConfig;
use crate::metrics::Metrics;

/// Header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Chorus-Signature";

/// What happened, as the `type` field of a webhook body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// The room got its first member.
    RoomOccupied,
    /// The room's last member left.
    RoomVacated,
    /// A member joined.
    MemberJoined,
    /// A member left.
    MemberLeft,
    /// Updates were stored durably (at most once per debounce interval).
    DocumentStored,
}

impl HookKind {
    /// The `type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::RoomOccupied => "room.occupied",
            HookKind::RoomVacated => "room.vacated",
            HookKind::MemberJoined => "member.joined",
            HookKind::MemberLeft => "member.left",
            HookKind::DocumentStored => "document.stored",
        }
    }
}

/// Handle that rooms use to emit webhooks; cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    /// `None` when no URL is configured: emitting is free.
    tx: Option<mpsc::Sender<Vec<u8>>>,
    metrics: Arc<Metrics>,
}

/// HMAC-SHA256 of `body` with `secret`, as lowercase hex.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // unwrap_or_else: HMAC accepts keys of any length, so new_from_slice cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Webhooks {
    /// Starts the delivery task (inside a tokio runtime) when URLs are
    /// configured; otherwise a handle that drops everything. A config that
    /// fails [`ApiConfig::webhook_targets`] or
    /// [`ApiConfig::webhook_roots`] (checked by `Config::validate`), or a
    /// client that cannot be built, is logged and gives that handle too.
    pub fn start(config: &ApiConfig, metrics: Arc<Metrics>) -> Webhooks {
        let off = |metrics| Webhooks { tx: None, metrics };
        let targets = match config.webhook_targets() {
            Ok(targets) if targets.is_empty() => return off(metrics),
            Ok(targets) => targets,
            Err(e) => {
                tracing::error!("webhooks off: {e}");
                return off(metrics);
            }
        };
        let client = match client(config) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!("webhooks off: {e}");
                return off(metrics);
            }
        };
        let (tx, rx) = mpsc::channel(config.webhook_queue);
        let worker = Worker {
            client,
            targets,
            secret: config.webhook_secret.clone().map(String::into_bytes),
            attempts: config.webhook_attempts,
            backoff: Duration::from_millis(config.webhook_backoff_ms),
            metrics: metrics.clone(),
        };
        tokio::spawn(worker.run(rx));
        Webhooks {
            tx: Some(tx),
            metrics,
        }
    }

    /// Queues a webhook for `room`; never blocks (a full queue drops it).
    pub fn emit(&self, kind: HookKind, room: &str, data: Value) {
        let Some(tx) = &self.tx else { return };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body = json!({ "type": kind.as_str(), "room": room, "ts": ts, "data": data });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        if tx.try_send(body).is_err() {
            self.metrics.webhooks_dropped.inc();
        }
    }
}

/// The HTTP client of the deliveries: rustls (ring provider) trusting the
/// system's roots and `--webhook-ca-file`, `webhook_timeout_ms` per request,
/// no redirects, no proxy.
fn client(config: &ApiConfig) -> Result<reqwest::Client, String> {
    let tls = crate::tls::client_config(config.webhook_roots()?, "webhook TLS")?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_millis(config.webhook_timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        // Header names go out as written (`X-Chorus-Signature`), as
        // receivers comparing them case-sensitively expect.
        .http1_title_case_headers()
        .user_agent(concat!("chorus/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("webhook HTTP client: {e}"))
}

struct Worker {
    client: reqwest::Client,
    targets: Vec<Url>,
    secret: Option<Vec<u8>>,
    attempts: u32,
    backoff: Duration,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Vec<u8>>) {
        while let Some(body) = rx.recv().await {
            let signature = self.secret.as_ref().map(|s| sign(s, &body));
            // Shared by the targets and the retries without copying.
            let body = bytes::Bytes::from(body);
            for target in &self.targets {
                self.deliver(target, &body, signature.as_deref()).await;
            }
        }
    }

    /// Posts `body` until a 2xx answer or the attempts run out.
    async fn deliver(&self, target: &Url, body: &bytes::Bytes, signature: Option<&str>) {
        let host = target.host_str().unwrap_or_default();
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            let mut request = self
                .client
                .post(target.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(sig) = signature {
                request = request.header(SIGNATURE_HEADER, format!("sha256={sig}"));
            }
            match request.send().await {
                Ok(res) if res.status().is_success() => {
                    self.metrics.webhooks_delivered.inc();
                    return;
                }
                Ok(res) => {
                    tracing::debug!(
                        host,
                        attempt,
                        status = res.status().as_u16(),
                        "webhook refused"
                    )
                }
                Err(e) if e.is_timeout() => tracing::debug!(host, attempt, "webhook timed out"),
                Err(e) => {
                    // reqwest's own message is generic; the cause (refused,
                    // certificate unknown, ...) is in its sources.
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        why = format!("{why}: {cause}");
                        source = cause.source();
                    }
                    tracing::debug!(host, attempt, "webhook failed: {why}")
                }
            }
            if attempt < self.attempts {
                self.metrics.webhooks_retried.inc();
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        tracing::warn!(
            host,
            "webhook delivery given up after {} attempts",
            self.attempts
        );
        self.metrics.webhooks_failed.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
