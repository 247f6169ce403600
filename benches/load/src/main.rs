//! `chorus-load`: a load generator for Chorus and for the servers users would
//! pick instead (the reference y-websocket server, Hocuspocus, y-sweet).
//!
//! One process runs every client: writers, receivers and idle connections,
//! on a 2-thread tokio runtime. Receivers are light: they never hold a Yjs
//! document. Each writer owns a yrs client id and appends one character per
//! update, so its n-th update carries exactly the clock `n`; it records the
//! send instant in a table shared in-process, indexed by (writer, clock). A
//! receiver decodes an incoming update only far enough to read its state
//! vector, and times every clock it had not seen yet against that table.
//!
//! Protocols (`--proto`):
//! - `native`: Chorus `/ws` (MessagePack: hello, join, update, cursor);
//! - `yws`: y-websocket, one connection per room at `{url}/{room}` (Chorus
//!   `/yjs`, `@y/websocket-server`);
//! - `hocuspocus`: y-protocols prefixed by the document name, after a token
//!   auth message, on one URL;
//! - `ysweet`: y-websocket at the URL y-sweet hands out (`POST /doc/new`,
//!   then `POST /doc/{id}/auth`); `--url` is y-sweet's HTTP base.
//!
//! Server cost comes from `/proc/<pid>`: CPU seconds (utime + stime) over
//! the measured window, RSS before and after, and the peak (VmHWM). The pid
//! comes from `--server-pid`, or `--spawn CMD` starts the server (`sh -c
//! "exec CMD"`), waits for its port and stops it at the end, so each run
//! gets a fresh process and VmHWM is that run's peak.
//!
//! Everything is bounded: each phase has a deadline and the tool exits.
//!
//! Layout:
//! - [`cli`]: the command line (scenario, protocol, sizes);
//! - [`target`]: where clients connect and what they send, per protocol;
//! - [`protocol`]: frames in and out, decoded as little as possible
//!   ([`protocol::native`], [`protocol::yjs`], [`protocol::hocuspocus`],
//!   [`protocol::yupdate`], and y-sweet's document API in
//!   [`protocol::ysweet`]);
//! - [`raw_ws`]: the copy-free WebSocket reader of join-storm clients;
//! - [`client`]: joining, receiving and timing, writing, draining;
//! - [`scenario`]: one module per scenario;
//! - [`report`]: the result, printed and as a JSON line;
//! - [`procstat`]: server and generator cost from `/proc`;
//! - [`server`]: the server process started by `--spawn`.

mod cli;
mod client;
mod procstat;
mod protocol;
mod raw_ws;
mod report;
mod scenario;
mod server;
mod target;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use cli::{Cli, Scenario};
use scenario::Ctx;
use target::Target;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let spawned = match &cli.spawn {
        Some(cmd) => Some(server::spawn_server(cmd, &cli.url)?),
        None => None,
    };
    let pid = cli.server_pid.or(spawned.as_ref().map(|s| s.pid()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let read_buffer = match cli.scenario {
            Scenario::JoinStorm => 256 * 1024,
            _ => 8 * 1024,
        };
        let mut target = Target::new(cli.proto, cli.url.clone(), cli.sources, read_buffer);
        let rooms: Vec<String> = match cli.scenario {
            Scenario::Fanout => vec!["fanout".into()],
            Scenario::Rooms => (0..cli.rooms).map(|i| format!("room-{i}")).collect(),
            Scenario::Idle => vec!["idle".into()],
            Scenario::JoinStorm => vec![scenario::join_storm::room_name()],
            Scenario::Presence => vec!["presence".into()],
            Scenario::Crowd => vec!["crowd".into()],
        };
        target.prepare(&rooms, cli.connect_concurrency).await?;
        let scenario = cli.scenario;
        let ctx = Ctx {
            cli,
            target: Arc::new(target),
            pid,
        };
        let report = match scenario {
            Scenario::Fanout => scenario::fanout::run(&ctx).await,
            Scenario::Rooms => scenario::many::run(&ctx, true).await,
            Scenario::Idle => scenario::many::run(&ctx, false).await,
            Scenario::JoinStorm => scenario::join_storm::run(&ctx).await,
            Scenario::Presence => scenario::presence::run(&ctx).await,
            Scenario::Crowd => scenario::crowd::run(&ctx).await,
        };
        report.map(|r| (r, ctx.cli.json.clone()))
    });
    // Stop every client task before the server.
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(spawned);
    let (report, json_path) = report?;
    report::print_report(&report);
    if let Some(path) = json_path {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{}", serde_json::to_string(&report)?)?;
    }
    Ok(())
}
