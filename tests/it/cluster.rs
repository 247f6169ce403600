//! Cluster mode: a real `redis-server` on a free port and real nodes as
//! child processes, each with `--redis-url`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use chorus::protocol::native::{ClientMessage, ServerMessage};

use crate::common::{eventually, http_get, ChildServer, Client, TestDoc, WAIT};

/// A `redis-server` child on a free port, killed on drop.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Redis {
            child: Redis::spawn(port),
            port,
        }
    }

    /// Starts `redis-server` on `port` and waits until it accepts.
    fn spawn(port: u16) -> std::process::Child {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
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

    /// Kills the server (as an outage would) and starts it again, empty,
    /// on the same port after `down`.
    fn restart_after(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = Redis::spawn(self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts a node connected to this Redis, with the memory store.
    fn node(&self) -> ChildServer {
        self.node_with(&["--store", "memory"])
    }

    /// Starts a node connected to this Redis, with more arguments.
    fn node_with(&self, args: &[&str]) -> ChildServer {
        let url = self.url();
        let mut all = vec!["--redis-url", url.as_str()];
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

/// Applies `update`s until `doc` holds `len` characters.
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
    // Served from a live node through Hello/State (no Redis log yet).
    tokio::time::timeout(WAIT, reader.sync_until(room, &rdoc, "hello from node one"))
        .await
        .expect("late node catches up");
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
    for word in ["b1 ", "b2 "] {
        let update = bdoc.push(word);
        b.update_acked(room, update).await;
    }
    doomed.kill();
    let killed_at = std::time::Instant::now();
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
    // The client reconnects to the survivor; its join sends what the
    // survivor lacks, and it gets what it lacks: both converge.
    drop(b);
    let mut b = Client::connect(survivor.addr).await;
    b.join(room, &bdoc).await;
    let update = adoc.push("a1 ");
    a.update_acked(room, update).await;
    let want_len = bdoc.len() + 3;
    read_until_len(&mut b, room, &bdoc, want_len).await;
    read_until_len(&mut a, room, &adoc, want_len).await;
    assert_eq!(adoc.text(), bdoc.text());
    assert!(adoc.text().contains("b1 b2 "), "{}", adoc.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_then_nodes_converge() {
    let mut redis = Redis::start();
    let nodes = [redis.node(), redis.node()];
    let addrs = [nodes[0].addr, nodes[1].addr];
    let room = "outage-room";
    let mut clients = Vec::new();
    let mut docs = Vec::new();
    for node in &nodes {
        let mut c = Client::connect(node.addr).await;
        let doc = TestDoc::new();
        c.join(room, &doc).await;
        clients.push(c);
        docs.push(doc);
    }
    same_presence(&addrs, room, 2).await;
    let update = docs[0].push("before ");
    clients[0].update_acked(room, update).await;
    read_until_len(&mut clients[1], room, &docs[1], 7).await;

    // Redis goes away for 5 s; both nodes keep acking their own clients.
    let outage = std::thread::spawn(move || {
        redis.restart_after(Duration::from_secs(5));
        redis
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let update = docs[0].push("zero ");
    clients[0].update_acked(room, update).await;
    let update = docs[1].push("one ");
    clients[1].update_acked(room, update).await;
    let _redis = tokio::task::spawn_blocking(move || outage.join().expect("outage thread"))
        .await
        .expect("joined");

    // Reconnection + Hello/State bring both nodes (and clients) together.
    let total = docs[0].len() + 4;
    for (c, doc) in clients.iter_mut().zip(&docs) {
        tokio::time::timeout(Duration::from_secs(20), read_until_len(c, room, doc, total))
            .await
            .expect("converged after the outage");
    }
    assert_eq!(docs[0].text(), docs[1].text());
    same_presence(&addrs, room, 2).await;
    eventually("nodes report Redis ok again", || async {
        let (_, body) = http_get(addrs[0], "/readyz").await;
        body.contains("\"redis\":\"ok\"")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_serves_a_room_whose_nodes_all_died() {
    let redis = Redis::start();
    let args = ["--store", "redis", "--compact-every", "3"];
    let first = redis.node_with(&args);
    let room = "stored-room";
    let mut writer = Client::connect(first.addr).await;
    let wdoc = TestDoc::new();
    writer.join(room, &wdoc).await;
    // Seven appends: two compactions (one node at a time, under the lock)
    // and a log tail after the last snapshot.
    for i in 0..7 {
        let update = wdoc.push(&format!("w{i} "));
        writer.update_acked(room, update).await;
    }
    first.kill();
    // Compacted: a snapshot exists and the log holds only its tail.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(cli(&["HEXISTS", "chorus:snap:stored-room", "doc"]), "1");
    let tail: u32 = cli(&["XLEN", "chorus:log:stored-room"])
        .parse()
        .expect("XLEN");
    assert!(tail < 7, "log not trimmed: {tail} entries");

    let second = redis.node_with(&args);
    let mut reader = Client::connect(second.addr).await;
    let rdoc = TestDoc::new();
    reader.try_join(room, &rdoc).await.expect("joined");
    // Everything acked is in the `synced` diff itself: loaded from Redis.
    assert_eq!(rdoc.text(), wdoc.text());
    assert_eq!(rdoc.text(), "w0 w1 w2 w3 w4 w5 w6 ");
}

/// nginx running `tests/cluster/nginx.conf` on a free port in front of `nodes`;
/// installed with apt-get when missing. Killed on drop.
struct Nginx {
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
        let servers: String = nodes.iter().map(|a| format!("server {a};\n")).collect();
        let mut conf = String::new();
        let mut placed = false;
        for line in sample.lines() {
            let t = line.trim();
            if t.starts_with("server 127.0.0.1:") {
                if !std::mem::replace(&mut placed, true) {
                    conf.push_str(&servers);
                }
            } else if t == "listen 8080;" {
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
    for (c, doc) in clients.iter_mut().zip(&docs) {
        read_until_len(c, room, doc, 18).await;
    }
    assert!(docs.iter().all(|d| d.text() == docs[0].text()));
}
