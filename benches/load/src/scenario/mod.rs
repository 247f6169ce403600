//! Scenarios: one module each, sharing [`Ctx`] and [`write_on_schedule`].

pub mod crowd;
pub mod fanout;
pub mod join_storm;
pub mod many;
pub mod presence;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Cli;
use crate::client::{Sink, Writer};
use crate::procstat::{proc_stat, ProcStat};
use crate::report::Report;
use crate::target::Target;

/// What every scenario runs with.
pub struct Ctx {
    /// The command line.
    pub cli: Cli,
    /// Where clients connect.
    pub target: Arc<Target>,
    /// The server process, if known.
    pub pid: Option<u32>,
}

impl Ctx {
    /// The server process now (zeroes without a pid).
    pub fn stat(&self) -> ProcStat {
        self.pid.map(proc_stat).unwrap_or_default()
    }
    /// An empty report of `scenario` with `params`.
    pub fn report(&self, scenario: &str, params: Value) -> Report {
        Report {
            scenario: scenario.into(),
            server: self.cli.label.clone(),
            proto: format!("{:?}", self.cli.proto).to_lowercase(),
            params,
            ..Report::default()
        }
    }
}

/// Writes one character to `room` as `writer` at every tick of `tick` before
/// `end`, counting sends in `sent_total`. `before_send` runs just before
/// each send (fanout records the send instant there); false stops writing.
/// Returns when writing stops; the caller decides how long to stay connected.
#[allow(clippy::too_many_arguments)]
pub async fn write_on_schedule(
    target: &Target,
    room: &str,
    writer: &Writer,
    sink: &mut Sink,
    mut tick: tokio::time::Interval,
    end: tokio::time::Instant,
    sent_total: &AtomicU64,
    mut before_send: impl FnMut() -> bool,
) {
    loop {
        let at = tick.tick().await;
        if at >= end || !before_send() {
            return;
        }
        let data = writer.write("x");
        if sink
            .send(Message::Binary(target.update_frame(room, data).into()))
            .await
            .is_err()
        {
            return;
        }
        sent_total.fetch_add(1, Ordering::Relaxed);
    }
}
