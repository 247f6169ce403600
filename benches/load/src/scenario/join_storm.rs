//! `join-storm`: many clients join a room holding a large document at once;
//! time to sync. The clients are [`RawWs`] readers.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{GetString, StateVector, Transact};

use super::Ctx;
use crate::client::{drain, join, open_many, writer_clocks, Writer, WRITER_BASE};
use crate::protocol::{self, Synced};
use crate::raw_ws::RawWs;
use crate::report::{finish, latency, Report};
use crate::target::Target;

/// The storm's room: new for each run of the generator.
pub fn room_name() -> String {
    format!("storm-{}", std::process::id())
}

/// A room seeded with `--doc-mb` MB of text, then `--clients` clients join
/// it at once; the time each takes to sync.
pub async fn run(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    let room = room_name();
    let mut r = ctx.report(
        "join-storm",
        json!({"clients": cli.clients, "doc_mb": cli.doc_mb}),
    );
    // Seed the document: 1 MB text updates from one writer.
    let bytes = (cli.doc_mb * 1_000_000.0) as usize;
    let seed_t = Instant::now();
    let seeder;
    {
        let (mut sink, source, _) = join(&ctx.target, &room, None, true).await?;
        let drainer = tokio::spawn(drain(
            source,
            tokio::time::Instant::now() + Duration::from_secs(120),
        ));
        let writer = Writer::new(WRITER_BASE);
        let chunk = "abcdefghij".repeat(100_000);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            let data = writer.write(&chunk[..n]);
            sink.send(Message::Binary(ctx.target.update_frame(&room, data).into()))
                .await?;
            left -= n;
        }
        // Check the seed arrived: a fresh client syncs and sees the size.
        let expect = writer.text.get_string(&writer.doc.transact()).len();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, _, synced) = join(&ctx.target, &room, None, true).await?;
            let size = match synced {
                Some(Synced::Sv(sv)) => writer_clocks(&StateVector::decode_v1(&sv)?, 1)[0] as usize,
                Some(Synced::Update(u)) => u.len(),
                None => 0,
            };
            if size >= expect || Instant::now() > deadline {
                r.notes
                    .push(format!("seeded {expect} chars; a probe synced {size}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The seeder stays connected through the storm: a server without
        // persistence (Hocuspocus here) unloads a document nobody is in.
        seeder = Some((sink, drainer));
    }
    r.notes
        .push(format!("seed {:.1} s", seed_t.elapsed().as_secs_f64()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ctx.stat();
    let start = Instant::now();
    let opened = open_many(cli.clients, cli.clients, |_| {
        let (t, room) = (ctx.target.clone(), room.clone());
        async move {
            let (ws, size, messages) = raw_join(&t, &room).await?;
            Ok((start.elapsed(), size, messages, ws))
        }
    })
    .await;
    let wall = start.elapsed().as_secs_f64();
    let after = ctx.stat();
    let mut times = Vec::new();
    let mut keep = Vec::new();
    for o in opened {
        match o {
            Ok((at, size, messages, ws)) => {
                times.push(at.as_micros() as u32);
                r.bytes_in += size;
                r.frames_in += messages;
                keep.push(ws);
            }
            Err(e) => {
                if r.failed_connects == 0 {
                    r.notes.push(format!("first failed join: {e:#}"));
                }
                r.failed_connects += 1;
            }
        }
    }
    r.clients = times.len();
    r.secs = wall;
    r.notes
        .push(format!("all {} synced within {:.2} s", r.clients, wall));
    r.sync_ms = latency(times);
    finish(&mut r, before, after, wall);
    drop(keep);
    if let Some((_, drainer)) = seeder {
        drainer.abort();
    }
    Ok(r)
}

/// Connects a join-storm client to `room` and waits for its sync message:
/// the connection, the sync message's size and the messages received.
async fn raw_join(target: &Target, room: &str) -> Result<(RawWs, u64, u64)> {
    let mut ws = RawWs::connect(target, &target.ws_url(room)?).await?;
    for f in target.join_frames(room, None) {
        ws.send(&f).await?;
    }
    let mut messages = 0;
    loop {
        let m = ws.next().await?;
        messages += 1;
        if m.opcode == 2 && protocol::is_sync_message(target.proto, &m.head, m.len)? {
            return Ok((ws, m.len, messages));
        }
    }
}
