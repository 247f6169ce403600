//! `presence`: many clients each moving a cursor at a fixed rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use crate::client::{drain, join, open_many};
use crate::procstat::self_cpu;
use crate::report::{finish, Report};

/// `--clients` clients in one room, each moving a cursor `--hz` times a
/// second; 1 s warm-up, then `--secs` measured.
pub async fn run(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    let room = "presence".to_string();
    let mut r = ctx.report("presence", json!({"clients": cli.clients, "hz": cli.hz}));
    // A valid encoded relative position (item 1:0 of client 1, assoc after).
    let pos = {
        use yrs::updates::encoder::Encode;
        yrs::StickyIndex::new(
            yrs::IndexScope::Relative(yrs::ID::new(yrs::block::ClientID::new(1), 0)),
            yrs::Assoc::After,
        )
        .encode_v1()
    };
    let opened = open_many(cli.clients, cli.connect_concurrency, |i| {
        let (t, room) = (ctx.target.clone(), room.clone());
        async move {
            let presence = Some(json!({ "name": format!("load-{i}") }));
            join(&t, &room, presence, true)
                .await
                .map(|(s, src, _)| (i, s, src))
        }
    })
    .await;
    let conns = r.keep_opened(opened, "connect");
    r.clients = conns.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = tokio::time::Instant::now();
    let warmup = Duration::from_secs(1);
    let end = t0 + warmup + Duration::from_secs_f64(cli.secs);
    let until = end + Duration::from_secs(1);
    let sent_total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, mut sink, source) in conns {
        tasks.push(tokio::spawn(drain(source, until)));
        let (t, room, pos, sent_total) = (
            ctx.target.clone(),
            room.clone(),
            pos.clone(),
            sent_total.clone(),
        );
        let period = Duration::from_secs_f64(1.0 / cli.hz);
        let phase = period.mul_f64(rand::random::<f64>());
        tasks.push(tokio::spawn(async move {
            let client = 0x2000_0000 + i as u64;
            let mut tick = tokio::time::interval_at(t0 + phase, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut clock = 1u32;
            loop {
                let at = tick.tick().await;
                if at >= end {
                    break;
                }
                let f = t.cursor_frame(&room, client, clock, &pos);
                clock += 1;
                if sink.send(Message::Binary(f.into())).await.is_err() {
                    break;
                }
                sent_total.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep_until(until).await;
            drop(sink);
            (0, 0)
        }));
    }
    tokio::time::sleep_until(t0 + warmup).await;
    let before = ctx.stat();
    let load_before = self_cpu();
    tokio::time::sleep_until(end).await;
    let after = ctx.stat();
    for t in tasks {
        if let Ok((f, b)) = t.await {
            r.frames_in += f;
            r.bytes_in += b;
        }
    }
    r.secs = cli.secs;
    r.delivered = sent_total.load(Ordering::Relaxed);
    r.delivered_per_sec = r.frames_in as f64 / (cli.secs + 2.0);
    finish(&mut r, before, after, cli.secs);
    r.notes.push(format!(
        "{} cursor moves sent; frames_in counts every frame received over the whole run; load generator used {:.2} s CPU while measured",
        r.delivered,
        self_cpu() - load_before
    ));
    r.delivered = 0;
    Ok(r)
}
