//! `fanout`: one room, many subscribers, a few writers at a fixed rate;
//! delivery latency and server CPU per delivered update.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::json;
use yrs::updates::decoder::Decode;
use yrs::{StateVector, Update};

use super::{write_on_schedule, Ctx};
use crate::client::{
    drain, join, open_many, receive, writer_clocks, SendTable, Writer, WRITER_BASE,
};
use crate::protocol::Synced;
use crate::report::{finish, latency, Report};
use crate::target::Target;

/// The fanout writers, on their own runtime: each joins `room`, reports
/// through `joined`, then writes one character per period from `t0`
/// (spread over one period) until `end`, and stays connected until `until`.
#[allow(clippy::too_many_arguments)]
async fn run_writers(
    target: Arc<Target>,
    table: Arc<SendTable>,
    room: String,
    sent_total: Arc<AtomicU64>,
    writers: usize,
    rate: f64,
    joined: tokio::sync::oneshot::Sender<Result<()>>,
    start: tokio::sync::oneshot::Receiver<(
        tokio::time::Instant,
        tokio::time::Instant,
        tokio::time::Instant,
    )>,
) {
    let mut conns = Vec::new();
    for w in 0..writers {
        match join(&target, &room, None, true).await {
            Ok((sink, source, _)) => conns.push((w, sink, source)),
            Err(e) => {
                let _ = joined.send(Err(e));
                return;
            }
        }
    }
    let _ = joined.send(Ok(()));
    let Ok((t0, end, until)) = start.await else {
        return;
    };
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut drains = Vec::new();
    let mut tasks = Vec::new();
    for (w, mut sink, source) in conns {
        let (target, table, room, sent_total) = (
            target.clone(),
            table.clone(),
            room.clone(),
            sent_total.clone(),
        );
        // Spread the writers over one period.
        let offset = period.mul_f64(w as f64 / writers.max(1) as f64);
        drains.push(tokio::spawn(drain(source, until)));
        tasks.push(tokio::spawn(async move {
            let writer = Writer::new(WRITER_BASE + w as u64);
            let mut tick = tokio::time::interval_at(t0 + offset, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut clock = 0usize;
            let record = || {
                // The n-th update is clock n: its send instant, for latency.
                if clock + 1 >= table.sent[w].len() {
                    return false;
                }
                table.sent[w][clock].store(table.now_us(), Ordering::Relaxed);
                clock += 1;
                true
            };
            write_on_schedule(
                &target,
                &room,
                &writer,
                &mut sink,
                tick,
                end,
                &sent_total,
                record,
            )
            .await;
            // Keep the writer connected until the receivers are done.
            tokio::time::sleep_until(until).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    for t in drains {
        let _ = t.await;
    }
}

/// One room, `--subscribers` receivers timing every update of `--writers`
/// writers at `--rate` updates/s each; 1 s warm-up, then `--secs` measured.
pub async fn run(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    let room = "fanout".to_string();
    let per_writer = (cli.rate * (cli.secs + 2.0)).ceil() as usize + 16;
    let table = Arc::new(SendTable::new(cli.writers, per_writer));
    let mut r = ctx.report(
        "fanout",
        json!({"subscribers": cli.subscribers, "writers": cli.writers, "rate": cli.rate}),
    );
    // Subscribers first: they join an empty room.
    let opened = open_many(cli.subscribers, cli.connect_concurrency, |_| {
        let (t, room, writers) = (ctx.target.clone(), room.clone(), cli.writers);
        async move {
            let (sink, source, synced) = join(&t, &room, None, true).await?;
            let seen = match synced {
                Some(Synced::Sv(sv)) => writer_clocks(&StateVector::decode_v1(&sv)?, writers),
                Some(Synced::Update(u)) => {
                    writer_clocks(&Update::decode_v1(&u)?.state_vector(), writers)
                }
                None => vec![0; writers],
            };
            Ok((sink, source, seen))
        }
    })
    .await;
    let subs = r.keep_opened(opened, "connect");
    r.clients = subs.len();
    // Writers run on a thread and runtime of their own. On the receivers'
    // runtime their sends bunched up behind a thousand receivers' work (a
    // native observer counted 20 broadcasts/s instead of the ~47 the
    // schedule gives), so the server merged more and looked cheaper.
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let (start_tx, start_rx) = tokio::sync::oneshot::channel::<(
        tokio::time::Instant,
        tokio::time::Instant,
        tokio::time::Instant,
    )>();
    let sent_total = Arc::new(AtomicU64::new(0));
    let writer_thread = {
        let (target, table, room, sent_total) = (
            ctx.target.clone(),
            table.clone(),
            room.clone(),
            sent_total.clone(),
        );
        let (writers, rate) = (cli.writers, cli.rate);
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = joined_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(run_writers(
                target, table, room, sent_total, writers, rate, joined_tx, start_rx,
            ));
        })
    };
    joined_rx
        .await
        .map_err(|_| anyhow!("writer thread ended"))??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs_f64(cli.secs);
    let t0 = tokio::time::Instant::now();
    let writers_end = t0 + warmup + measured;
    let until = writers_end + Duration::from_secs(3);
    let measure_from_us = table.now_us() + warmup.as_micros() as u64;
    let mut rx = Vec::new();
    let mut sinks = Vec::new();
    for (sink, source, seen) in subs {
        sinks.push(sink);
        rx.push(tokio::spawn(receive(
            ctx.target.clone(),
            source,
            seen,
            table.clone(),
            measure_from_us,
            until,
        )));
    }
    let _ = start_tx.send((t0, writers_end, until));
    // Server CPU over the measured window only (after the warm-up).
    tokio::time::sleep_until(t0 + warmup).await;
    let before = ctx.stat();
    tokio::time::sleep_until(writers_end + Duration::from_millis(500)).await;
    let after = ctx.stat();
    let mut lat = Vec::new();
    for t in rx {
        let got = t.await?;
        r.delivered += got.updates;
        r.frames_in += got.frames;
        r.bytes_in += got.bytes;
        lat.extend(got.latencies_us);
    }
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    drop(sinks);
    let sent = sent_total.load(Ordering::Relaxed);
    r.expected = sent * r.clients as u64;
    r.secs = cli.secs;
    let measured_deliveries = lat.len() as f64;
    r.delivered_per_sec = measured_deliveries / cli.secs;
    r.latency_ms = latency(lat);
    finish(&mut r, before, after, cli.secs + 0.5);
    if measured_deliveries > 0.0 {
        r.server_cpu_us_per_delivered = Some(r.server_cpu_secs * 1e6 / measured_deliveries);
    }
    Ok(r)
}
