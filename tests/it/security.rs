//! [security] acceptance: tokens, per-message authorization, limits, TLS.
//! Every refusal carries its documented code; other sessions and the
//! document are unaffected.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chorus::auth::{mint, now_secs, Claims, GrantClaim, Rights, Verifier};
use chorus::config::Config;
use chorus::protocol::native::{Bin, ClientMessage, ServerMessage};
use chorus::protocol::yjs::{self, YjsMessage};
use chorus::protocol::{close, ErrorCode};
use serde_json::json;

use crate::common::{eventually, metric, server, Client, TestDoc};
use crate::yjs::YClient;

const SECRET: &str = "test-secret-0123456789abcdef";

fn token(user: &str, grants: &[(&str, Rights)], ttl: u64) -> String {
    token_signed(SECRET, user, grants, now_secs() + ttl)
}

fn token_signed(secret: &str, user: &str, grants: &[(&str, Rights)], exp: u64) -> String {
    let claims = Claims {
        sub: user.into(),
        name: Some(user.to_uppercase()),
        exp,
        grants: grants
            .iter()
            .map(|(room, rights)| GrantClaim {
                room: (*room).into(),
                rights: *rights,
            })
            .collect(),
    };
    mint(secret.as_bytes(), &claims).expect("mint")
}

fn secured(tweak: impl FnOnce(&mut Config)) -> chorus::http::BackgroundServer {
    server(|c| {
        c.auth_secret = Some(SECRET.into());
        tweak(c);
    })
}

/// Connects with `?token=` and says hello.
async fn authed(addr: SocketAddr, token: &str) -> Client {
    let mut c = Client::connect_path(addr, &format!("/ws?token={token}"), &[])
        .await
        .expect("upgrade accepted");
    assert!(matches!(c.hello(None).await, ServerMessage::Welcome { .. }));
    c
}

fn is_forbidden(m: &ServerMessage, want_rid: u64) -> bool {
    matches!(m, ServerMessage::Error { code: ErrorCode::Forbidden, rid: Some(r), .. } if *r == want_rid)
}

