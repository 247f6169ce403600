//! Outgoing webhooks: room occupied / vacated, member joined / left,
//! document stored (debounced by the room). Rooms hand a hook (a [`HookKind`] and its payload) to
//! [`Webhooks::emit`], which never blocks: it queues the delivery on a
//! bounded channel, or drops and counts it when the queue is full. One task
//! drains the queue and POSTs each body (JSON) to every `--webhook-url`,
//! signed with `X-Chorus-Signature: sha256=<hex HMAC-SHA256 of the body>`
//! when `--webhook-secret` is set, retrying with exponential backoff.
//!
//! The HTTP client is a minimal HTTP/1.1 one over a tokio `TcpStream`
//! (`http://` URLs only), to keep dependencies small.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

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

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    path: String,
}

/// Parses a webhook URL (only `http://`).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| "bad port")?),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    Ok(Target {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
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
    /// configured; otherwise a handle that drops everything.
    pub fn start(config: &ApiConfig, metrics: Arc<Metrics>) -> Webhooks {
        let targets: Vec<Target> = config
            .webhook_url
            .iter()
            .filter_map(|u| parse_url(u).ok())
            .collect();
        if targets.is_empty() {
            return Webhooks { tx: None, metrics };
        }
        let (tx, rx) = mpsc::channel(config.webhook_queue);
        let worker = Worker {
            targets,
            secret: config.webhook_secret.clone().map(String::into_bytes),
            attempts: config.webhook_attempts,
            backoff: Duration::from_millis(config.webhook_backoff_ms),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
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
            self.metrics
                .webhooks_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Worker {
    targets: Vec<Target>,
    secret: Option<Vec<u8>>,
    attempts: u32,
    backoff: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Vec<u8>>) {
        while let Some(body) = rx.recv().await {
            let signature = self.secret.as_ref().map(|s| sign(s, &body));
            for target in &self.targets {
                self.deliver(target, &body, signature.as_deref()).await;
            }
        }
    }

    /// Posts `body` until a 2xx answer or the attempts run out.
    async fn deliver(&self, target: &Target, body: &[u8], signature: Option<&str>) {
        let mut wait = self.backoff;
        for attempt in 1..=self.attempts {
            let res = tokio::time::timeout(self.timeout, post(target, body, signature)).await;
            match res {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    self.metrics
                        .webhooks_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(Ok(status)) => {
                    tracing::debug!(host = %target.host, attempt, status, "webhook refused")
                }
                Ok(Err(e)) => tracing::debug!(host = %target.host, attempt, "webhook failed: {e}"),
                Err(_) => tracing::debug!(host = %target.host, attempt, "webhook timed out"),
            }
            if attempt < self.attempts {
                self.metrics
                    .webhooks_retried
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        tracing::warn!(host = %target.host, "webhook delivery given up after {} attempts", self.attempts);
        self.metrics.webhooks_failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One HTTP/1.1 POST; returns the status code.
async fn post(target: &Target, body: &[u8], signature: Option<&str>) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: chorus/{}\r\n",
        target.path,
        target.host,
        target.port,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    if let Some(sig) = signature {
        head.push_str(&format!("{SIGNATURE_HEADER}: sha256={sig}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    // The status line is all we need; read until it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 8192 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))
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

    #[test]
    fn parses_http_urls_only() {
        let t = parse_url("http://127.0.0.1:9000/hook").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/hook")
        );
        assert!(parse_url("https://x/").is_err());
    }
}
