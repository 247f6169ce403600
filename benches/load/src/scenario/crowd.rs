//! `crowd`: many members join one room with presence on, reading as real
//! clients do; how long until every one has joined and a probe member sees
//! them all (in its presence list, or, in a room above the server's
//! `presence_list_max_members`, as the total and then page by page with
//! `presence_list`), and what the server spent on it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use crate::cli::Proto;
use crate::client::{drain, join, open_many, Sink, Source};
use crate::report::{finish, Report};
use chorus::protocol::native::{decode_server, encode_client, ClientMessage, ServerMessage};

/// What the probe saw.
struct Watched {
    /// Members seen: in the presence list, or in the pages when the room
    /// is above the server's list bound.
    seen: usize,
    /// When the probe's presence said `want` members (its list, or the
    /// `total` of a partial list).
    counted_at: Option<Instant>,
    /// When the probe had seen every member (listed, or paged).
    all_at: Option<Instant>,
    /// Pages read (0: the presence list held everyone).
    pages: usize,
}

/// Reads presence messages until the probe's presence shows `want`
/// members (itself included) or `until`: its list, or the `total` when
/// the list is partial (a room above `presence_list_max_members`). A
/// partial list is then read page by page (`presence_list`), and every
/// member must be on a page exactly once, with its own name: `probe` and
/// `member-0` … `member-{want − 2}`.
async fn watch_presence(
    mut sink: Sink,
    mut source: Source,
    room: String,
    want: usize,
    until: tokio::time::Instant,
) -> Watched {
    let mut members: HashSet<String> = HashSet::new();
    let mut partial;
    let mut watched = Watched {
        seen: 0,
        counted_at: None,
        all_at: None,
        pages: 0,
    };
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, source.next()).await {
        let Message::Binary(b) = m else { continue };
        let Ok(ServerMessage::Presence {
            snapshot,
            joined,
            updated,
            left,
            total: t,
            partial: p,
            ..
        }) = decode_server(&b)
        else {
            continue;
        };
        if snapshot {
            members.clear();
        }
        members.extend(joined.into_iter().chain(updated).map(|v| v.id));
        for id in left {
            members.remove(&id);
        }
        partial = p;
        let count = match t {
            Some(t) if partial => t as usize,
            _ => members.len(),
        };
        if count >= want {
            watched.counted_at = Some(Instant::now());
            if !partial {
                watched.seen = members.len();
                watched.all_at = watched.counted_at;
                return watched;
            }
            break;
        }
    }
    watched.seen = members.len();
    if watched.counted_at.is_none() {
        return watched;
    }
    // The list is partial: read the whole of it.
    let mut ids: HashSet<String> = HashSet::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut after: Option<String> = None;
    let mut twice = 0usize;
    loop {
        watched.pages += 1;
        let rid = watched.pages as u64;
        let ask = ClientMessage::PresenceList {
            room: room.clone(),
            after: after.take(),
            limit: None,
            rid: Some(rid),
        };
        if sink
            .send(Message::Binary(encode_client(&ask).into()))
            .await
            .is_err()
        {
            return watched;
        }
        let next = loop {
            let Ok(Some(Ok(Message::Binary(b)))) =
                tokio::time::timeout_at(until, source.next()).await
            else {
                return watched;
            };
            match decode_server(&b) {
                Ok(ServerMessage::PresencePage {
                    members,
                    next,
                    rid: Some(r),
                    ..
                }) if r == rid => {
                    for m in members {
                        if let Some(name) = m.state.get("name").and_then(|n| n.as_str()) {
                            names.insert(name.to_owned());
                        }
                        if !ids.insert(m.id) {
                            twice += 1;
                        }
                    }
                    break next;
                }
                Ok(ServerMessage::Error {
                    message,
                    rid: Some(r),
                    ..
                }) if r == rid => {
                    eprintln!("crowd: presence_list refused: {message}");
                    return watched;
                }
                _ => {}
            }
        };
        watched.seen = ids.len();
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let named = names.contains("probe")
        && (0..want.saturating_sub(1)).all(|i| names.contains(&format!("member-{i}")));
    if twice == 0 && ids.len() >= want && named {
        watched.all_at = Some(Instant::now());
    } else {
        eprintln!(
            "crowd: pages held {} members ({twice} listed twice), every name: {named}",
            ids.len()
        );
    }
    watched
}