async fn refused_update(c: &mut Client, room: &str, data: Vec<u8>) {
    let rid = c.send_update(room, data).await;
    let m = c
        .expect(|m| matches!(m, ServerMessage::Error { .. } | ServerMessage::Ack { .. }))
        .await;
    assert!(is_forbidden(&m, rid), "expected forbidden, got {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_tokens_and_rights_are_enforced_per_message() {
    let srv = secured(|_| {});
    let addr = srv.addr;

    // A writer with full rights, whose document must stay as it writes it.
    let mut writer = authed(addr, &token("wendy", &[("doc:*", Rights::Write)], 600)).await;
    let wdoc = TestDoc::new();
    writer.join("doc:a", &wdoc).await;
    writer.update_acked("doc:a", wdoc.push("intact")).await;

    // No token: hello → error forbidden, close 4401.
    let mut anon = Client::connect_path(addr, "/ws", &[])
        .await
        .expect("upgrade");
    let m = anon.hello(None).await;
    assert!(
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::Forbidden,
                rid: Some(1),
                ..
            }
        ),
        "{m:?}"
    );
    assert_eq!(anon.closed().await, Some(close::UNAUTHORIZED));
    // Nothing else is accepted before a successful hello.
    let mut anon = Client::connect_path(addr, "/ws", &[])
        .await
        .expect("upgrade");
    anon.send(&ClientMessage::Join {
        room: "doc:a".into(),
        sv: None,
        presence: None,
        rid: Some(3),
    })
    .await;
    assert!(matches!(
        anon.recv().await,
        ServerMessage::Error {
            code: ErrorCode::HelloRequired,
            ..
        }
    ));

    // Bad signature: in the URL → HTTP 401; in hello → forbidden + 4401.
    let forged = token_signed(
        "another-secret-0123456789",
        "eve",
        &[("*", Rights::Write)],
        now_secs() + 600,
    );
    assert_eq!(
        Client::connect_path(addr, &format!("/ws?token={forged}"), &[])
            .await
            .err(),
        Some(401)
    );
    let mut c = Client::connect_path(addr, "/ws", &[])
        .await
        .expect("upgrade");
    assert!(matches!(
        c.hello(Some(forged.clone())).await,
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    assert_eq!(c.closed().await, Some(close::UNAUTHORIZED));

    // Expired: in the Authorization header → HTTP 401; in hello → 4401.
    let expired = token_signed(SECRET, "old", &[("*", Rights::Write)], now_secs() - 10);
    let bearer = format!("Bearer {expired}");
    assert_eq!(
        Client::connect_path(addr, "/ws", &[("authorization", &bearer)])
            .await
            .err(),
        Some(401)
    );
    let mut c = Client::connect_path(addr, "/ws", &[])
        .await
        .expect("upgrade");
    match c.hello(Some(expired.clone())).await {
        ServerMessage::Error {
            code: ErrorCode::Forbidden,
            message,
            ..
        } => assert!(message.contains("expired")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.closed().await, Some(close::UNAUTHORIZED));

    // A valid token in the header works too.
    let good = format!("Bearer {}", token("hdr", &[("doc:*", Rights::Write)], 600));
    let mut h = Client::connect_path(addr, "/ws", &[("authorization", &good)])
        .await
        .expect("upgrade");
    assert!(matches!(h.hello(None).await, ServerMessage::Welcome { .. }));

    // Wrong room: join refused with forbidden and the join's rid.
    let mut narrow = authed(addr, &token("nora", &[("doc:a", Rights::Write)], 600)).await;
    narrow
        .send(&ClientMessage::Join {
            room: "doc:b".into(),
            sv: None,
            presence: None,
            rid: Some(7),
        })
        .await;
    let m = narrow.recv().await;
    assert!(is_forbidden(&m, 7), "{m:?}");
    // ...and messages for it are refused the same way.
    narrow
        .send(&ClientMessage::Update {
            room: "doc:b".into(),
            data: Bin(TestDoc::independent_insert("x")),
            rid: Some(8),
        })
        .await;
    assert!(is_forbidden(&narrow.recv().await, 8));

    // Read-only: may join and read, may not write, set presence or cursor.
    let mut reader = Client::connect_path(addr, "/ws", &[])
        .await
        .expect("upgrade");
    assert!(matches!(
        reader
            .hello(Some(token("rita", &[("doc:*", Rights::Read)], 600)))
            .await,
        ServerMessage::Welcome { .. }
    ));
    let rdoc = TestDoc::new();
    reader
        .try_join("doc:a", &rdoc)
        .await
        .expect("read-only join");
    assert_eq!(rdoc.text(), "intact");
    refused_update(&mut reader, "doc:a", TestDoc::independent_insert("evil")).await;
    reader
        .send(&ClientMessage::Presence {
            room: "doc:a".into(),
            state: json!({"x": 1}),
            rid: Some(20),
        })
        .await;
    assert!(is_forbidden(
        &reader
            .expect(|m| matches!(m, ServerMessage::Error { .. }))
            .await,
        20
    ));
    reader
        .send(&ClientMessage::Typing {
            room: "doc:a".into(),
            on: true,
            rid: Some(21),
        })
        .await;
    assert!(is_forbidden(
        &reader
            .expect(|m| matches!(m, ServerMessage::Error { .. }))
            .await,
        21
    ));
    reader
        .send(&ClientMessage::Cursor {
            room: "doc:a".into(),
            anchor: None,
            head: None,
            rid: Some(23),
        })
        .await;
    let refused = reader
        .expect(|m| matches!(m, ServerMessage::Error { .. }))
        .await;
    assert!(is_forbidden(&refused, 23), "cursor: {refused:?}");
    // Joining with a presence state needs the presence right.
    reader
        .send(&ClientMessage::Join {
            room: "doc:c".into(),
            sv: None,
            presence: Some(json!({"n": 1})),
            rid: Some(22),
        })
        .await;
    assert!(is_forbidden(
        &reader
            .expect(|m| matches!(m, ServerMessage::Error { .. }))
            .await,
        22
    ));

    // Presence-only: presence works (and shows the user id), writes do not.
    let mut pres = authed(addr, &token("pat", &[("doc:*", Rights::Presence)], 600)).await;
    let pdoc = TestDoc::new();
    pres.join_with("doc:a", &pdoc, Some(json!({"name": "Pat"})))
        .await;
    refused_update(&mut pres, "doc:a", TestDoc::independent_insert("evil")).await;
    writer
        .expect(|m| matches!(m, ServerMessage::Presence { joined, .. } if joined.iter().any(|v| v.user.as_deref() == Some("pat") && v.state["name"] == "Pat")))
        .await;

    // Others unaffected, document unchanged by every refusal.
    writer.update_acked("doc:a", wdoc.push(" still")).await;
    let late = TestDoc::new();
    let mut check = authed(addr, &token("carl", &[("doc:*", Rights::Read)], 600)).await;
    check.try_join("doc:a", &late).await.expect("join");
    assert_eq!(late.text(), "intact still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_yjs_refusals_use_close_codes() {
    let srv = secured(|c| c.allowed_origins = vec!["https://good.example".into()]);
    let addr = srv.addr;
    let denied = |m: &YjsMessage| matches!(m, YjsMessage::Auth(Some(_)));

    // No token: permission denied, 4401.
    let mut c = YClient::connect(addr, "doc:y").await;
    c.expect(denied).await;
    assert_eq!(c.closed().await, Some(close::UNAUTHORIZED));
    // Bad signature.
    let forged = token_signed(
        "another-secret-0123456789",
        "eve",
        &[("*", Rights::Write)],
        now_secs() + 600,
    );
    let mut c = YClient::connect_path(addr, &format!("/yjs/doc:y?token={forged}"), &[]).await;
    c.expect(denied).await;
    assert_eq!(c.closed().await, Some(close::UNAUTHORIZED));
    // Wrong room: 4403.
    let t = token("yan", &[("doc:a", Rights::Write)], 600);
    let mut c = YClient::connect_path(addr, &format!("/yjs/doc:y?token={t}"), &[]).await;
    c.expect(denied).await;
    assert_eq!(c.closed().await, Some(close::YJS_FORBIDDEN));
    // Bad Origin: 4403 (native: HTTP 403).
    let t = token("yan", &[("doc:*", Rights::Write)], 600);
    let mut c = YClient::connect_path(
        addr,
        &format!("/yjs/doc:y?token={t}"),
        &[("origin", "https://evil.example")],
    )
    .await;
    c.expect(denied).await;
    assert_eq!(c.closed().await, Some(close::YJS_FORBIDDEN));
    assert_eq!(
        Client::connect_path(
            addr,
            &format!("/ws?token={t}"),
            &[("origin", "https://evil.example")]
        )
        .await
        .err(),
        Some(403)
    );
    let mut ok = Client::connect_path(
        addr,
        &format!("/ws?token={t}"),
        &[("origin", "https://good.example")],
    )
    .await
    .expect("allowed origin");
    assert!(matches!(
        ok.hello(None).await,
        ServerMessage::Welcome { .. }
    ));

    // Read-only /yjs client: reads, but its update is denied with 4403.
    let mut w = YClient::connect_path(addr, &format!("/yjs/doc:y?token={t}"), &[]).await;
    w.recv().await; // server step 1
    let doc = yrs::Doc::new();
    let update = {
        use yrs::{Text, Transact};
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "kept");
        txn.encode_update_v1()
    };
    w.send(yjs::sync_update(update.clone())).await;
    let rt = token("ro", &[("doc:*", Rights::Read)], 600);
    let mut r = YClient::connect_path(addr, &format!("/yjs/doc:y?token={rt}"), &[]).await;
    r.expect(|m| matches!(m, YjsMessage::SyncStep1(_))).await;
    r.send(yjs::sync_update(TestDoc::independent_insert("evil")))
        .await;
    r.expect(denied).await;
    assert_eq!(r.closed().await, Some(close::YJS_FORBIDDEN));
    // The document holds only the writer's text.
    let mut n = authed(addr, &t).await;
    let nd = TestDoc::new();
    n.try_join("doc:y", &nd).await.expect("join");
    assert_eq!(nd.text(), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_token_expiry_closes_that_session_only() {
    let srv = secured(|_| {});
    let short = token("brief", &[("room", Rights::Write)], 2);
    let long = token("steady", &[("room", Rights::Write)], 600);
    let mut a = authed(srv.addr, &short).await;
    let mut b = authed(srv.addr, &long).await;
    let (da, db) = (TestDoc::new(), TestDoc::new());
    a.join("room", &da).await;
    b.join("room", &db).await;
    let mut y = YClient::connect_path(srv.addr, &format!("/yjs/room?token={short}"), &[]).await;
    let started = std::time::Instant::now();
    assert_eq!(a.closed().await, Some(close::TOKEN_EXPIRED));
    assert_eq!(y.closed().await, Some(close::TOKEN_EXPIRED));
    assert!(started.elapsed() < Duration::from_secs(4));
    b.update_acked("room", db.push("still here")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_rate_and_connection_limits() {
    let srv = server(|c| {
        c.limits.max_messages_per_sec = 20;
        c.limits.max_bytes_per_sec = 4096;
        c.limits.rate_limit_grace_ms = 300;
        c.limits.max_frame_bytes = 2048;
        c.limits.max_connections_per_ip = 6;
        c.limits.connections_per_ip_per_sec = 1000;
    });
    let mut calm = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    calm.join("r", &doc).await;

    // Messages per second: slowed, then (flooding past the grace) error
    // rate_limited and close 1013.
    let mut flood = Client::connect(srv.addr).await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    for i in 0.. {
        if std::time::Instant::now() > until
            || flood
                .try_send(&ClientMessage::Ping { rid: Some(i) })
                .await
                .is_err()
        {
            break;
        }
    }
    assert!(matches!(
        flood
            .expect(|m| matches!(m, ServerMessage::Error { .. }))
            .await,
        ServerMessage::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    ));
    assert_eq!(flood.closed().await, Some(close::TRY_AGAIN_LATER));

    // Bytes per second: a few 1.5 KB frames exceed 4 KiB/s.
    let mut hog = Client::connect(srv.addr).await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        let sent = hog
            .try_send(&ClientMessage::Event {
                room: "r".into(),
                name: "x".repeat(1500),
                data: json!(null),
                rid: None,
            })
            .await;
        if sent.is_err() {
            break;
        }
    }
    assert!(matches!(
        hog.expect(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        ))
        .await,
        ServerMessage::Error { .. }
    ));
    assert_eq!(hog.closed().await, Some(close::TRY_AGAIN_LATER));

    // Oversize frame: 1009, unchanged by the rate limits.
    let mut big = Client::connect(srv.addr).await;
    big.send_raw(vec![0x80; 4096]).await;
    assert_eq!(big.closed().await, Some(close::TOO_BIG));

    // Connections per IP: the 7th open connection gets HTTP 429.
    // Closed sessions free their slots: only `calm` holds one.
    eventually("closed sessions freed their per-IP slots", || async {
        metric(srv.addr, "chorus_connections_admitted").await == 1.0
    })
    .await;
    let mut held = Vec::new();
    let mut status = None;
    for _ in 0..8 {
        match Client::connect_path(srv.addr, "/ws", &[]).await {
            Ok(c) => held.push(c),
            Err(s) => {
                status = Some(s);
                break;
            }
        }
    }
    assert_eq!(status, Some(429));
    assert_eq!(held.len(), 5, "calm + 5 = 6 open");

    // The calm session is unaffected.
    calm.update_acked("r", doc.push("fine")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_connection_rate_per_ip() {
    let srv = server(|c| c.limits.connections_per_ip_per_sec = 3);
    let mut refused = None;
    for i in 0..6 {
        if let Err(s) = Client::connect_path(srv.addr, "/ws", &[]).await {
            refused = Some((i, s));
            break;
        }
    }
    assert_eq!(refused, Some((3, 429)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_anonymous_read_mode() {
    let srv = secured(|c| c.allow_anonymous_read = true);
    let mut w = authed(srv.addr, &token("w", &[("*", Rights::Write)], 600)).await;
    let d = TestDoc::new();
    w.join("pub", &d).await;
    w.update_acked("pub", d.push("public")).await;
    let mut anon = Client::connect(srv.addr).await;
    let ad = TestDoc::new();
    anon.try_join("pub", &ad).await.expect("anonymous read");
    assert_eq!(ad.text(), "public");
    refused_update(&mut anon, "pub", TestDoc::independent_insert("x")).await;
}

#[test]
fn security_cli_mints_a_token_on_its_last_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args([
            "token", "--secret", SECRET, "--room", "doc:*", "--rights", "rp", "--user", "alice",
        ])
        .output()
        .expect("chorus token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let token = stdout.lines().last().expect("a last line");
    let grants = Verifier::from_secret(SECRET.as_bytes())
        .unwrap()
        .verify(token, now_secs())
        .expect("minted token verifies");
    assert_eq!(grants.user.as_deref(), Some("alice"));
    assert_eq!(grants.rights("doc:x"), Some(Rights::Presence));
    assert_eq!(grants.rights("other"), None);
    // The secret may come from the server's env var.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["token", "--room", "x", "--rights", "r", "--user", "bob"])
        .env("CHORUS_AUTH_SECRET", SECRET)
        .output()
        .expect("chorus token runs");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let token = stdout.lines().last().expect("a last line");
    let grants = Verifier::from_secret(SECRET.as_bytes())
        .unwrap()
        .verify(token, now_secs())
        .expect("token minted with the env secret verifies");
    assert_eq!(grants.user.as_deref(), Some("bob"));
    assert_eq!(grants.rights("x"), Some(Rights::Read));
    assert_eq!(grants.rights("y"), None);
    // A secret the server would refuse (under 16 bytes) mints nothing.
    for args in [
        ["token", "--secret", "short", "--room", "x", "--user", "c"],
        [
            "token",
            "--auth-secret",
            "short",
            "--room",
            "x",
            "--user",
            "c",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(args)
            .output()
            .expect("chorus token runs");
        assert!(!out.status.success(), "{args:?} minted a token");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least 16 bytes"), "{stderr}");
    }
}

#[test]
fn security_open_mode_warns_loudly() {
    let srv = crate::common::ChildServer::start(&["--store", "memory"]);
    let logs = srv.terminate();
    assert!(
        logs.iter()
            .any(|l| l.contains("AUTHENTICATION IS OFF") && l.contains("WARN")),
        "{logs:?}"
    );
}

/// A server on TLS with a fresh self-signed certificate for `localhost`,
/// and a client configuration that trusts it.
fn tls_server(
    dir: &std::path::Path,
    tune: impl FnOnce(&mut Config),
) -> (chorus::http::BackgroundServer, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let srv = server(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
        tune(c);
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (srv, Arc::new(tls))
}

/// A native session over wss, said hello to.
async fn wss_client(port: u16, tls: &Arc<rustls::ClientConfig>) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{port}/ws"),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
    )
    .await
    .expect("wss connects with the test's self-signed certificate");
    let mut c = Client::from_ws(ws);
    assert!(matches!(c.hello(None).await, ServerMessage::Welcome { .. }));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_tls_serves_wss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (srv, tls) = tls_server(dir.path(), |_| {});
    let mut c = wss_client(srv.addr.port(), &tls).await;
    let d = TestDoc::new();
    c.join("tls", &d).await;
    c.update_acked("tls", d.push("secret")).await;
    // Plain ws:// to a TLS port does not get a session.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(format!("ws://{}/ws", srv.addr)),
    )
    .await;
    assert!(!matches!(plain, Ok(Ok(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_silent_connections_from_one_address_do_not_hold_tls_back() {
    // One address opens 1 200 TCP connections to the TLS port and sends
    // nothing. actix-http's TLS service ran 256 handshakes per worker and
    // stopped accepting while they did: an honest client waited for the
    // silent ones' 3 s handshake timeouts, again each time they came back.
    // Now that address gets 64 handshakes; the rest are closed at once.
    // (A 10 s handshake timeout: the 64 stay open while this runs.)
    let dir = tempfile::tempdir().expect("tempdir");
    let (srv, tls) = tls_server(dir.path(), |c| c.limits.tls_handshake_timeout_ms = 10_000);
    let mut silent = Vec::new();
    for _ in 0..1200 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().unwrap())
            .expect("bind 127.0.0.2");
        silent.push(socket.connect(srv.addr).await.expect("connect"));
    }
    // Every silent connection is established, so the honest one waits
    // behind all of them in the accept queue.
    let t0 = std::time::Instant::now();
    let honest = tokio::time::timeout(Duration::from_secs(2), async {
        let mut c = wss_client(srv.addr.port(), &tls).await;
        let d = TestDoc::new();
        c.join("tls-flood", &d).await;
    })
    .await;
    let waited = t0.elapsed();
    assert!(
        honest.is_ok(),
        "an honest wss client did not get through within 2 s of 1 200 silent connections"
    );
    // The silent connections beyond the address's 64 were closed.
    let closed = futures::future::join_all(silent.iter_mut().map(|s| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_millis(1000), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }))
    .await
    .into_iter()
    .filter(|c| *c)
    .count();
    eprintln!("honest wss client joined in {waited:?}; {closed} of 1 200 silent connections closed at once");
    assert!(
        (1120..=1136).contains(&closed),
        "{closed} of 1 200 silent connections closed at once (honest client in {waited:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_a_tls_handshake_that_does_not_finish_is_closed_at_its_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let (srv, _tls) = tls_server(dir.path(), |c| c.limits.tls_handshake_timeout_ms = 300);
    // A client hello's first bytes, then nothing.
    let mut s = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01])
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0) | Err(_))), "{end:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "closed after {took:?}, not at the 300 ms timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_http_api_takes_tokens_per_room_and_the_key_for_everything() {
    use crate::http::request;
    let srv = secured(|c| {
        c.api.api_key = Some("adm1n-key".into());
        c.api.poll_timeout_ms = 20;
    });
    let bearer = |t: &str| format!("Bearer {t}");
    let reader = token("dash", &[("board:*", Rights::Read)], 60);
    let talker = token("bot", &[("board:1", Rights::Presence)], 60);
    let writer = token("svc", &[("board:1", Rights::Write)], 60);
    let key = bearer("adm1n-key");
    let get = |path: &'static str, auth: Option<String>| async move {
        let headers: Vec<(&str, String)> = auth.into_iter().map(|a| ("Authorization", a)).collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        request(srv.addr, "GET", path, &headers, b"").await
    };
    // Reads: a token with r on the room, or the key; nothing else.
    let r = get("/api/v1/rooms/board:1/doc", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    let r = get("/api/v1/rooms/board:1/doc", Some(bearer(&reader))).await;
    assert_eq!(r.status, 200);
    let r = get("/api/v1/rooms/board:1/doc", Some(key.clone())).await;
    assert_eq!(r.status, 200);
    let r = get("/api/v1/rooms/other/doc", Some(bearer(&reader))).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let r = get("/api/v1/rooms/board:1/doc", Some(bearer("not.a.token"))).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    // `?token=` for EventSource, which cannot set headers (long poll here:
    // it answers 204 when nothing happens).
    let path = format!("/api/v1/rooms/board:2/poll?token={reader}");
    let r = request(srv.addr, "GET", &path, &[], b"").await;
    assert_eq!(r.status, 204);

    // Writes: updates need rw, events rp.
    let update = TestDoc::new().push("x");
    let post = |path: &'static str, auth: String, body: Vec<u8>| async move {
        request(
            srv.addr,
            "POST",
            path,
            &[("Authorization", auth.as_str())],
            &body,
        )
        .await
    };
    let r = post(
        "/api/v1/rooms/board:1/update",
        bearer(&talker),
        update.clone(),
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let r = post("/api/v1/rooms/board:1/update", bearer(&writer), update).await;
    assert_eq!(r.status, 200);
    let event = br#"{"name":"ping","data":{}}"#.to_vec();
    let r = post(
        "/api/v1/rooms/board:1/events",
        bearer(&reader),
        event.clone(),
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    let r = post("/api/v1/rooms/board:1/events", bearer(&talker), event).await;
    assert!(r.status < 300, "{}", r.status);

    // Server-wide routes: the key only.
    let r = get("/api/v1/rooms", Some(bearer(&writer))).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    let r = get("/api/v1/rooms", Some(key)).await;
    assert_eq!(r.status, 200);
}
