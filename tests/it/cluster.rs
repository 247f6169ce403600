//! Cluster mode: a real `redis-server` and a real PostgreSQL on free ports
//! and real nodes as child processes, each with `--redis-url` (messages)
//! and `--postgres-url` (documents).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use chorus::protocol::native::{ClientMessage, ServerMessage};

use chorus::protocol::native::Bin;

use crate::common::{
    eventually, http_bodiless, http_get, page_member_ids, rest_presence_pages, ChildServer, Client,
    TestDoc, WAIT,
};
use crate::http::request;

/// Load-balancer acceptance tests: failures, rolling restarts,
/// rebalancing, forwarded client IPs.
mod lb;

/// A `redis-server` child on a free port, killed on drop, and the
/// PostgreSQL server its nodes keep documents in.
struct Redis {
    child: std::process::Child,
    port: u16,
    /// Its working directory (the append-only file, when persistent).
    dir: tempfile::TempDir,
    persistent: bool,
    /// Where the nodes keep documents.
    pg: crate::pg::Postgres,
}

impl Redis {
    /// Redis as deployed for Chorus: append-only file, fsynced on every
    /// write, so a restart keeps every acked update.
    fn start() -> Redis {
        Redis::start_with(true)
    }

    /// Redis without persistence: a restart comes back empty.
    fn start_volatile() -> Redis {
        Redis::start_with(false)
    }

