//! `rooms` and `idle`: many connections, in many rooms with light traffic
//! (server memory and CPU per room) or idle in one room (server memory per
//! connection).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{write_on_schedule, Ctx};
use crate::cli::Proto;
use crate::client::{drain, join, open_many, Writer, WRITER_BASE};
use crate::report::{finish, Report};

/// Many connections (idle) or many rooms with light traffic (rooms).
pub async fn run(ctx: &Ctx, rooms_mode: bool) -> Result<Report> {
    let cli = &ctx.cli;
    let (n_rooms, per_room) = if rooms_mode {
        (cli.rooms, cli.per_room.max(1))
    } else {
        (1, cli.conns)
    };
    let room_name = |i: usize| {
        if rooms_mode {
            format!("room-{i}")
        } else {
            "idle".to_string()
        }
    };
    let mut r = if rooms_mode {
        ctx.report(
            "rooms",
            json!({"rooms": n_rooms, "per_room": per_room, "interval_s": cli.room_interval}),
        )
    } else {
        ctx.report("idle", json!({"conns": cli.conns, "join": cli.idle_join}))
    };
    let before = ctx.stat();
    let t_setup = Instant::now();
    let total = n_rooms * per_room;
    let idle_join = cli.idle_join;
    let opened = open_many(total, cli.connect_concurrency, |i| {
        let t = ctx.target.clone();
        let room = room_name(i / per_room);
        let hello_only = !rooms_mode && !idle_join && t.proto == Proto::Native;
        async move {
            if hello_only {
                let ws = t.connect(&room).await?;
                let (mut sink, source) = ws.split();
                let hello = t.join_frames(&room, None).swap_remove(0);
                sink.send(Message::Binary(hello.into())).await?;
                return Ok((i, sink, source));
            }
            join(&t, &room, None, true)
                .await
                .map(|(s, src, _)| (i, s, src))
        }
    })
    .await;
    let conns = r.keep_opened(opened, "connect");
    r.clients = conns.len();
    r.notes
        .push(format!("setup {:.1} s", t_setup.elapsed().as_secs_f64()));
    let secs = if rooms_mode {
        cli.secs
    } else {
        cli.secs.min(5.0)
    };
    let t0 = tokio::time::Instant::now();
    let until = t0 + Duration::from_secs_f64(secs) + Duration::from_secs(1);
    let mut tasks = Vec::new();
    let sent_total = Arc::new(AtomicU64::new(0));
    for (i, mut sink, source) in conns {
        tasks.push(tokio::spawn(drain(source, until)));
        if rooms_mode && i % per_room == 0 {
            // The first client of each room writes a small document, then
            // one short update every `room_interval`, at a random phase.
            let (t, room, sent_total) = (
                ctx.target.clone(),
                room_name(i / per_room),
                sent_total.clone(),
            );
            let period = Duration::from_secs_f64(cli.room_interval);
            let phase = period.mul_f64(rand::random::<f64>());
            let first_secs = secs;
            tasks.push(tokio::spawn(async move {
                let writer = Writer::new(WRITER_BASE + i as u64);
                let data = writer.write(&"small document ".repeat(8));
                let _ = sink
                    .send(Message::Binary(t.update_frame(&room, data).into()))
                    .await;
                let tick = tokio::time::interval_at(t0 + phase, period);
                let end = t0 + Duration::from_secs_f64(first_secs);
                write_on_schedule(
                    &t,
                    &room,
                    &writer,
                    &mut sink,
                    tick,
                    end,
                    &sent_total,
                    || true,
                )
                .await;
                tokio::time::sleep_until(until).await;
                drop(sink);
                (0, 0)
            }));
        } else {
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                drop(sink);
                (0, 0)
            }));
        }
    }
    let cpu_from = ctx.stat();
    tokio::time::sleep_until(until - Duration::from_millis(500)).await;
    let after = ctx.stat();
    for t in tasks {
        if let Ok((f, b)) = t.await {
            r.frames_in += f;
            r.bytes_in += b;
        }
    }
    r.secs = secs;
    finish(&mut r, before, after, secs + 0.5);
    r.server_cpu_secs = after.cpu_secs - cpu_from.cpu_secs;
    r.server_cpu_cores = r.server_cpu_secs / (secs + 0.5);
    let grown = after.rss_kb.saturating_sub(before.rss_kb) as f64;
    if rooms_mode {
        r.rss_per_unit_kb = Some(grown / n_rooms as f64);
        r.unit = Some(format!("room (with its {per_room} connections)"));
        r.delivered = sent_total.load(Ordering::Relaxed);
    } else {
        r.rss_per_unit_kb = Some(grown / r.clients.max(1) as f64);
        r.unit = Some("connection".into());
    }
    Ok(r)
}
