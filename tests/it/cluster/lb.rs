//! Three nodes behind nginx running the sample `tests/cluster/nginx.conf`,
//! through what an operator does to them: nodes killed and restarted,
//! rolling restarts (SIGTERM, start, next) while clients edit, many clients
//! from distinct addresses. The clients are reconnecting editors like
//! y-websocket or chorus-client: on any close they reconnect through nginx
//! at once, rejoin with their state vector and send what the server lacks.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus::protocol::native::{decode_server, encode_client, Bin, ClientMessage, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::{fresh_view, node_id, Nginx, Redis};
use crate::common::{http_get, ChildServer, TestDoc};

/// Longest a client may stay disconnected when a node fails (the issue's
/// bound).
const RECONNECT_WITHIN: Duration = Duration::from_secs(2);
/// The README's bound: after a node comes back, its share of the clients
/// is within 20 % of an even split within this time (60 clients,
/// `--rebalance-per-sec 50`).
const REBALANCED_WITHIN: Duration = Duration::from_secs(15);

/// A free TCP port on the loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Source address of client `i`: one loopback address per client, as
/// distinct users would have (nginx forwards it in `X-Forwarded-For`).
fn client_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1))
}

/// Opens a WebSocket to `path` through `lb` from source address `from`;
/// `Err` names the HTTP status of a refused upgrade or the failure.
async fn ws_from(
    lb: SocketAddr,
    from: IpAddr,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let stream = socket.connect(lb).await.map_err(|e| e.to_string())?;
    match tokio_tungstenite::client_async(format!("ws://{lb}{path}"), stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Err(format!("HTTP {}", resp.status().as_u16()))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// What one editor went through.
#[derive(Debug, Default, Clone)]
struct EditorLog {
    /// Room it edits.
    room: String,
    /// Node of each connection, with the instant it was synced.
    connections: Vec<(String, Instant)>,
    /// Each connection's end: node, instant, close code (`None`: lost
    /// without a close frame).
    closes: Vec<(String, Instant, Option<u16>)>,
    /// From a connection's end to the next one's sync, each time.
    gaps: Vec<Duration>,
    /// Failed attempts: refused upgrades (`HTTP 502`, …) and errors.
    failures: Vec<String>,
    /// Tokens of the edits the server acknowledged.
    acked: Vec<String>,
    /// Node of the open connection; `None` while disconnected.
    node: Option<String>,
}

/// A fleet of reconnecting editors behind a load balancer.
struct Fleet {
    logs: Arc<Mutex<Vec<EditorLog>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Starts `n` editors spread over `rooms` rooms, each editing every
    /// `every`.
    fn start(lb: SocketAddr, n: usize, rooms: usize, every: Duration) -> Fleet {
        let logs = Arc::new(Mutex::new(
            (0..n)
                .map(|i| EditorLog {
                    room: format!("lb-room-{}", i % rooms),
                    ..EditorLog::default()
                })
                .collect::<Vec<_>>(),
        ));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let tasks = (0..n)
            .map(|i| tokio::spawn(editor(i, lb, logs.clone(), stopped.clone(), every)))
            .collect();
        Fleet { logs, stop, tasks }
    }

    fn snapshot(&self) -> Vec<EditorLog> {
        self.logs.lock().unwrap().clone()
    }

    /// Clients per node, as the clients see it.
    fn shares(&self) -> BTreeMap<String, usize> {
        let mut shares = BTreeMap::new();
        for log in self.logs.lock().unwrap().iter() {
            if let Some(node) = &log.node {
                *shares.entry(node.clone()).or_default() += 1;
            }
        }
        shares
    }

    /// Waits (`within` at most) until every editor is connected, none to
    /// a node in `not_on`.
    async fn settled(&self, not_on: &[&str], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let logs = self.snapshot();
            let ok = logs
                .iter()
                .all(|l| l.node.as_deref().is_some_and(|n| !not_on.contains(&n)));
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "editors not all reconnected within {within:?}: {:?}",
                logs.iter().map(|l| &l.node).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every editor; their logs.
    async fn stop(self) -> Vec<EditorLog> {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("editor task");
        }
        Arc::try_unwrap(self.logs)
            .expect("no other owner")
            .into_inner()
            .unwrap()
    }
}

/// One editor: connects through `lb`, joins its room, appends a token every
/// `every` and records acks; on any close reconnects at once.
async fn editor(
    i: usize,
    lb: SocketAddr,
    logs: Arc<Mutex<Vec<EditorLog>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
) {
    let room = logs.lock().unwrap()[i].room.clone();
    let doc = TestDoc::new();
    let mut lost_at: Option<Instant> = None;
    let mut k = 0u64;
    let record = |f: &mut dyn FnMut(&mut EditorLog)| f(&mut logs.lock().unwrap()[i]);
    while !*stop.borrow() {
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            let mut ws = ws_from(lb, client_ip(i), "/ws").await?;
            let hello = ClientMessage::Hello {
                v: 1,
                token: None,
                client: Some("lb-editor".into()),
                rid: None,
            };
            ws.send(Message::Binary(encode_client(&hello).into()))
                .await
                .map_err(|e| e.to_string())?;
            let join = ClientMessage::Join {
                room: room.clone(),
                sv: Some(Bin(doc.state_vector())),
                presence: None,
                rid: Some(1),
            };
            ws.send(Message::Binary(encode_client(&join).into()))
                .await
                .map_err(|e| e.to_string())?;
            let mut session = None;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => match decode_server(&b) {
                        Ok(ServerMessage::Welcome { session: s, .. }) => session = Some(s),
                        Ok(ServerMessage::Synced { diff, sv, .. }) => {
                            doc.apply(&diff.0);
                            let missing = ClientMessage::Update {
                                room: room.clone(),
                                data: Bin(doc.diff(&sv.0)),
                                rid: None,
                            };
                            ws.send(Message::Binary(encode_client(&missing).into()))
                                .await
                                .map_err(|e| e.to_string())?;
                            let node = session
                                .as_deref()
                                .and_then(chorus::ids::node_of)
                                .unwrap_or_default()
                                .to_owned();
                            return Ok((ws, node));
                        }
                        Ok(ServerMessage::Update { data, .. }) => doc.apply(&data.0),
                        Ok(other) => return Err(format!("during join: {other:?}")),
                        Err(e) => return Err(e.to_string()),
                    },
                    Some(Ok(Message::Close(f))) => {
                        return Err(format!("closed during join: {f:?}"))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("closed during join".into()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("connect timed out".into()));
        let (mut ws, node) = match attempt {
            Ok(ok) => ok,
            Err(e) => {
                record(&mut |l| l.failures.push(e.clone()));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let synced = Instant::now();
        record(&mut |l| {
            l.connections.push((node.clone(), synced));
            l.node = Some(node.clone());
            if let Some(lost) = lost_at {
                l.gaps.push(synced - lost);
            }
        });
        let mut pending: HashMap<u64, String> = HashMap::new();
        // Editors do not all type in step.
        let offset = every * (i as u32 % 10) / 10;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
        let code = loop {
            tokio::select! {
                _ = tick.tick() => {
                    k += 1;
                    let token = format!("<{i}.{k}>");
                    let update = ClientMessage::Update {
                        room: room.clone(),
                        data: Bin(doc.push(&token)),
                        rid: Some(k),
                    };
                    pending.insert(k, token);
                    if ws.send(Message::Binary(encode_client(&update).into())).await.is_err() {
                        break None;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Binary(b))) => match decode_server(&b) {
                        Ok(ServerMessage::Ack { rid, .. }) => {
                            if let Some(token) = pending.remove(&rid) {
                                record(&mut |l| l.acked.push(token.clone()));
                            }
                        }
                        Ok(ServerMessage::Update { data, .. }) => doc.apply(&data.0),
                        _ => {}
                    },
                    Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break None,
                },
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    record(&mut |l| l.node = None);
                    return;
                }
            }
        };
        let now = Instant::now();
        lost_at = Some(now);
        record(&mut |l| {
            l.closes.push((node.clone(), now, code));
            l.node = None;
        });
        // The first retry of a stock client comes after about this long.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every edit the server acknowledged is in the document, as a node serves
/// it to a new client; every reconnection took at most
/// [`RECONNECT_WITHIN`]; no attempt failed (no 502 from nginx).
async fn check_fleet(logs: &[EditorLog], node: SocketAddr) -> (usize, Duration) {
    let failures: Vec<&String> = logs.iter().flat_map(|l| &l.failures).collect();
    assert!(
        failures.is_empty(),
        "failed connection attempts: {failures:?}"
    );
    let slowest = logs
        .iter()
        .flat_map(|l| l.gaps.iter().copied())
        .max()
        .unwrap_or_default();
    assert!(
        slowest <= RECONNECT_WITHIN,
        "a client needed {slowest:?} to reconnect"
    );
    let mut rooms: BTreeMap<&str, String> = BTreeMap::new();
    let mut acked = 0;
    for log in logs {
        if !rooms.contains_key(log.room.as_str()) {
            rooms.insert(&log.room, fresh_view(node, &log.room).await);
        }
        let text = &rooms[log.room.as_str()];
        for token in &log.acked {
            assert!(text.contains(token.as_str()), "acked edit {token} lost");
        }
        acked += log.acked.len();
    }
    (acked, slowest)
}

/// Refusals a node counted for `reason` (every reason when empty).
async fn refusals(node: SocketAddr, reason: &str) -> usize {
    let (_, body) = http_get(node, "/metrics").await;
    let label = format!("reason=\"{reason}\"");
    body.lines()
        .filter(|l| l.starts_with("chorus_refusals_total"))
        .filter(|l| reason.is_empty() || l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

/// Node arguments of these tests: behind nginx, rebalancing on.
fn node_args(port: &str) -> Vec<&str> {
    vec![
        "--port",
        port,
        "--trust-forwarded-for",
        "--rebalance-per-sec",
        "50",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_killed_and_restarted_behind_nginx_lose_nothing_and_rebalance() {
    let redis = Redis::start();
    let ports: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
    let mut nodes: Vec<Option<ChildServer>> = ports
        .iter()
        .map(|p| Some(redis.node_with(&node_args(p))))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.addr).collect();
    let lb = Nginx::start(&addrs);
    let fleet = Fleet::start(lb.addr, 60, 6, Duration::from_millis(300));
    fleet.settled(&[], Duration::from_secs(10)).await;
    let mut rebalance_times = Vec::new();
    for victim in 0..3 {
        let dead = node_id(addrs[victim]).await;
        nodes[victim].take().expect("node up").kill();
        // Its clients come back through nginx, on the two others.
        fleet.settled(&[&dead], Duration::from_secs(5)).await;
        if victim == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let node = redis.node_with(&node_args(&ports[victim]));
        let back = Instant::now();
        let id = node_id(node.addr).await;
        nodes[victim] = Some(node);
        let before: Vec<usize> = fleet
            .snapshot()
            .iter()
            .map(|l| l.connections.len())
            .collect();
        // Rebalancing fills it up again: within 20 % of an even split.
        loop {
            let share = fleet.shares().get(&id).copied().unwrap_or(0);
            if (16..=24).contains(&share) {
                break;
            }
            assert!(
                back.elapsed() < REBALANCED_WITHIN,
                "restarted node holds {share} of 60 clients after {:?}: {:?}",
                back.elapsed(),
                fleet.shares()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rebalance_times.push(back.elapsed());
        // Let shedding finish, then: nobody reconnected more than once.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let shares = fleet.shares();
        let after = fleet.snapshot();
        for (i, log) in after.iter().enumerate() {
            let extra = log.connections.len() - before[i];
            assert!(
                extra <= 1,
                "client {i} reconnected {extra} times while the cluster rebalanced: {:?}",
                &log.closes
            );
        }
        eprintln!(
            "node {victim} back: within 20 % of an even split after {:?}; shares {shares:?}",
            rebalance_times.last()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logs = fleet.stop().await;
    let live = nodes.iter().flatten().next().expect("a live node").addr;
    let (acked, slowest) = check_fleet(&logs, live).await;
    let reconnects: usize = logs.iter().map(|l| l.gaps.len()).sum();
    eprintln!(
        "{acked} acked edits all kept; {reconnects} reconnections, slowest {slowest:?}; \
         rebalanced after {rebalance_times:?}"
    );
    assert!(acked > 1000, "only {acked} edits acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_nginx_drains_each_node_first() {
    let redis = Redis::start();
    let ports: Vec<String> = (0..3).map(|_| free_port().to_string()).collect();
    let args = |port: &str| -> Vec<String> {
        let mut args: Vec<String> = node_args(port).into_iter().map(String::from).collect();
        args.extend(["--drain-delay-ms", "500", "--drain-window-ms", "1000"].map(String::from));
        args
    };
    let start = |port: &str| {
        let args = args(port);
        redis.node_with(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut nodes: Vec<Option<ChildServer>> = ports.iter().map(|p| Some(start(p))).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.addr).collect();
    let lb = Nginx::start(&addrs);
    let fleet = Fleet::start(lb.addr, 60, 6, Duration::from_millis(300));
    fleet.settled(&[], Duration::from_secs(10)).await;
    for (i, addr) in addrs.iter().copied().enumerate() {
        let id = node_id(addr).await;
        let holds = fleet.shares().get(&id).copied().unwrap_or(0);
        assert!(holds > 0, "node {i} has no clients to drain");
        // Watch its readiness from outside, as a load balancer would.
        let unready = tokio::spawn(async move {
            loop {
                let (status, body) = http_get(addr, "/readyz").await;
                if status == 503 {
                    let at = Instant::now();
                    assert!(body.contains("\"draining\":true"), "{body}");
                    // New upgrades are refused too (nginx passes them on).
                    let direct = ws_from(addr, IpAddr::V4(Ipv4Addr::LOCALHOST), "/ws").await;
                    assert_eq!(direct.err().as_deref(), Some("HTTP 503"));
                    return at;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let node = nodes[i].take().expect("node up");
        let term = Instant::now();
        node.signal("TERM");
        let logs = tokio::task::spawn_blocking(move || node.wait_exit())
            .await
            .expect("stopped");
        let unready = unready.await.expect("readyz watcher");
        // Its sessions closed by the drain (a rebalancing close, 1012, may
        // still have been under way at SIGTERM).
        let closes: Vec<(Instant, Option<u16>)> = fleet
            .snapshot()
            .iter()
            .flat_map(|l| l.closes.iter())
            .filter(|(node, at, code)| *node == id && *at > term && *code != Some(1012))
            .map(|(_, at, code)| (*at, *code))
            .collect();
        let first = closes
            .iter()
            .map(|(at, _)| *at)
            .min()
            .expect("its sessions closed");
        let last = closes.iter().map(|(at, _)| *at).max().expect("closes");
        assert!(
            unready < first,
            "node {i}: a session closed before /readyz said 503; logs:\n{}",
            logs.join("\n")
        );
        assert!(
            closes.iter().all(|(_, code)| *code == Some(1001)),
            "node {i}: closes {closes:?}"
        );
        // Spread over the drain window (1 s), not all at once.
        assert!(
            last - first >= Duration::from_millis(500),
            "node {i}: {} sessions closed within {:?}",
            closes.len(),
            last - first
        );
        eprintln!(
            "node {i}: /readyz 503 after {:?}, {} sessions closed from {:?} to {:?} after SIGTERM",
            unready - term,
            closes.len(),
            first - term,
            last - term
        );
        fleet.settled(&[&id], Duration::from_secs(5)).await;
        nodes[i] = Some(start(&ports[i]));
        // Rebalancing gives the restarted node clients before the next one
        // stops.
        let id = node_id(addr).await;
        let deadline = Instant::now() + REBALANCED_WITHIN;
        while fleet.shares().get(&id).copied().unwrap_or(0) < 10 {
            assert!(Instant::now() < deadline, "node {i} took no clients back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let logs = fleet.stop().await;
    let (acked, slowest) = check_fleet(&logs, addrs[0]).await;
    eprintln!("rolling restart: {acked} acked edits all kept; slowest reconnection {slowest:?}");
    assert!(acked > 1000, "only {acked} edits acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_ips_are_limited_per_client_and_refusals_counted() {
    let redis = Redis::start();
    let nodes: Vec<ChildServer> = (0..3)
        .map(|_| {
            redis.node_with(&[
                "--trust-forwarded-for",
                "--api-requests-per-sec",
                "5",
                "--api-requests-burst",
                "5",
            ])
        })
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let lb = Nginx::start(&addrs);
    // 300 users from 300 addresses start at once: nginx forwards each
    // address, so no node counts them as one IP.
    let connect = |from: IpAddr| async move {
        let mut ws = ws_from(lb.addr, from, "/ws").await?;
        let hello = ClientMessage::Hello {
            v: 1,
            token: None,
            client: None,
            rid: None,
        };
        ws.send(Message::Binary(encode_client(&hello).into()))
            .await
            .map_err(|e| e.to_string())?;
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => match decode_server(&b) {
                Ok(ServerMessage::Welcome { .. }) => Ok(ws),
                other => Err(format!("{other:?}")),
            },
            other => Err(format!("{other:?}")),
        }
    };
    let results = futures::future::join_all((0..300).map(|i| connect(client_ip(i)))).await;
    let refused: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let mut refused = 0;
    for a in &addrs {
        refused += refusals(*a, "").await;
    }
    assert_eq!(refused, 0, "refusals counted");
    drop(results);

    // 150 users behind one address (one office, one NAT): over the
    // connection rate per IP (30/s per node), refused with 429, counted by
    // reason, and logged at most once a second per reason and node.
    let one = IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9));
    let results = futures::future::join_all((0..150).map(|_| connect(one))).await;
    let too_many = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e == "HTTP 429"))
        .count();
    assert!(too_many > 0, "no 429 for 150 connections from one IP");
    let mut counted = 0;
    let mut lines = 0;
    for node in &nodes {
        counted += refusals(node.addr, "connection_rate_per_ip").await;
        lines += node
            .logs()
            .iter()
            .filter(|l| l.contains("connection refused") && l.contains("connection_rate_per_ip"))
            .count();
    }
    assert_eq!(counted, too_many, "429s counted in /metrics");
    assert!(
        (1..=6).contains(&lines),
        "{lines} log lines for {too_many} refusals (one per second per node at most)"
    );
    // REST 429s are counted and logged too, by the rate that refused them.
    let mut limited = 0;
    for _ in 0..20 {
        if http_get(addrs[0], "/api/v1/rooms/r/presence").await.0 == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "no REST 429");
    let counted = refusals(addrs[0], "api_requests_per_sec").await;
    assert_eq!(counted, limited, "REST 429s counted in /metrics");
    assert!(nodes[0]
        .logs()
        .iter()
        .any(|l| l.contains("connection refused") && l.contains("api_requests_per_sec")));
}