    fn start_with(persistent: bool) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        Redis {
            child: Redis::spawn(port, dir.path(), persistent),
            port,
            dir,
            persistent,
            pg: crate::pg::Postgres::start(),
        }
    }

    /// Starts `redis-server` on `port` and waits until it accepts.
    fn spawn(port: u16, dir: &std::path::Path, persistent: bool) -> std::process::Child {
        let aof: &[&str] = if persistent {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(aof)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kills the server (`kill -9`, as a crash would) and starts it again
    /// on the same port after `down` (empty unless persistent).
    fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Redis::spawn(self.port, self.dir.path(), self.persistent);
    }

    /// Runs `redis-cli` against this server; its trimmed output.
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a node connected to this Redis.
    fn node(&self) -> ChildServer {
        self.node_with(&[])
    }

    /// Starts a node connected to this Redis and PostgreSQL, with more
    /// arguments. Every cluster node of the tests starts here.
    fn node_with(&self, args: &[&str]) -> ChildServer {
        let (url, pg) = (self.url(), self.pg.url());
        let mut all = vec!["--redis-url", url.as_str(), "--postgres-url", pg.as_str()];
        all.extend_from_slice(args);
        ChildServer::start(&all)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Member ids in a node's presence for `room` (from the HTTP API).
async fn presence_ids(addr: SocketAddr, room: &str) -> BTreeSet<String> {
    let (status, body) = http_get(addr, &format!("/api/v1/rooms/{room}/presence")).await;
    if status != 200 {
        return BTreeSet::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for the ack of every request id in `rids` (within `within`).
async fn acks(c: &mut Client, rids: &[u64], within: Duration) {
    for &rid in rids {
        let reply = tokio::time::timeout(
            within,
            c.expect(|m| {
                matches!(m, ServerMessage::Ack { rid: r, .. } if *r == rid)
                    || matches!(m, ServerMessage::Error { rid: r, .. } if *r == Some(rid))
            }),
        )
        .await
        .expect("ack in time");
        assert!(
            matches!(reply, ServerMessage::Ack { .. }),
            "refused: {reply:?}"
        );
    }
}

/// The room as a new client of node `addr` gets it on joining.
async fn fresh_view(addr: SocketAddr, room: &str) -> String {
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join(room, &doc).await;
    doc.text()
}

/// Applies `update`s until `doc` holds `len` characters.
/// Applies `reader`'s updates to `rdoc` until its text satisfies `done`
/// (at most [`WAIT`]).
async fn apply_updates_until(
    reader: &mut Client,
    rdoc: &TestDoc,
    what: &str,
    done: impl Fn(&str) -> bool,
) {
    tokio::time::timeout(WAIT, async {
        while !done(&rdoc.text()) {
            let m = reader
                .expect(|m| matches!(m, ServerMessage::Update { .. }))
                .await;
            if let ServerMessage::Update { data, .. } = m {
                rdoc.apply(&data.0);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out: {what}"));
}

async fn read_until_len(c: &mut Client, room: &str, doc: &TestDoc, len: u32) {
    while doc.len() < len {
        let m = c
            .expect(|m| matches!(m, ServerMessage::Update { room: r, .. } if r == room))
            .await;
        if let ServerMessage::Update { data, .. } = m {
            doc.apply(&data.0);
        }
    }
}

/// Reads `c`'s presence until a message carries `total`.
async fn until_total(c: &mut Client, room: &str, total: u64) {
    c.expect(|m| {
        matches!(m, ServerMessage::Presence { room: r, total: Some(t), partial: true, .. } if r == room && *t == total)
    })
    .await;
}

/// Every member id of `room` on `c`'s node, page by page (`limit` each).
async fn paged_ids(c: &mut Client, room: &str, limit: u64) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let rid = c.rid();
        c.send(&ClientMessage::PresenceList {
            room: room.into(),
            after: after.take(),
            limit: Some(limit),
            rid: Some(rid),
        })
        .await;
        let page = c
            .expect(|m| matches!(m, ServerMessage::PresencePage { rid: r, .. } if *r == Some(rid)))
            .await;
        let ServerMessage::PresencePage { members, next, .. } = page else {
            unreachable!()
        };
        assert!(members.len() as u64 <= limit);
        ids.extend(members.into_iter().map(|m| m.id));
        match next {
            Some(n) => after = Some(n),
            None => return ids,
        }
    }
}

/// A room above the list bound, its members on two nodes: members of
/// either node see the whole room's total, and page every member, those
/// of the other node included, exactly once; the node's REST presence
/// pages are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_rooms_total_and_pages_span_the_nodes() {
    let redis = Redis::start();
    let args = ["--presence-list-max-members", "2"];
    let nodes = [redis.node_with(&args), redis.node_with(&args)];
    let room = "big-cluster-room";
    let mut members = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect(nodes[i % 2].addr).await;
        c.join_with(
            room,
            &TestDoc::new(),
            Some(serde_json::json!({ "name": format!("m{i}") })),
        )
        .await;
        members.push(c);
    }
    let all: BTreeSet<String> = members.iter().map(|c| c.session.clone()).collect();
    for i in [0, 1] {
        until_total(&mut members[i], room, 6).await;
        let ids = paged_ids(&mut members[i], room, 2).await;
        let unique: BTreeSet<String> = ids.iter().cloned().collect();
        assert_eq!(unique.len(), ids.len(), "a member twice: {ids:?}");
        assert_eq!(unique, all, "node {i}'s pages");
        // REST reads the same pages of the same node's view.
        let pages = rest_presence_pages(nodes[i].addr, room, Some(2)).await;
        assert_eq!(page_member_ids(&pages), ids, "node {i}'s REST pages");
        assert!(pages.iter().all(|p| p["total"] == 6), "{pages:?}");
    }
    // A member of the second node leaves: the first node's total follows.
    let gone = members.remove(5);
    drop(gone);
    until_total(&mut members[0], room, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_room_converge_presence_typing_events() {
    let redis = Redis::start();
    let nodes: Vec<ChildServer> = (0..3).map(|_| redis.node()).collect();
    let room = "cluster-room";
    let mut clients = Vec::new();
    let mut docs = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut c = Client::connect(node.addr).await;
        let doc = TestDoc::new();
        c.join_with(
            room,
            &doc,
            Some(serde_json::json!({ "name": format!("n{i}") })),
        )
        .await;
        clients.push(c);
        docs.push(doc);
    }

    // Presence: every node sees the same three members.
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    eventually("identical presence of 3 members on every node", || {
        let addrs = addrs.clone();
        async move {
            let mut views = Vec::new();
            for a in addrs {
                views.push(presence_ids(a, room).await);
            }
            views[0].len() == 3 && views.iter().all(|v| *v == views[0])
        }
    })
    .await;

    // Concurrent edits on every node; each one acked by its own node.
    const EDITS: u32 = 5;
    for round in 0..EDITS {
        for (i, c) in clients.iter_mut().enumerate() {
            let update = docs[i].push(&format!("{i}{round}"));
            c.update_acked(room, update).await;
        }
    }
    let total = 2 * EDITS * 3;
    for (c, doc) in clients.iter_mut().zip(&docs) {
        read_until_len(c, room, doc, total).await;
    }
    assert!(docs.iter().all(|d| d.text() == docs[0].text()));
    for i in 0..3 {
        for round in 0..EDITS {
            assert!(docs[0].text().contains(&format!("{i}{round}")));
        }
    }

    // Typing crosses nodes.
    clients[0]
        .send(&ClientMessage::Typing {
            room: room.into(),
            on: true,
            rid: None,
        })
        .await;
    for c in &mut clients[1..] {
        c.expect(|m| matches!(m, ServerMessage::Typing { on: true, .. }))
            .await;
    }

    // Events cross nodes.
    clients[1]
        .send(&ClientMessage::Event {
            room: room.into(),
            name: "ping".into(),
            data: serde_json::json!({ "from": 1 }),
            rid: None,
        })
        .await;
    for i in [0, 2] {
        clients[i]
            .expect(|m| matches!(m, ServerMessage::Event { name, .. } if name == "ping"))
            .await;
    }

    // A member leaving one node leaves every node's presence.
    let leaver = clients.remove(2);
    leaver.close().await;
    eventually("2 members left on every node", || {
        let addrs = addrs.clone();
        async move {
            let mut views = Vec::new();
            for a in addrs {
                views.push(presence_ids(a, room).await);
            }
            views[0].len() == 2 && views.iter().all(|v| *v == views[0])
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_started_after_edits_catches_up() {
    let redis = Redis::start();
    let first = redis.node();
    let room = "late-room";
    let mut writer = Client::connect(first.addr).await;
    let wdoc = TestDoc::new();
    writer.join(room, &wdoc).await;
    for word in ["hello ", "from ", "node one"] {
        let update = wdoc.push(word);
        writer.update_acked(room, update).await;
    }

    let late = redis.node();
    let mut reader = Client::connect(late.addr).await;
    let rdoc = TestDoc::new();
    reader.join(room, &rdoc).await;
    // Everything acked is in the `synced` diff itself: the late node loaded
    // the room's log from Redis before answering the join.
    assert_eq!(rdoc.text(), "hello from node one");
    // And its edits reach the first node.
    let update = rdoc.push("!");
    reader.update_acked(room, update).await;
    writer.sync_until(room, &wdoc, "hello from node one!").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_metrics_report_cluster_state() {
    let redis = Redis::start();
    let node = redis.node();
    eventually("cluster connected", || async {
        let (_, body) = http_get(node.addr, "/readyz").await;
        body.contains("\"redis\":\"ok\"")
    })
    .await;
    let (_, metrics) = http_get(node.addr, "/metrics").await;
    assert!(metrics.contains("chorus_cluster_connected 1"), "{metrics}");
    // Every name a single node has (but the error counter, which has no
    // sample before an error), and the cluster's.
    let mut names = crate::common::METRIC_NAMES.to_vec();
    names.retain(|n| *n != "chorus_errors_total");
    names.extend(crate::common::CLUSTER_METRIC_NAMES);
    let missing = crate::common::missing_metrics(&metrics, &names);
    assert!(missing.is_empty(), "missing {missing:?} in:\n{metrics}");
}

/// The node id a node reports in `/readyz` (`"cluster": {"node": …}`).
async fn node_id(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("readyz json");
    v["cluster"]["node"]
        .as_str()
        .unwrap_or_else(|| panic!("no cluster.node in {body}"))
        .to_owned()
}

/// The node serving a client, from the server's own answer: the `session`
/// of its `welcome` is `{node}-{n}`.
fn node_of_client(c: &Client) -> String {
    chorus::cluster::node_of(&c.session)
        .unwrap_or_else(|| panic!("session {} has no node prefix", c.session))
        .to_owned()
}

/// Waits until every node's presence for `room` is the same set of `n` ids.
async fn same_presence(addrs: &[SocketAddr], room: &str, n: usize) {
    eventually(&format!("identical presence of {n} members"), || {
        let addrs = addrs.to_vec();
        async move {
            let mut views = Vec::new();
            for a in addrs {
                views.push(presence_ids(a, room).await);
            }
            views[0].len() == n && views.iter().all(|v| *v == views[0])
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_members_vanish_and_clients_move_over() {
    let redis = Redis::start();
    let survivor = redis.node();
    let doomed = redis.node();
    let room = "kill-room";
    let mut a = Client::connect(survivor.addr).await;
    let adoc = TestDoc::new();
    a.join(room, &adoc).await;
    let mut b = Client::connect(doomed.addr).await;
    let bdoc = TestDoc::new();
    b.join(room, &bdoc).await;
    same_presence(&[survivor.addr, doomed.addr], room, 2).await;
    // Mid-edit: b has a stream of updates in flight when its node dies.
    let mut sent = Vec::new();
    let mut doomed = Some(doomed);
    for i in 0..40 {
        let word = format!("b{i} ");
        let rid = b.rid();
        let msg = ClientMessage::Update {
            room: room.into(),
            data: Bin(bdoc.push(&word)),
            rid: Some(rid),
        };
        sent.push((rid, word));
        if b.try_send(&msg).await.is_err() {
            break;
        }
        if i == 20 {
            doomed.take().expect("killed once").kill();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = std::time::Instant::now();
    // The acks that reached b before its connection died.
    let mut acked = Vec::new();
    while let Some(m) = b.try_recv(Duration::from_secs(2)).await {
        if let ServerMessage::Ack { rid, .. } = m {
            if let Some((_, word)) = sent.iter().find(|(r, _)| *r == rid) {
                acked.push(word.clone());
            }
        }
    }
    assert!(!acked.is_empty(), "no update was acked before the kill");
    // Documented bound: NODE_TTL + HEARTBEAT = 8 s (issue: at most 10 s).
    let deadline = killed_at + Duration::from_secs(10);
    loop {
        if presence_ids(survivor.addr, room).await.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "members of the killed node still present after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every update the dead node acked reached the survivor.
    tokio::time::timeout(WAIT, async {
        while !acked.iter().all(|w| adoc.text().contains(w.as_str())) {
            let m = a
                .expect(|m| matches!(m, ServerMessage::Update { room: r, .. } if r == room))
                .await;
            if let ServerMessage::Update { data, .. } = m {
                adoc.apply(&data.0);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("acked updates missing on the survivor: {}", adoc.text()));
    // The client reconnects to the survivor; its join sends what the
    // survivor lacks (the unacked rest), and it gets what it lacks.
    drop(b);
    let mut b = Client::connect(survivor.addr).await;
    b.join(room, &bdoc).await;
    let update = adoc.push("a1 ");
    a.update_acked(room, update).await;
    let want_len = bdoc.len() + 3;
    read_until_len(&mut b, room, &bdoc, want_len).await;
    read_until_len(&mut a, room, &adoc, want_len).await;
    assert_eq!(adoc.text(), bdoc.text());
    for (_, word) in &sent {
        assert!(adoc.text().contains(word.as_str()), "{word} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_then_nodes_converge() {
    let mut redis = Redis::start();
    let nodes = [redis.node(), redis.node()];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let room = "outage-room";
    let mut clients = Vec::new();
    let mut docs = Vec::new();
    // Two clients on node 0, one on node 1.
    for addr in [addrs[0], addrs[0], addrs[1]] {
        let mut c = Client::connect(addr).await;
        let doc = TestDoc::new();
        c.join(room, &doc).await;
        clients.push(c);
        docs.push(doc);
    }
    same_presence(&addrs, room, 3).await;
    let update = docs[0].push("before ");
    clients[0].update_acked(room, update).await;
    for i in [1, 2] {
        read_until_len(&mut clients[i], room, &docs[i], 7).await;
    }

    // Redis is killed for 5 s mid-edit.
    let outage_start = std::time::Instant::now();
    let outage = std::thread::spawn(move || {
        redis.restart_after(Duration::from_secs(5));
        redis
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut words: Vec<(usize, u64, String)> = Vec::new();
    for round in 0..3 {
        for i in [0, 2] {
            let word = format!("n{i}r{round} ");
            let rid = clients[i].send_update(room, docs[i].push(&word)).await;
            words.push((i, rid, word));
        }
    }
    // Every one is acked while Redis is down: an ack means "committed to
    // PostgreSQL", which Redis has no part in.
    for i in [0, 2] {
        let rids: Vec<u64> = words.iter().filter(|w| w.0 == i).map(|w| w.1).collect();
        acks(&mut clients[i], &rids, Duration::from_secs(3)).await;
    }
    assert!(
        outage_start.elapsed() < Duration::from_millis(4500),
        "the acks came after Redis was back ({:?})",
        outage_start.elapsed()
    );
    // The nodes say they are degraded (still ready: local clients are
    // served)…
    eventually("node reports Redis degraded", || async {
        let (status, body) = http_get(addrs[1], "/readyz").await;
        status == 200 && body.contains("\"redis\":\"degraded\"")
    })
    .await;
    // …and node 0 keeps serving its local clients: client 1 sees client
    // 0's edits although Redis is down.
    tokio::time::timeout(
        Duration::from_secs(3),
        clients[1].sync_until(room, &docs[1], "before n0r0 n0r1 n0r2 "),
    )
    .await
    .expect("local fan-out during the outage");
    let redis = tokio::task::spawn_blocking(move || outage.join().expect("outage thread"))
        .await
        .expect("joined");

    // Every client ends with every acked update.
    let total = docs[0].len() + 3 * "n2rX ".len() as u32;
    for (c, doc) in clients.iter_mut().zip(&docs) {
        tokio::time::timeout(Duration::from_secs(20), read_until_len(c, room, doc, total))
            .await
            .expect("converged after the outage");
    }
    for doc in &docs {
        assert_eq!(doc.text(), docs[0].text());
        for (_, _, word) in &words {
            assert!(doc.text().contains(word.as_str()), "{word} missing");
        }
    }
    same_presence(&addrs, room, 3).await;
    eventually("nodes report Redis ok again", || async {
        let (_, body) = http_get(addrs[0], "/readyz").await;
        body.contains("\"redis\":\"ok\"")
    })
    .await;
    // And the store holds them: a new node serves all of it.
    let late = redis.node();
    assert_eq!(fresh_view(late.addr, room).await, docs[0].text());
}

/// Appends `update` to `room`'s log in PostgreSQL the way the store does,
/// but without publishing it: an entry whose channel message every node
/// missed.
fn append_unpublished(redis: &Redis, room: &str, update: &[u8]) -> u64 {
    let hex: String = update.iter().map(|b| format!("{b:02x}")).collect();
    let seq = redis.pg.psql(&format!(
        "WITH r AS (INSERT INTO chorus_rooms AS r (room, last_seq) VALUES ('{room}', 1) \
         ON CONFLICT (room) DO UPDATE SET last_seq = r.last_seq + 1 RETURNING last_seq) \
         INSERT INTO chorus_updates (room, seq, data) SELECT '{room}', last_seq, '\\x{hex}'::bytea FROM r \
         RETURNING seq"
    ));
    seq.parse().expect("a seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_channel_messages_are_read_back_from_the_log() {
    let redis = Redis::start();
    let nodes = [redis.node(), redis.node()];
    let room = "gap-room";
    let mut writer = Client::connect(nodes[0].addr).await;
    let wdoc = TestDoc::new();
    writer.join(room, &wdoc).await;
    let mut reader = Client::connect(nodes[1].addr).await;
    let rdoc = TestDoc::new();
    reader.join(room, &rdoc).await;
    same_presence(&[nodes[0].addr, nodes[1].addr], room, 2).await;
    writer.update_acked(room, wdoc.push("a ")).await;
    reader.sync_until(room, &rdoc, "a ").await;

    // A gap: entry n is in the log, but its message on the channel was
    // lost. The reader's node learns of it only when entry n + 1 arrives
    // (and the hole stays open past --cluster-gap-wait-ms).
    let reader_node = nodes[1].addr;
    let gaps = crate::common::metric(reader_node, "chorus_cluster_gaps_total").await;
    let recoveries = crate::common::metric(reader_node, "chorus_cluster_recoveries_total").await;
    let lost = TestDoc::new();
    append_unpublished(&redis, room, &lost.push("lost "));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !rdoc.text().contains("lost")
            && reader
                .maybe(Duration::from_millis(200), |m| matches!(
                    m,
                    ServerMessage::Update { .. }
                ))
                .await
                .is_none(),
        "the unpublished entry reached the reader before any gap"
    );
    // The next entry is published: the reader's node sees the hole,
    // counts it, reads the log back and serves what it missed.
    writer.update_acked(room, wdoc.push("b ")).await;
    apply_updates_until(&mut reader, &rdoc, "the reader gets the lost entry", |t| {
        t.contains("lost") && t.contains("b ")
    })
    .await;
    assert!(
        crate::common::metric(reader_node, "chorus_cluster_gaps_total").await > gaps,
        "no gap counted"
    );
    assert!(
        crate::common::metric(reader_node, "chorus_cluster_recoveries_total").await > recoveries,
        "no recovery counted"
    );

    // Redis drops every subscriber connection a few times while the writer
    // writes: what was published meanwhile is read back after resubscribing.
    for i in 0..30 {
        let update = wdoc.push(&format!("{i:02} "));
        writer.update_acked(room, update).await;
        if i % 10 == 5 {
            // Both nodes subscribed again (after the previous kill)…
            eventually("both nodes subscribed", || {
                let list = redis.cli(&["CLIENT", "LIST"]);
                async move { list.matches("flags=P").count() == 2 }
            })
            .await;
            // …and cut off.
            assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "2");
        }
    }
    wdoc.apply(&lost.diff(&wdoc.state_vector()));
    writer.update_acked(room, wdoc.push("end")).await;
    let want = wdoc.text();
    apply_updates_until(&mut reader, &rdoc, "reader converges", |t| t == want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_resets_it_on_every_node() {
    let redis = Redis::start();
    let nodes = [redis.node(), redis.node()];
    let room = "doomed-room";
    let mut clients = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(node.addr).await;
        let doc = TestDoc::new();
        c.join(room, &doc).await;
        clients.push((c, doc));
    }
    let (c, doc) = &mut clients[0];
    let update = doc.push("to be deleted");
    c.update_acked(room, update).await;
    let (c, doc) = &mut clients[1];
    c.sync_until(room, doc, "to be deleted").await;
    let (status, body) =
        http_bodiless(nodes[0].addr, "DELETE", &format!("/api/v1/rooms/{room}")).await;
    assert_eq!(status, 200, "{body}");
    // Members on both nodes are closed, and the room is empty everywhere.
    for (c, _) in &mut clients {
        assert_eq!(c.closed().await, Some(1001));
    }
    for node in &nodes {
        assert_eq!(fresh_view(node.addr, room).await, "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_calls_reach_members_on_every_node() {
    let redis = Redis::start();
    let nodes: Vec<ChildServer> = (0..3).map(|_| redis.node()).collect();
    let room = "backend-room";
    // Members on nodes 1 and 2; node 0 (where the backend's calls land
    // first, as behind a load balancer) does not have the room open.
    let mut clients = Vec::new();
    for node in &nodes[1..] {
        let mut c = Client::connect(node.addr).await;
        let doc = TestDoc::new();
        c.join(room, &doc).await;
        clients.push((c, doc));
    }
    // Both rooms subscribed to the channel (each sees the other's member).
    same_presence(&[nodes[1].addr, nodes[2].addr], room, 2).await;
    let is_deploy = |n: &'static str| {
        move |m: &ServerMessage| {
            matches!(m, ServerMessage::Event { from, name, data, .. }
                if from == "server" && name == "deploy" && data["n"] == n)
        }
    };

    // An event triggered on a node without the room reaches both.
    let body = br#"{"name":"deploy","data":{"n":"first"}}"#;
    let path = format!("/api/v1/rooms/{room}/events");
    let r = request(nodes[0].addr, "POST", &path, &[], body).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["delivered"][0], room);
    for (c, _) in &mut clients {
        c.expect(is_deploy("first")).await;
    }

    // An event triggered on a node with the room reaches the other node's
    // member as well as its own.
    let body = br#"{"name":"deploy","data":{"n":"second"}}"#;
    let r = request(nodes[1].addr, "POST", &path, &[], body).await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    for (c, _) in &mut clients {
        c.expect(is_deploy("second")).await;
    }

    // An update posted to node 0 reaches both, and node 0 serves it.
    let author = TestDoc::new();
    let update = author.push("from the backend");
    let path = format!("/api/v1/rooms/{room}/update");
    let r = request(nodes[0].addr, "POST", &path, &[], &update).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    for (c, doc) in &mut clients {
        c.sync_until(room, doc, "from the backend").await;
    }
    let (status, body) = http_get(nodes[0].addr, &format!("/api/v1/rooms/{room}/doc")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from the backend"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_serves_a_room_whose_nodes_all_died() {
    let redis = Redis::start();
    let args = ["--compact-every", "3"];
    let first = redis.node_with(&args);
    let room = "stored-room";
    let mut writer = Client::connect(first.addr).await;
    let wdoc = TestDoc::new();
    writer.join(room, &wdoc).await;
    // Seven appends, compacting every three (one node at a time, under the
    // lock): a snapshot and a log tail after it.
    for i in 0..7 {
        let update = wdoc.push(&format!("w{i} "));
        writer.update_acked(room, update).await;
    }
    // Compaction runs after the acks, in the background: wait until a
    // snapshot is stored before the kill. The first one (entries 1..=3)
    // always starts; a second one starts only if the first was done by the
    // sixth or seventh append, so it is not waited for.
    let upto = || {
        redis
            .pg
            .psql("SELECT upto FROM chorus_snapshots WHERE room = 'stored-room'")
            .parse::<u64>()
            .unwrap_or(0)
    };
    eventually("a compaction is stored", || {
        let upto = upto();
        async move { upto >= 3 }
    })
    .await;
    first.kill();
    // Compacted: a snapshot exists and the log holds only its tail.
    let tail: u64 = redis
        .pg
        .psql("SELECT count(*) FROM chorus_updates WHERE room = 'stored-room'")
        .parse()
        .expect("a count");
    assert!(
        tail < 7 && tail + upto() == 7,
        "log not trimmed: {tail} entries"
    );

    let second = redis.node_with(&args);
    let mut reader = Client::connect(second.addr).await;
    let rdoc = TestDoc::new();
    reader.try_join(room, &rdoc).await.expect("joined");
    // Everything acked is in the `synced` diff itself: loaded from the store.
    assert_eq!(rdoc.text(), wdoc.text());
    assert_eq!(rdoc.text(), "w0 w1 w2 w3 w4 w5 w6 ");
}

/// nginx running `tests/cluster/nginx.conf` on a free port in front of `nodes`;
/// installed with apt-get when missing. Killed on drop.
pub(crate) struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(nodes: &[SocketAddr]) -> Nginx {
        if std::process::Command::new("nginx")
            .arg("-v")
            .output()
            .is_err()
        {
            let status = std::process::Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "nginx-light"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .expect("apt-get runs");
            assert!(status.success(), "installing nginx failed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let sample = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/cluster/nginx.conf"
        ))
        .expect("tests/cluster/nginx.conf");
        let mut conf = String::new();
        let mut placed = false;
        for line in sample.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("server 127.0.0.1:") {
                if !std::mem::replace(&mut placed, true) {
                    // The sample's parameters (`max_fails=0`, …) kept.
                    let params = rest.split_once(' ').map_or(";", |(_, p)| p);
                    let servers: String = nodes
                        .iter()
                        .map(|a| format!("server {a} {params}\n"))
                        .collect();
                    conf.push_str(&servers);
                }
            } else if t == "listen 127.0.0.1:8080;" {
                conf.push_str(&format!("listen 127.0.0.1:{port};\n"));
            } else {
                conf.push_str(line);
                conf.push('\n');
            }
        }
        assert!(placed, "sample config has no upstream servers");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("config written");
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            // Its error log (one line per refused upstream connect) stays
            // out of the test output.
            .stderr(std::fs::File::create(dir.path().join("error.log")).expect("log file"))
            .spawn()
            .expect("nginx starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too (SIGKILL would
        // orphan them).
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_round_robins_and_survives_a_node() {
    let redis = Redis::start();
    let mut nodes: Vec<ChildServer> = (0..3).map(|_| redis.node()).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut ids = Vec::new();
    for a in &addrs {
        ids.push(node_id(*a).await);
    }
    let lb = Nginx::start(&addrs);
    let room = "lb-room";
    let docs: Vec<TestDoc> = (0..3).map(|_| TestDoc::new()).collect();
    let mut clients = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let mut c = Client::connect(lb.addr).await;
        c.join(room, doc).await;
        let update = doc.push(&format!("c{i} "));
        c.update_acked(room, update).await;
        clients.push(c);
    }
    // Round-robin: three connections, one on each node (each node says
    // which it is in the `welcome`).
    let placed: BTreeSet<String> = clients.iter().map(node_of_client).collect();
    assert_eq!(
        placed,
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        "clients not spread over the nodes"
    );
    // Every node sees the three clients, wherever round-robin put them.
    same_presence(&addrs, room, 3).await;
    for (c, doc) in clients.iter_mut().zip(&docs) {
        read_until_len(c, room, doc, 9).await;
    }

    nodes.remove(0).kill();
    // Every client reconnects through nginx (the ones on the dead node
    // must; the others may): the join exchanges what either side lacks.
    drop(clients);
    let mut clients = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let mut c = Client::connect(lb.addr).await;
        c.join(room, doc).await;
        let update = doc.push(&format!("d{i} "));
        c.update_acked(room, update).await;
        clients.push(c);
    }
    // Nobody lands on the dead node, and both live ones take clients.
    let placed: BTreeSet<String> = clients.iter().map(node_of_client).collect();
    assert_eq!(
        placed,
        ids[1..].iter().cloned().collect::<BTreeSet<_>>(),
        "clients after the kill"
    );
    for (c, doc) in clients.iter_mut().zip(&docs) {
        read_until_len(c, room, doc, 18).await;
    }
    assert!(docs.iter().all(|d| d.text() == docs[0].text()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_redis_over_tls() {
    // A CA-less self-signed certificate for `localhost`, trusted by the
    // nodes through SSL_CERT_FILE (read by the native root store).
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("cert written");
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).expect("key written");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut child = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--tls-cert-file", cert_pem.to_str().expect("utf-8 path")])
        .args(["--tls-key-file", key_pem.to_str().expect("utf-8 path")])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let url = format!("rediss://localhost:{port}");
    let env = [("SSL_CERT_FILE", cert_pem.to_str().expect("utf-8 path"))];
    let pg = crate::pg::Postgres::start();
    let pg_url = pg.url();
    let args = ["--redis-url", &url, "--postgres-url", &pg_url];
    let nodes = [
        ChildServer::start_with_env(&args, &env),
        ChildServer::start_with_env(&args, &env),
    ];
    eventually("both nodes connected over TLS", || {
        let addrs = [nodes[0].addr, nodes[1].addr];
        async move {
            let mut ok = true;
            for a in addrs {
                ok &= http_get(a, "/readyz").await.1.contains("\"redis\":\"ok\"");
            }
            ok
        }
    })
    .await;
    let room = "tls-room";
    let mut a = Client::connect(nodes[0].addr).await;
    let adoc = TestDoc::new();
    a.join(room, &adoc).await;
    let mut b = Client::connect(nodes[1].addr).await;
    let bdoc = TestDoc::new();
    b.join(room, &bdoc).await;
    a.update_acked(room, adoc.push("encrypted")).await;
    b.sync_until(room, &bdoc, "encrypted").await;
    // Without the certificate trusted, the same URL is refused.
    let untrusting = ChildServer::start(&args);
    eventually("the certificate is refused", || {
        let refused = untrusting
            .logs()
            .iter()
            .any(|l| l.contains("cannot reach Redis") && l.contains("certificate"));
        async move { refused }
    })
    .await;
    let (_, body) = http_get(untrusting.addr, "/readyz").await;
    assert!(body.contains("\"redis\":\"degraded\""), "{body}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_members_leave_the_others_at_once() {
    let redis = Redis::start();
    let (stays, stops) = (redis.node(), redis.node());
    let room = "drain-room";
    let doc = TestDoc::new();
    let mut a = Client::connect(stays.addr).await;
    a.join(room, &doc).await;
    let mut b = Client::connect(stops.addr).await;
    b.join(room, &TestDoc::new()).await;
    same_presence(&[stays.addr, stops.addr], room, 2).await;
    // A graceful stop (SIGTERM: a deploy) says goodbye for its members
    // instead of leaving them to the liveness timeout.
    let stopped_at = std::time::Instant::now();
    let logs = tokio::task::spawn_blocking(move || stops.terminate())
        .await
        .expect("stopped");
    loop {
        if presence_ids(stays.addr, room).await.len() == 1 {
            break;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(3),
            "members of a stopped node still present after 3 s (liveness timeout is 8 s); \
             its logs:\n{}",
            logs.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes words into `room` through a client of `addr` until `stop` is
/// set, each acked before the next; returns the acked words. A word whose
/// ack did not come (an error) is not counted: the writer resends it.
async fn write_until(
    addr: SocketAddr,
    room: String,
    tag: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join(&room, &doc).await;
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let word = format!("{tag}{i} ");
        let update = doc.push(&word);
        let rid = c.send_update(&room, update.clone()).await;
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            c.expect(|m| {
                matches!(m, ServerMessage::Ack { rid: r, .. } if *r == rid)
                    || matches!(m, ServerMessage::Error { rid: r, .. } if *r == Some(rid))
            }),
        )
        .await
        .expect("an answer within 30 s");
        if matches!(reply, ServerMessage::Ack { .. }) {
            acked.push(word);
            i += 1;
        } else {
            // Not stored: the document already holds it; resending the
            // same update is how a client retries.
            let _ = c.send_update(&room, update).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

/// Every word in `words` is in `room` as a new client of each of `addrs`
/// sees it (within [`WAIT`]).
async fn every_node_has(addrs: &[SocketAddr], room: &str, words: &[String]) {
    for &addr in addrs {
        let deadline = std::time::Instant::now() + WAIT;
        let missing = loop {
            let text = fresh_view(addr, room).await;
            let missing = words
                .iter()
                .filter(|w| !text.contains(w.as_str()))
                .cloned()
                .collect::<Vec<_>>();
            if missing.is_empty() || std::time::Instant::now() > deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            missing.is_empty(),
            "node {addr}: {} of {} acked words missing, e.g. {:?}",
            missing.len(),
            words.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushed_restarted_empty_or_rolled_back_loses_no_acked_update() {
    // Redis without AOF, as many managed plans run it: only an RDB that
    // `SAVE` writes, loaded again at restart (an older state).
    let mut redis = Redis::start_volatile();
    let nodes = [redis.node(), redis.node()];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let room = "rollback-room";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = [(addrs[0], "a"), (addrs[1], "b")]
        .into_iter()
        .map(|(addr, tag)| tokio::spawn(write_until(addr, room.to_owned(), tag, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 1. FLUSHALL mid-edit.
    assert_eq!(redis.cli(&["FLUSHALL"]), "OK");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 2. An RDB of this moment, then more edits, then Redis killed and
    //    restarted from that older RDB.
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut redis = tokio::task::spawn_blocking(move || {
        redis.restart_after(Duration::from_millis(300));
        redis
    })
    .await
    .expect("restarted from the RDB");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 3. Killed and restarted empty (the RDB removed first).
    std::fs::remove_file(redis.dir.path().join("dump.rdb")).expect("dump.rdb was written");
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart_after(Duration::from_millis(300));
        redis
    })
    .await
    .expect("restarted empty");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut words = Vec::new();
    for w in writers {
        words.extend(w.await.expect("writer"));
    }
    assert!(words.len() > 20, "only {} edits acked", words.len());
    let fresh = redis.node();
    every_node_has(&[addrs[0], addrs[1], fresh.addr], room, &words).await;
    // Redis holds no document.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(
        keys.lines()
            .all(|k| k.starts_with("chorus:node:") || k == "chorus:nodes"),
        "Redis holds more than liveness keys: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_edit_acks_pause_and_nothing_is_lost() {
    let redis = Redis::start();
    let nodes = [redis.node(), redis.node()];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let room = "pg-restart-room";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = [(addrs[0], "a"), (addrs[1], "b")]
        .into_iter()
        .map(|(addr, tag)| tokio::spawn(write_until(addr, room.to_owned(), tag, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.pg.stop_immediate();
    // While it is down: every node still ready (the outage is everyone's),
    // reporting the store degraded.
    for addr in addrs {
        eventually("readyz reports the store degraded", || async move {
            let (status, body) = http_get(addr, "/readyz").await;
            assert_eq!(status, 200, "readyz while PostgreSQL is down: {body}");
            body.contains("\"degraded\":true") && body.contains("\"state\":\"degraded\"")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.pg.start_again();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut words = Vec::new();
    for w in writers {
        words.extend(w.await.expect("writer"));
    }
    assert!(words.len() > 20, "only {} edits acked", words.len());
    let fresh = redis.node();
    every_node_has(&[addrs[0], addrs[1], fresh.addr], room, &words).await;
    for addr in addrs {
        let (status, body) = http_get(addr, "/readyz").await;
        assert!(
            status == 200 && body.contains("\"degraded\":false"),
            "{status} {body}"
        );
    }
}

/// Redis' `used_memory`, in bytes.
fn redis_used_memory(redis: &Redis) -> i64 {
    redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO memory")
}

/// Runs `f(i)` for `i` in `0..n`, `width` at a time.
async fn for_each_concurrently<F, Fut>(n: usize, width: usize, f: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .for_each_concurrent(width, f)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rooms_survive_restarts_and_cost_redis_nothing() {
    let n: usize = std::env::var("CHORUS_CLUSTER_ROOMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut redis = Redis::start();
    let args = [
        "--api-requests-per-sec",
        "0",
        "--api-key-requests-per-sec",
        "0",
        "--room-idle-ms",
        "1000",
    ];
    let nodes: Vec<ChildServer> = (0..3).map(|_| redis.node_with(&args)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let before = redis_used_memory(&redis);
    let peak = std::sync::atomic::AtomicI64::new(before);
    let started = std::time::Instant::now();
    for_each_concurrently(n, 32, |i| {
        let (addrs, peak, redis) = (&addrs, &peak, &redis);
        async move {
            let doc = TestDoc::new();
            let update = doc.push(&format!("room {i} text"));
            let path = format!("/api/v1/rooms/many-{i}/update");
            let r = request(addrs[i % 3], "POST", &path, &[], &update).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            if i % 500 == 0 {
                peak.fetch_max(
                    redis_used_memory(redis),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
    })
    .await;
    let written = started.elapsed();
    let after = redis_used_memory(&redis);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(after);
    eprintln!(
        "{n} rooms written in {written:?}; Redis used_memory {before} → peak {peak}, after {after} (+{} bytes)",
        peak - before
    );
    assert!(
        peak - before < 5 * 1024 * 1024,
        "Redis grew by {} bytes for {n} rooms",
        peak - before
    );
    // Every node and Redis restarted (Redis empty: it keeps nothing).
    drop(nodes);
    redis.restart_after(Duration::from_millis(100));
    let nodes: Vec<ChildServer> = (0..3).map(|_| redis.node_with(&args)).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let started = std::time::Instant::now();
    for_each_concurrently(n, 32, |i| {
        let addrs = &addrs;
        async move {
            let path = format!("/api/v1/rooms/many-{i}/doc");
            let r = request(addrs[(i + 1) % 3], "GET", &path, &[], b"").await;
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                r.status == 200 && body.contains(&format!("room {i} text")),
                "room many-{i}: {} {body}",
                r.status
            );
        }
    })
    .await;
    eprintln!(
        "{n} rooms read back after the restarts in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_mid_edit_loses_no_acked_update() {
    use crate::store::{verify, writer, Acked};
    let redis = Redis::start();
    let args = ["--compact-every", "200"];
    let nodes: Vec<ChildServer> = (0..3).map(|_| redis.node_with(&args)).collect();
    let acked: std::sync::Arc<std::sync::Mutex<Vec<Acked>>> = Default::default();
    // Three rooms, a writer for each on every node (8 updates in flight
    // each): every room is written through all three nodes at once.
    let mut writers = Vec::new();
    for r in 0..3 {
        for (n, node) in nodes.iter().enumerate() {
            writers.push(tokio::spawn(writer(
                node.addr,
                format!("kill-room-{r}"),
                format!("{r}.{n}"),
                acked.clone(),
            )));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 1_500 {
        assert!(std::time::Instant::now() < deadline, "writers too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut nodes = nodes.into_iter();
    let victim = nodes.next().expect("three nodes");
    victim.kill();
    // The survivors keep taking edits for a while.
    let at_kill = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < at_kill + 500 {
        assert!(std::time::Instant::now() < deadline, "survivors too slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rest: Vec<ChildServer> = nodes.collect();
    for node in rest {
        node.kill();
    }
    for w in writers {
        w.await.expect("writer ends cleanly when its node dies");
    }
    let snapshot = acked.lock().unwrap().clone();
    let fresh = redis.node_with(&args);
    verify(fresh.addr, &snapshot).await;
    eprintln!(
        "{} acked updates, all on a fresh node after kill -9",
        snapshot.len()
    );
}

/// Version history in cluster mode: the same list from every node, no
/// duplicate automatic versions although every node holding the room runs
/// the idle timer, `versions_changed` on every node, and a restore made on
/// one node reaches the members of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_history_is_the_same_from_every_node() {
    let redis = Redis::start();
    let nodes: Vec<ChildServer> = (0..3)
        .map(|_| redis.node_with(&["--version-idle-ms", "300"]))
        .collect();
    let room = "cluster-history";
    let mut clients = Vec::new();
    let mut docs = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(node.addr).await;
        let doc = TestDoc::new();
        c.join(room, &doc).await;
        clients.push(c);
        docs.push(doc);
    }
    clients[0].update_acked(room, docs[0].push("alpha ")).await;
    clients[1].update_acked(room, docs[1].push("beta ")).await;
    clients[2].update_acked(room, docs[2].push("gamma ")).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let lists = |addrs: Vec<SocketAddr>| async move {
        let mut out = Vec::new();
        for a in addrs {
            let r = request(
                a,
                "GET",
                &format!("/api/v1/rooms/{room}/versions"),
                &[],
                b"",
            )
            .await;
            out.push(r.json()["versions"].clone());
        }
        out
    };
    eventually("an automatic version, the same list on every node", || {
        let addrs = addrs.clone();
        async move {
            let l = lists(addrs).await;
            l[0].as_array().is_some_and(|v| !v.is_empty()) && l.iter().all(|x| *x == l[0])
        }
    })
    .await;
    // Let every node's idle timer fire, then compare again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let l = lists(addrs.clone()).await;
    assert!(l.iter().all(|x| *x == l[0]), "{l:?}");
    let versions = l[0].as_array().unwrap().clone();
    // No two versions hold the same document: no duplicates.
    let mut texts = Vec::new();
    for v in &versions {
        let id = v["id"].as_str().unwrap();
        let r = request(
            addrs[0],
            "GET",
            &format!("/api/v1/rooms/{room}/versions/{id}/doc"),
            &[],
            b"",
        )
        .await;
        texts.push(r.json()["doc"]["t"].as_str().unwrap_or("").to_owned());
    }
    for pair in texts.windows(2) {
        assert_ne!(pair[0], pair[1], "duplicate versions: {versions:?}");
    }
    let full = texts[0].clone();
    for word in ["alpha", "beta", "gamma"] {
        assert!(full.contains(word), "{full:?}");
    }
    // A named version made on node 1 is listed on every node, and every
    // node's member hears `versions_changed`.
    let rid = clients[1].rid();
    clients[1]
        .send(&ClientMessage::VersionCreate {
            room: room.into(),
            name: "checkpoint".into(),
            rid: Some(rid),
        })
        .await;
    let named = match clients[1]
        .expect(|m| matches!(m, ServerMessage::Version { rid: r, .. } if *r == Some(rid)))
        .await
    {
        ServerMessage::Version { version, .. } => version,
        _ => unreachable!(),
    };
    for c in clients.iter_mut() {
        c.expect(|m| matches!(m, ServerMessage::VersionsChanged { room: r } if r == room))
            .await;
    }
    let l = lists(addrs.clone()).await;
    for x in &l {
        assert_eq!(x[0]["id"], named.id.as_str(), "{l:?}");
    }
    // Edit on node 0, restore the checkpoint on node 2: every member, on
    // every node, converges to it.
    clients[0].update_acked(room, docs[0].push("delta")).await;
    let rid = clients[2].rid();
    clients[2]
        .send(&ClientMessage::VersionRestore {
            room: room.into(),
            id: named.id.clone(),
            rid: Some(rid),
        })
        .await;
    let restored = clients[2].expect(|m| rid_matches(m, rid)).await;
    assert!(
        matches!(&restored, ServerMessage::Version { version, .. } if version.kind == "restore"),
        "{restored:?}"
    );
    for (c, doc) in clients.iter_mut().zip(&docs) {
        while doc.text() != full {
            let m = c
                .expect(|m| matches!(m, ServerMessage::Update { room: r, .. } if r == room))
                .await;
            if let ServerMessage::Update { data, .. } = m {
                doc.apply(&data.0);
            }
        }
    }
    for a in &addrs {
        let r = request(*a, "GET", &format!("/api/v1/rooms/{room}/doc"), &[], b"").await;
        assert_eq!(r.json()["doc"]["t"], full.as_str());
    }
}

fn rid_matches(m: &ServerMessage, rid: u64) -> bool {
    matches!(m, ServerMessage::Version { rid: r, .. } | ServerMessage::Error { rid: r, .. } if *r == Some(rid))
}
