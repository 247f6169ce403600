//! `crowd`: many members join one room with presence on, reading as real
//! clients do; how long until every one has joined and a probe member sees
//! them all, and what the server spent on it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use crate::cli::Proto;
use crate::client::{drain, join, open_many, Source};
use crate::report::{finish, Report};
use chorus::protocol::native::{decode_server, ServerMessage};

/// Reads presence messages until the probe has seen `want` members (itself
/// included) or `until`; returns the members seen and when the count was
/// reached.
async fn watch_presence(
    mut source: Source,
    want: usize,
    until: tokio::time::Instant,
) -> (usize, Option<Instant>) {
    let mut members: HashSet<String> = HashSet::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, source.next()).await {
        let Message::Binary(b) = m else { continue };
        let Ok(ServerMessage::Presence {
            snapshot,
            joined,
            left,
            ..
        }) = decode_server(&b)
        else {
            continue;
        };
        if snapshot {
            members.clear();
        }
        members.extend(joined.into_iter().map(|v| v.id));
        for id in left {
            members.remove(&id);
        }
        if members.len() >= want {
            return (members.len(), Some(Instant::now()));
        }
    }
    (members.len(), None)
}

/// `--conns` native members join the room `crowd` (presence state
/// `{name}`), `--connect-concurrency` at a time; every member reads from
/// the moment it joined. Done when every member has its `synced` and the
/// first member (the probe) has seen all of them in presence.
pub async fn run(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    if ctx.target.proto != Proto::Native {
        bail!("crowd speaks the native protocol only");
    }
    let room = "crowd".to_string();
    let n = cli.conns;
    let mut r = ctx.report("crowd", json!({"members": n}));
    let before = ctx.stat();
    let t0 = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(300);
    // The probe joins first and watches presence.
    let (_probe_sink, probe_source, _) =
        join(&ctx.target, &room, Some(json!({"name": "probe"})), true).await?;
    let probe = tokio::spawn(watch_presence(probe_source, n, until));
    let opened = open_many(n - 1, cli.connect_concurrency, |i| {
        let (t, room) = (ctx.target.clone(), room.clone());
        async move {
            let presence = Some(json!({ "name": format!("member-{i}") }));
            let (sink, source, _) = join(&t, &room, presence, true).await?;
            // Reads from now on, as a client would.
            let reader = tokio::spawn(drain(source, until));
            Ok((sink, reader))
        }
    })
    .await;
    let joined_at = t0.elapsed();
    let conns = r.keep_opened(opened, "join");
    r.clients = conns.len() + 1;
    let (seen, all_seen) = probe.await?;
    let done = all_seen.map(|t| t - t0);
    let after = ctx.stat();
    r.notes.push(format!(
        "all {} joined (synced) after {:.2} s",
        r.clients,
        joined_at.as_secs_f64()
    ));
    match done {
        Some(d) => r.notes.push(format!(
            "probe saw all {seen} members after {:.2} s",
            d.as_secs_f64()
        )),
        None => r.notes.push(format!(
            "failed: probe saw only {seen} of {n} members within 300 s"
        )),
    }
    let secs = done.unwrap_or(t0.elapsed()).as_secs_f64();
    finish(&mut r, before, after, secs);
    r.secs = secs;
    r.server_cpu_secs = after.cpu_secs - before.cpu_secs;
    r.server_cpu_cores = r.server_cpu_secs / secs.max(1e-9);
    let grown = after.rss_kb.saturating_sub(before.rss_kb) as f64;
    r.rss_per_unit_kb = Some(grown / r.clients.max(1) as f64);
    r.unit = Some("member".into());
    drop(conns);
    Ok(r)
}
