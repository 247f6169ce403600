//! Stuck connections are closed even when their session cannot run.
//!
//! A session actor runs inside its response body's poll
//! ([`crate::outbox::OutboxBody`]), and the connection polls the body only
//! as the socket drains: a client that stopped reading (its socket full)
//! stops its session, heartbeat included, for as long as it likes. So the
//! heartbeat cannot close it. A [`Liveness`] records when the session last
//! ran and found its client alive ([`Liveness::beat`]); a task outside the
//! body (one per thread, [`watch`]) checks it every heartbeat, and past
//! `client_timeout + heartbeat` without a beat it fires the connection's
//! [`Abort`]: the connection's pump resets the socket and drops the body,
//! which stops the session the ordinary way: it leaves its rooms (others
//! see it go), gives its per-IP slot back, and counts as closed.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::Context;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// A connection's kill switch, shared by its session's [`Liveness`] and the
/// task that owns its socket (`crate::http`'s pump, which is not stuck when
/// the session is: it waits for the socket, and wakes for this too). No
/// second descriptor of the socket is kept for it.
#[derive(Debug, Default)]
pub struct Abort {
    fired: AtomicBool,
    waker: AtomicWaker,
}

impl Abort {
    /// Asks the socket's owner to reset the connection now.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// True once fired; otherwise the task polling with `cx` is woken
    /// when it is.
    pub fn poll_fired(&self, cx: &Context<'_>) -> bool {
        if self.fired.load(Ordering::Acquire) {
            return true;
        }
        self.waker.register(cx.waker());
        self.fired.load(Ordering::Acquire)
    }
}

/// When a session last showed it is alive, and the connection to reset
/// when it is not.
#[derive(Debug)]
pub struct Liveness {
    /// Reference point of `beat_ms`.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last beat.
    beat_ms: AtomicU64,
    /// Silence allowed before the connection is reset, in milliseconds (set
    /// by [`watch`]).
    limit_ms: AtomicU64,
    /// The connection's kill switch. `None` when the connection has none
    /// (then only the session's own heartbeat closes it).
    abort: Option<Arc<Abort>>,
}

impl Liveness {
    /// A liveness beaten now, that fires `abort` when stale.
    pub fn new(abort: Option<Arc<Abort>>) -> Arc<Liveness> {
        Arc::new(Liveness {
            epoch: Instant::now(),
            beat_ms: AtomicU64::new(0),
            limit_ms: AtomicU64::new(u64::MAX),
            abort,
        })
    }

    /// The session ran and its client is alive (or paused on purpose).
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.beat_ms.store(ms, Ordering::Release);
    }

    /// Time since the last beat.
    pub fn silent_for(&self) -> Duration {
        let beat = Duration::from_millis(self.beat_ms.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(beat)
    }

    /// Resets the connection: the socket's owner discards what waits in
    /// the kernel (linger 0) and drops the connection, which drops the
    /// session's body and so stops it.
    fn shut(&self) -> bool {
        let Some(abort) = &self.abort else {
            return false;
        };
        abort.fire();
        true
    }
}

/// Watches `liveness` every `every` until its session is gone (the last
/// strong reference dropped with the connection); shuts its socket once it
/// has been silent for more than `limit`.
///
/// One sweeper task per thread watches every session of that thread (a
/// weak reference each, 8 bytes), instead of a task and a timer per
/// connection.
pub fn watch(liveness: &Arc<Liveness>, every: Duration, limit: Duration) {
    liveness
        .limit_ms
        .store(limit.as_millis() as u64, Ordering::Release);
    WATCHED.with(|watched| {
        let start = watched.entries.borrow().is_empty();
        watched.entries.borrow_mut().push(Arc::downgrade(liveness));
        if watched.every.get().is_none_or(|e| every < e) {
            watched.every.set(Some(every));
        }
        if start {
            actix_web::rt::spawn(sweep());
        }
    });
}

/// The sessions of one thread under watch, and how often they are checked.
struct Watched {
    entries: RefCell<Vec<Weak<Liveness>>>,
    every: Cell<Option<Duration>>,
}

thread_local! {
    static WATCHED: Watched = const {
        Watched { entries: RefCell::new(Vec::new()), every: Cell::new(None) }
    };
}

/// Checks this thread's watched sessions every period until none is left
/// (a later [`watch`] starts it again): forgets the gone ones and shuts
/// the sockets of the stuck ones.
async fn sweep() {
    loop {
        let every = WATCHED
            .with(|w| w.every.get())
            .unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(every).await;
        let left = WATCHED.with(|watched| {
            let mut entries = watched.entries.borrow_mut();
            entries.retain(|weak| {
                let Some(liveness) = weak.upgrade() else {
                    return false;
                };
                let silent = liveness.silent_for();
                let limit = Duration::from_millis(liveness.limit_ms.load(Ordering::Acquire));
                if silent <= limit {
                    return true;
                }
                let shut = liveness.shut();
                tracing::info!(
                    silent_ms = silent.as_millis() as u64,
                    shut,
                    "connection stuck (its session could not run): socket shut down"
                );
                false
            });
            if entries.capacity() > 2 * entries.len() + 16 {
                entries.shrink_to_fit();
            }
            entries.len()
        });
        if left == 0 {
            WATCHED.with(|w| w.every.set(None));
            return;
        }
    }
}
