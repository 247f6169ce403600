//! Presence in rooms above `presence_list_max_members`: a bounded snapshot
//! with the room's total, no member-by-member joins to everyone, the whole
//! list page by page (`presence_list`, and `GET /rooms/{room}/presence`
//! over REST), and back to the full list below the bound. Small rooms are
//! covered by `core` and unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chorus::protocol::native::{ClientMessage, ServerMessage};
use chorus::protocol::ErrorCode;
use serde_json::{json, Value};

use crate::common::*;

/// What a client shows of a room's presence, built from the snapshot and
/// the diffs as PROTOCOL.md tells clients to.
#[derive(Debug, Default)]
struct Shown {
    /// Members listed, by id.
    members: BTreeMap<String, Value>,
    /// The room's total, while the list is partial.
    total: Option<u64>,
    /// The list holds part of the room.
    partial: bool,
    /// Member entries received (`joined` + `left`, snapshots included).
    entries: usize,
    /// `joined` entries received in diffs.
    diff_joins: usize,
}

impl Shown {
    /// Applies a message; false when it is not presence.
    fn apply(&mut self, m: &ServerMessage) -> bool {
        let ServerMessage::Presence {
            snapshot,
            joined,
            updated,
            left,
            total,
            partial,
            ..
        } = m
        else {
            return false;
        };
        if *snapshot {
            self.members.clear();
        } else {
            self.diff_joins += joined.len();
        }
        self.entries += joined.len() + left.len();
        for v in joined.iter().chain(updated) {
            self.members.insert(v.id.clone(), v.state.clone());
        }
        for id in left {
            self.members.remove(id);
        }
        self.total = *total;
        self.partial = *partial;
        true
    }

    /// The count a client shows: the total when partial, else the list's.
    fn count(&self) -> usize {
        match self.total {
            Some(t) if self.partial => t as usize,
            _ => self.members.len(),
        }
    }
}

/// Reads presence into `shown` until `done` holds (panics after the
/// harness's wait).
async fn watch_until(c: &mut Client, shown: &mut Shown, done: impl Fn(&Shown) -> bool) {
    while !done(shown) {
        let m = c
            .expect(|m| matches!(m, ServerMessage::Presence { .. }))
            .await;
        shown.apply(&m);
    }
}

/// Reads presence into `shown` until none came for `quiet`.
async fn drain(c: &mut Client, shown: &mut Shown, quiet: Duration) {
    while let Some(m) = c
        .maybe(quiet, |m| matches!(m, ServerMessage::Presence { .. }))
        .await
    {
        shown.apply(&m);
    }
}

/// Connects and joins `room` with presence `{name}`.
async fn member(srv: &chorus::http::BackgroundServer, room: &str, name: &str) -> Client {
    let mut c = Client::connect(srv.addr).await;
    c.join_with(room, &TestDoc::new(), Some(json!({ "name": name })))
        .await;
    c
}