/// `--conns` native members join the room `crowd` (presence state
/// `{name}`), `--connect-concurrency` at a time; every member reads from
/// the moment it joined. Done when every member has its `synced` and the
/// first member (the probe) has seen all of them in presence.
pub async fn run(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    match ctx.target.proto {
        Proto::Native => {}
        Proto::Yws => return run_yws(ctx).await,
        _ => bail!("crowd speaks the native protocol and y-websocket's"),
    }
    let room = "crowd".to_string();
    let n = cli.conns;
    let mut r = ctx.report("crowd", json!({"members": n}));
    let before = ctx.stat();
    let t0 = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(300);
    // The probe joins first and watches presence.
    let (probe_sink, probe_source, _) =
        join(&ctx.target, &room, Some(json!({"name": "probe"})), true).await?;
    let probe = tokio::spawn(watch_presence(
        probe_sink,
        probe_source,
        room.clone(),
        n,
        until,
    ));
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
    let watched = probe.await?;
    let seen = watched.seen;
    let done = watched.all_at.map(|t| t - t0);
    let after = ctx.stat();
    r.notes.push(format!(
        "all {} joined (synced) after {:.2} s",
        r.clients,
        joined_at.as_secs_f64()
    ));
    if watched.pages > 0 {
        if let Some(c) = watched.counted_at {
            r.notes.push(format!(
                "probe's presence said {n} members (partial list, total) after {:.2} s; \
                 then it read {} pages of the member list",
                (c - t0).as_secs_f64(),
                watched.pages
            ));
        }
    }
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

/// Reads awareness messages until the probe has seen `want` live states
/// (its own included) or `until`; returns when it had, and how many it saw.
async fn watch_awareness(
    mut source: Source,
    want: usize,
    until: tokio::time::Instant,
) -> (Option<Instant>, usize) {
    let mut live: HashSet<u64> = HashSet::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, source.next()).await {
        let Message::Binary(b) = m else { continue };
        let Ok(msgs) = chorus::protocol::yjs::decode_frame(&b) else {
            continue;
        };
        for msg in msgs {
            if let chorus::protocol::yjs::YjsMessage::Awareness(entries) = msg {
                for e in entries {
                    if e.json == "null" {
                        live.remove(&e.client);
                    } else {
                        live.insert(e.client);
                    }
                }
            }
        }
        if live.len() >= want {
            return (Some(Instant::now()), live.len());
        }
    }
    (None, live.len())
}

/// The y-protocols crowd: `--conns` y-websocket clients join the room
/// `crowd`, each announcing an awareness state `{user: {name}}` as editor
/// bindings do, and read from the moment they connect. Done when every one
/// has synced and the first (the probe) has seen `--expect-shown` states
/// (every member when 0). Reports what all members received in total:
/// the awareness traffic a crowd costs.
async fn run_yws(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    let room = "crowd".to_string();
    let n = cli.conns;
    let want = match cli.expect_shown {
        0 => n,
        k => k.min(n),
    };
    let mut r = ctx.report("crowd", json!({"members": n, "expect_shown": want}));
    let before = ctx.stat();
    let t0 = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_secs(300);
    let state = |i: usize| {
        let name = if i == 0 {
            "probe".to_owned()
        } else {
            format!("member-{i}")
        };
        json!({ "user": { "name": name } }).to_string()
    };
    let (mut probe_sink, probe_source, _) = join(&ctx.target, &room, None, true).await?;
    let hello = chorus::protocol::yjs::awareness([(1, 1, state(0).as_str())]);
    probe_sink.send(Message::Binary(hello.into())).await?;
    let probe = tokio::spawn(watch_awareness(probe_source, want, until));
    // What every member received: frames, bytes.
    let received = std::sync::Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let opened = open_many(n - 1, cli.connect_concurrency, |i| {
        let (t, room, received) = (ctx.target.clone(), room.clone(), received.clone());
        let hello = chorus::protocol::yjs::awareness([(i as u64 + 2, 1, state(i + 1).as_str())]);
        async move {
            let (mut sink, mut source, _) = join(&t, &room, None, true).await?;
            let reader = tokio::spawn(async move {
                while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, source.next()).await {
                    received.0.fetch_add(1, Ordering::Relaxed);
                    received.1.fetch_add(m.len() as u64, Ordering::Relaxed);
                }
            });
            sink.send(Message::Binary(hello.into())).await?;
            Ok((sink, reader))
        }
    })
    .await;
    let joined_at = t0.elapsed();
    let conns = r.keep_opened(opened, "join");
    r.clients = conns.len() + 1;
    let (saw_at, seen) = probe.await?;
    r.notes.push(format!(
        "all {} joined (synced) after {:.2} s",
        r.clients,
        joined_at.as_secs_f64()
    ));
    match saw_at {
        Some(t) => r.notes.push(format!(
            "probe saw {seen} awareness states after {:.2} s",
            (t - t0).as_secs_f64()
        )),
        None => r.notes.push(format!(
            "failed: probe saw only {seen} of {want} awareness states within 300 s"
        )),
    }
    // Done when every member has joined and the probe saw its states.
    let secs = saw_at
        .map_or(t0.elapsed(), |t| (t - t0).max(joined_at))
        .as_secs_f64();
    // Let the last awareness messages arrive, then stop the readers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = ctx.stat();
    r.frames_in = received.0.load(Ordering::Relaxed);
    r.bytes_in = received.1.load(Ordering::Relaxed);
    for (_, reader) in &conns {
        reader.abort();
    }
    r.notes.push(format!(
        "members received {:.1} MB in {} frames ({:.1} KB each)",
        r.bytes_in as f64 / 1e6,
        r.frames_in,
        r.bytes_in as f64 / 1e3 / n.max(1) as f64
    ));
    finish(&mut r, before, after, secs);
    r.secs = secs;
    r.server_cpu_secs = after.cpu_secs - before.cpu_secs;
    r.server_cpu_cores = r.server_cpu_secs / secs.max(1e-9);
    r.unit = Some("member".into());
    drop(conns);
    Ok(r)
}
