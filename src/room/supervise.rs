//! Supervision: a room actor that panics is dropped whole and replaced by a
//! fresh one loaded from the store on the next request.
//!
//! - Every room runs inside [`Supervised`], which polls the actor's future
//!   under `catch_unwind`. On a panic it terminates the context (so actix
//!   does not run the actor's remaining mailbox or `stopped` on a state the
//!   panic left half-changed) and drops the actor. The arbiter thread and
//!   every other room on it keep running.
//! - Dropping a room that did not stop normally runs [`Room::died`]: the
//!   error is logged with the room id and counted
//!   (`chorus_rooms_restarted_total`), every member is closed with 1013
//!   (transient: clients reconnect and resync from their state vector), and
//!   the registry forgets the room, so the next request starts a new one.
//! - Appends run as tasks of the room's [`TaskTracker`] (not of the actor),
//!   so the ones in flight when a room dies still land, and its successor
//!   loads only once they have: every update the dead room applied and
//!   began storing is in the successor's document.
//! - A panic inside a yrs transaction is not caught where it happens: the
//!   half-applied document goes with the room, and the successor holds only
//!   what the store holds (the update that panicked was never stored; its
//!   author resends it on resync).

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use actix::dev::ContextFut;
use actix::prelude::*;
use tokio_util::task::TaskTracker;

use super::{Room, RoomId};
use crate::config::{FaultAt, FaultPanic};
use crate::protocol::close;

/// What the registry tells a room it starts about its life.
pub struct Incarnation {
    /// Unique per registry: the registry forgets a dead room only if its
    /// entry is still this incarnation's.
    pub number: u64,
    /// Where the room's appends run (shared with the registry entry).
    pub writes: TaskTracker,
    /// The appends of the room's dead predecessor, if any: the room loads
    /// once they have finished.
    pub predecessor: Option<TaskTracker>,
}

/// A room's actor future, polled under `catch_unwind` (see the module doc).
pub(super) struct Supervised {
    /// The room, for the log.
    id: RoomId,
    fut: Option<ContextFut<Room, Context<Room>>>,
}

impl Supervised {
    /// Supervises room `id`, which `fut` runs.
    pub(super) fn new(id: RoomId, fut: ContextFut<Room, Context<Room>>) -> Self {
        Supervised { id, fut: Some(fut) }
    }
}

impl Future for Supervised {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(());
        };
        match catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *fut).poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                tracing::error!(room = %this.id, "room actor panicked: {}", panic_message(&*panic));
                // Stopped without `stopping`/`stopped` and without handling
                // what is still queued: dropping it now runs `Room::died`.
                fut.ctx().terminate();
                this.fut = None;
                Poll::Ready(())
            }
        }
    }
}

/// The text of a panic payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// `--fault-panic` (test only) and how many updates it has seen.
pub(super) struct FaultHook {
    spec: FaultPanic,
    seen: AtomicU64,
}

impl FaultHook {
    /// A hook for `spec`, if set.
    pub(super) fn new(spec: Option<&FaultPanic>) -> Option<FaultHook> {
        spec.map(|spec| FaultHook {
            spec: spec.clone(),
            seen: AtomicU64::new(0),
        })
    }

    /// Counts one non-empty update applied to `room`; where to panic if
    /// this is the one.
    pub(super) fn due(&self, room: &str) -> Option<FaultAt> {
        if room != self.spec.room {
            return None;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        (n == self.spec.nth).then_some(self.spec.at)
    }
}

impl Room {
    /// The room is dropped without having stopped normally (a panic):
    /// see the module doc. Runs inside `Drop`, so it must not panic.
    pub(super) fn died(&mut self) {
        tracing::error!(
            room = %self.id,
            members = self.members.len(),
            "room died; its members are told to reconnect and the next request restarts it from the store"
        );
        self.metrics.rooms_restarted.inc();
        // Forgotten first: a member that reconnects at once starts a new room.
        self.writes.close();
        self.registry.died(&self.id, self.incarnation, &self.writes);
        self.members
            .close_all(close::TRY_AGAIN_LATER, "room restarting");
        self.cluster_stop();
    }
}

/// Where the fault hook decided to panic, for tests (`id`: the room).
pub(super) fn fault_panic(id: &RoomId, at: FaultAt) -> ! {
    panic!("--fault-panic: test panic ({at:?}) in room {id}")
}