/// A `presence_list` request and its answer (`presence_page` or `error`).
async fn list(
    c: &mut Client,
    room: &str,
    after: Option<String>,
    limit: Option<u64>,
) -> ServerMessage {
    let rid = c.rid();
    c.send(&ClientMessage::PresenceList {
        room: room.into(),
        after,
        limit,
        rid: Some(rid),
    })
    .await;
    c.expect(|m| {
        matches!(m, ServerMessage::PresencePage { rid: r, .. } | ServerMessage::Error { rid: r, .. } if *r == Some(rid))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiners_snapshot_in_a_big_room_is_bounded_and_carries_the_total() {
    let srv = server(|c| c.limits.presence_list_max_members = 4);
    let mut early = Vec::new();
    for i in 0..8 {
        early.push(member(&srv, "big", &format!("m{i}")).await);
    }
    let mut c = Client::connect(srv.addr).await;
    c.join_with("big", &TestDoc::new(), Some(json!({"name": "late"})))
        .await;
    let snap = c
        .expect(|m| matches!(m, ServerMessage::Presence { snapshot: true, .. }))
        .await;
    let ServerMessage::Presence {
        joined,
        total,
        partial,
        ..
    } = snap
    else {
        unreachable!()
    };
    assert!(
        joined.len() <= 5,
        "at most 4 listed and the joiner: {joined:?}"
    );
    assert!(
        joined.iter().any(|v| v.id == c.session),
        "the joiner is in it"
    );
    assert_eq!((total, partial), (Some(9), true));
    // The listed members are the first to have joined.
    let first: BTreeSet<&str> = early[..4].iter().map(|m| m.session.as_str()).collect();
    for v in joined.iter().filter(|v| v.id != c.session) {
        assert!(
            first.contains(v.id.as_str()),
            "{} is not of the first 4",
            v.id
        );
    }
}

/// K members join a room above the bound: a member that was there gets no
/// entry for them, only the new total, and all members together receive
/// O(K) bytes (each a bounded snapshot), not O(K²) (each every other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_in_a_big_room_cost_each_member_a_count_not_a_list() {
    const MAX: usize = 4;
    const K: usize = 200;
    let srv = server(|c| {
        c.limits.presence_list_max_members = MAX;
        c.limits.tick_ms = 100;
        c.limits.connections_per_ip_per_sec = 0;
    });
    let mut watcher = member(&srv, "crowd", "watcher").await;
    let mut shown = Shown::default();
    let mut first = Vec::new();
    for i in 0..MAX {
        first.push(member(&srv, "crowd", &format!("first-{i}")).await);
    }
    watch_until(&mut watcher, &mut shown, |s| s.count() == MAX + 1).await;
    drain(&mut watcher, &mut shown, Duration::from_millis(300)).await;
    let (bytes_before, entries_before) = (watcher.bytes_in, shown.entries);

    let mut joiners = Vec::new();
    for i in 0..K {
        joiners.push(member(&srv, "crowd", &format!("member-{i}")).await);
    }
    let n = MAX + 1 + K;
    watch_until(&mut watcher, &mut shown, |s| s.total == Some(n as u64)).await;
    drain(&mut watcher, &mut shown, Duration::from_millis(400)).await;
    assert!(shown.partial);
    let (bytes, entries) = (
        watcher.bytes_in - bytes_before,
        shown.entries - entries_before,
    );
    assert_eq!(entries, 0, "no member entry for {K} joins beyond the list");
    // A count frame is ~60 bytes, sent at most once per tick; a list
    // entry ~45: member-by-member joins would be ≥ K × 45 = 9 000.
    assert!(bytes < 3_000, "{bytes} bytes to one member for {K} joins");
    eprintln!("one member: {bytes} bytes, {entries} entries for {K} joins");
    // The watcher and the next three to join are listed.
    assert_eq!(shown.members.len(), MAX, "{:?}", shown.members.keys());

    // Everyone together: the joiners' snapshots and counts.
    let reads = joiners.iter_mut().map(|c| async move {
        let mut s = Shown::default();
        drain(c, &mut s, Duration::from_millis(400)).await;
        (c.bytes_in, s)
    });
    let mut all_bytes = 0u64;
    let mut all_entries = 0usize;
    for (bytes, s) in futures::future::join_all(reads).await {
        assert!(s.members.len() <= MAX + 1, "{:?}", s.members.keys());
        assert_eq!(s.count(), n, "every member shows the total");
        all_bytes += bytes;
        all_entries += s.entries;
    }
    eprintln!("{K} joiners: {all_bytes} bytes, {all_entries} entries");
    // O(K): each joiner got at most MAX + 1 entries. Every join to every
    // member would be ≈ K²/2 entries (20 000 here), ≈ 900 KB.
    assert!(
        all_entries <= K * (MAX + 1),
        "{all_entries} entries for {K} joiners"
    );
    assert!(
        all_bytes < (K as u64) * 1_500,
        "{all_bytes} bytes to {K} joiners (welcome, synced, snapshot, counts)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_list_every_member_exactly_once() {
    const MAX: usize = 4;
    let srv = server(|c| c.limits.presence_list_max_members = MAX);
    let mut reader = member(&srv, "paged", "reader").await;
    let mut others = Vec::new();
    for i in 0..12 {
        others.push(member(&srv, "paged", &format!("m{i}")).await);
    }
    let mut want: BTreeSet<String> = others.iter().map(|c| c.session.clone()).collect();
    want.insert(reader.session.clone());

    for limit in [Some(3), None, Some(MAX as u64)] {
        let mut seen: Vec<String> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = list(&mut reader, "paged", after.clone(), limit).await;
            let ServerMessage::PresencePage {
                members,
                next,
                total,
                ..
            } = page
            else {
                panic!("expected a page, got {page:?}");
            };
            pages += 1;
            assert_eq!(total, 13);
            assert!(members.len() <= limit.unwrap_or(MAX as u64) as usize);
            assert!(members.iter().all(|m| m.state["name"].is_string()));
            seen.extend(members.into_iter().map(|m| m.id));
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
            assert!(pages < 20, "paging does not end");
        }
        let unique: BTreeSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "a member twice: {seen:?}");
        assert_eq!(unique, want, "limit {limit:?}");
        // Join order: the reader joined first.
        assert_eq!(seen[0], reader.session);
    }

    // Bad requests get clear errors; the connection stays usable.
    for (after, limit, what) in [
        (Some("soon".to_owned()), None, "after must be"),
        (Some("-3".to_owned()), None, "after must be"),
        (None, Some(0), "limit must be 1 to 4"),
        (None, Some(MAX as u64 + 1), "limit must be 1 to 4"),
    ] {
        match list(&mut reader, "paged", after, limit).await {
            ServerMessage::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::BadMessage);
                assert!(message.contains(what), "{message}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    match list(&mut reader, "elsewhere", None, None).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::NotJoined),
        other => panic!("expected not_joined, got {other:?}"),
    }
    assert!(matches!(
        list(&mut reader, "paged", None, Some(1)).await,
        ServerMessage::PresencePage { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_whole_again_below_the_bound() {
    const MAX: usize = 3;
    let srv = server(|c| c.limits.presence_list_max_members = MAX);
    let mut watcher = member(&srv, "ebb", "watcher").await;
    let mut shown = Shown::default();
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(member(&srv, "ebb", &format!("m{i}")).await);
    }
    watch_until(&mut watcher, &mut shown, |s| s.total == Some(6)).await;
    assert!(shown.partial);
    assert_eq!(shown.members.len(), MAX);

    // A listed member and one beyond the list leave: 4 left, still above.
    let listed_leaver = others.remove(0);
    let beyond_leaver = others.remove(3);
    let (listed_id, beyond_id) = (listed_leaver.session.clone(), beyond_leaver.session.clone());
    drop((listed_leaver, beyond_leaver));
    watch_until(&mut watcher, &mut shown, |s| s.total == Some(4)).await;
    assert!(
        !shown.members.contains_key(&listed_id),
        "a listed leave is told"
    );
    assert!(!shown.members.contains_key(&beyond_id));
    assert_eq!(shown.members.len(), MAX, "the next member moved up");

    // One more leaves: 3, within the bound: the list is the whole room.
    drop(others.remove(0));
    watch_until(&mut watcher, &mut shown, |s| {
        !s.partial && s.total.is_some()
    })
    .await;
    let mut room: BTreeSet<String> = others.iter().map(|c| c.session.clone()).collect();
    room.insert(watcher.session.clone());
    let listed: BTreeSet<String> = shown.members.keys().cloned().collect();
    assert_eq!(listed, room);

    // Below the bound, joins are sent member by member again.
    drop(others.remove(0));
    watch_until(&mut watcher, &mut shown, |s| s.members.len() == 2).await;
    let joins_before = shown.diff_joins;
    let newcomer = member(&srv, "ebb", "newcomer").await;
    watch_until(&mut watcher, &mut shown, |s| {
        s.members.contains_key(&newcomer.session)
    })
    .await;
    assert_eq!(shown.diff_joins, joins_before + 1);
    assert_eq!((shown.total, shown.partial), (None, false), "{shown:?}");
}

/// Activity of a member beyond the list (a state change) reaches everyone,
/// and so does its leave afterwards: no member shown stays forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_beyond_the_list_that_was_active_is_told_leaving() {
    let srv = server(|c| c.limits.presence_list_max_members = 2);
    let mut watcher = member(&srv, "act", "watcher").await;
    let mut shown = Shown::default();
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(member(&srv, "act", &format!("m{i}")).await);
    }
    watch_until(&mut watcher, &mut shown, |s| s.total == Some(5)).await;
    let mut active = others.pop().expect("four members");
    let id = active.session.clone();
    assert!(!shown.members.contains_key(&id), "beyond the list");
    active
        .send(&ClientMessage::Presence {
            room: "act".into(),
            state: json!({"name": "m3", "away": true}),
            rid: None,
        })
        .await;
    watch_until(&mut watcher, &mut shown, |s| s.members.contains_key(&id)).await;
    assert_eq!(shown.members[&id]["away"], true);
    // That diff had no new count, but it still says the list is partial.
    assert_eq!((shown.total, shown.partial), (Some(5), true));
    drop(active);
    watch_until(&mut watcher, &mut shown, |s| !s.members.contains_key(&id)).await;
    assert_eq!(shown.total, Some(4));
}

/// `GET /api/v1/rooms/{room}/presence?limit=&after=` (the query).
async fn rest_presence(
    srv: &chorus::http::BackgroundServer,
    room: &str,
    query: &str,
) -> (u16, Value) {
    let (status, body) =
        http_get(srv.addr, &format!("/api/v1/rooms/{room}/presence?{query}")).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, v)
}

/// The REST presence of a room above the bound is the member list page by
/// page, as `presence_list` reads it: at most `presence_list_max_members`
/// per answer, the total, `next` to follow; bad `limit` / `after` are 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_presence_pages_a_big_room_as_presence_list_does() {
    const MAX: usize = 5;
    let srv = server(|c| c.limits.presence_list_max_members = MAX);
    let mut members = Vec::new();
    for i in 0..12 {
        members.push(member(&srv, "rest-big", &format!("m{i}")).await);
    }
    let joined: Vec<String> = members.iter().map(|c| c.session.clone()).collect();

    // The default page: the first MAX members to join, the total, a next.
    let (status, first) = rest_presence(&srv, "rest-big", "").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["room"], "rest-big");
    assert_eq!(first["total"], 12);
    assert_eq!(page_member_ids(std::slice::from_ref(&first)), joined[..MAX]);
    assert_eq!(first["members"][0]["state"]["name"], "m0", "{first}");
    assert!(first["next"].is_string(), "{first}");
    // The same page a member reads over the WebSocket, `next` included.
    let ServerMessage::PresencePage {
        members: native,
        next,
        total,
        ..
    } = list(&mut members[0], "rest-big", None, None).await
    else {
        panic!("expected a presence_page");
    };
    let native: Vec<String> = native.into_iter().map(|m| m.id).collect();
    assert_eq!(page_member_ids(std::slice::from_ref(&first)), native);
    assert_eq!(
        (first["next"].as_str(), first["total"].as_u64()),
        (next.as_deref(), Some(total))
    );

    // Following `next` visits every member once, in join order.
    for limit in [None, Some(1), Some(4), Some(MAX as u64)] {
        let pages = rest_presence_pages(srv.addr, "rest-big", limit).await;
        assert_eq!(page_member_ids(&pages), joined, "limit {limit:?}");
        let per = limit.unwrap_or(MAX as u64) as usize;
        assert_eq!(pages.len(), joined.len().div_ceil(per), "limit {limit:?}");
        assert!(pages.iter().all(|p| p["total"] == 12));
        assert!(pages.last().is_some_and(|p| p["next"].is_null()));
    }

    // Bad requests: 400 bad_request, saying what is wrong.
    for (query, what) in [
        ("limit=0", "limit must be 1 to 5"),
        ("limit=6", "limit must be 1 to 5"),
        ("limit=-1", "bad query"),
        ("limit=lots", "bad query"),
        ("after=garbage", "after must be"),
        ("after=-3", "after must be"),
        ("after=", "after must be"),
        ("after=1e3", "after must be"),
    ] {
        let (status, body) = rest_presence(&srv, "rest-big", query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(what), "{query}: {message}");
    }
}

/// A room within the bound answers with all its members, as before the
/// pages, plus the page fields: the total and no next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_presence_of_a_small_room_holds_everyone() {
    let srv = server(|c| c.limits.presence_list_max_members = 5);
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(member(&srv, "rest-small", &format!("m{i}")).await);
    }
    let (status, body) = rest_presence(&srv, "rest-small", "").await;
    assert_eq!(status, 200, "{body}");
    let names: BTreeSet<&str> = body["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["state"]["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["m0", "m1", "m2"]), "{body}");
    assert_eq!(
        (body["total"].as_u64(), body["next"].is_null()),
        (Some(3), true),
        "{body}"
    );
    // An empty room: no members, total 0.
    let (status, body) = rest_presence(&srv, "rest-nobody", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["members"], json!([]));
    assert_eq!(
        (body["total"].as_u64(), body["next"].is_null()),
        (Some(0), true)
    );
}
