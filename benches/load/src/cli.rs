//! The command line: which scenario, which protocol, and the sizes.

use clap::{Parser, ValueEnum};

/// A scenario: what the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One room, many subscribers, a few writers at a fixed rate.
    Fanout,
    /// Many rooms with a few clients each and light traffic.
    Rooms,
    /// Many idle connections in one room: server memory per connection.
    Idle,
    /// Many clients join a room holding a large document at once.
    JoinStorm,
    /// Many clients each moving a cursor at a fixed rate.
    Presence,
    /// Many members (`--conns`) join one room with presence on, reading
    /// as they go: time until all joined and a member sees them all.
    Crowd,
}

/// The protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// Chorus native MessagePack protocol on `{url}/ws`.
    Native,
    /// y-websocket, one connection per room at `{url}/{room}`.
    Yws,
    /// Hocuspocus: y-protocols prefixed with the document name, after auth.
    Hocuspocus,
    /// y-sweet: y-websocket at the URL from its document API (`--url` is HTTP).
    Ysweet,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "chorus-load",
    about = "Load generator for Chorus and peer Yjs servers"
)]
pub struct Cli {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Protocol spoken by the clients.
    #[arg(long, value_enum, default_value = "native")]
    pub proto: Proto,
    /// Server base URL: `ws://127.0.0.1:8080` (native: `/ws` is appended),
    /// `ws://127.0.0.1:8080/yjs` (yws: `/{room}` is appended), the
    /// Hocuspocus URL, or y-sweet's `http://` base.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// Name of the server in the output.
    #[arg(long, default_value = "chorus")]
    pub label: String,
    /// Pid of the server process (for CPU and memory from /proc).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Start the server with `sh -c "exec CMD"`, wait for the URL's port,
    /// stop it (SIGTERM, then SIGKILL) at the end.
    #[arg(long)]
    pub spawn: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Measured seconds (fanout, rooms, presence).
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Subscribers (fanout).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Writers (fanout).
    #[arg(long, default_value_t = 10)]
    pub writers: usize,
    /// Updates per second per writer (fanout).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Rooms (rooms).
    #[arg(long, default_value_t = 5000)]
    pub rooms: usize,
    /// Clients per room (rooms).
    #[arg(long, default_value_t = 2)]
    pub per_room: usize,
    /// Seconds between two updates of one room (rooms).
    #[arg(long, default_value_t = 5.0)]
    pub room_interval: f64,
    /// Idle connections (idle), members (crowd).
    #[arg(long, default_value_t = 15000)]
    pub conns: usize,
    /// Idle native connections join the room `idle` (and so are presence
    /// members); `false`: they only say hello. y-websocket connections
    /// always join the room of their URL.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub idle_join: bool,
    /// Document size in MB (join-storm).
    #[arg(long, default_value_t = 10.0)]
    pub doc_mb: f64,
    /// Clients (join-storm, presence).
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Cursor moves per second per client (presence).
    #[arg(long, default_value_t = 10.0)]
    pub hz: f64,
    /// Awareness states the probe of a y-protocols `crowd` waits to see
    /// (itself included; 0: every member). Chorus shows a y-protocols
    /// client at most `--presence-list-max-members` (500) states.
    #[arg(long, default_value_t = 0)]
    pub expect_shown: usize,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N used round-robin, so that
    /// many connections do not run out of ephemeral ports.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
}
