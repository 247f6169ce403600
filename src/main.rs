//! The `chorus` binary: parses the command line, sets up logging, runs the
//! server until SIGINT / SIGTERM, then shuts down gracefully. `chorus token`
//! mints a development token instead; `chorus store copy` copies a store.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use chorus::auth::{mint, now_secs, Claims, GrantClaim, Rights};
use chorus::config::{Cli, Command, LogFormat, StoreCommand, TokenArgs};
use chorus::http::Server;

/// jemalloc instead of glibc's malloc: after bursts of connections glibc
/// kept their handshakes' freed memory in its per-thread arenas (measured
/// in benches/BENCHMARKS.md, "Transport").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (`_RJEM_MALLOC_CONF` in the
/// environment overrides them). jemalloc returns freed pages to the system
/// only as it allocates, so a server that fell quiet after a burst kept
/// the burst's RSS for good (10 000 members gone, 61 MB held for 30 s and
/// on); a background thread returns them within about a second.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: Option<&'static u8> = Some(
    &b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0],
);

fn main() -> anyhow::Result<()> {
    // `CHORUS_LOG` is the older name of `CHORUS_LOG_LEVEL`; still read when
    // the new one is unset. Set before any thread exists.
    if std::env::var_os("CHORUS_LOG_LEVEL").is_none() {
        if let Some(level) = std::env::var_os("CHORUS_LOG") {
            std::env::set_var("CHORUS_LOG_LEVEL", level);
        }
    }
    let cli = Cli::parse();
    if let Some(Command::Token(args)) = &cli.command {
        return token(args);
    }
    if let Some(Command::Store(args)) = &cli.command {
        let StoreCommand::Copy(args) = &args.command;
        // Only warnings, on stderr with the progress line.
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .init();
        chorus::store::copy::run(args).context("chorus store copy failed")?;
        return Ok(());
    }
    let config = cli.into_config();
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("bad log filter {:?}", config.log_level))?;
    // Logs go to stdout; colours only when stdout is a terminal (not in a
    // file, a pipe or a container's log collector).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal());
    match config.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    actix_web::rt::System::new().block_on(async move {
        let (stop, hurry) = shutdown_signals();
        let server = Server::start(config).context("starting the server")?;
        tracing::info!(addr = %server.addr(), "chorus listening");
        server
            .run(
                async {
                    let _ = stop.await;
                },
                async {
                    let _ = hurry.await;
                },
            )
            .await
            .context("server failed")
    })
}

/// `chorus token`: prints a summary, then the token alone on the last line.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    // The server's own check: a token it would never accept is refused here.
    chorus::auth::Verifier::from_secret(args.secret.as_bytes())
        .context("--auth-secret / CHORUS_AUTH_SECRET")?;
    let rights = Rights::parse(&args.rights)?;
    let claims = Claims {
        sub: args.user.clone(),
        name: args.name.clone(),
        exp: now_secs() + args.ttl,
        grants: args
            .rooms
            .iter()
            .map(|room| GrantClaim {
                room: room.clone(),
                rights,
            })
            .collect(),
    };
    let token = mint(args.secret.as_bytes(), &claims)?;
    eprintln!(
        "token for {:?}: rooms {:?}, rights {}, expires in {} s (exp {})",
        claims.sub, args.rooms, args.rights, args.ttl, claims.exp
    );
    println!("{token}");
    Ok(())
}

/// Registers the SIGINT and SIGTERM handlers at once (so a signal sent as
/// soon as the server says it listens still shuts it down gracefully). The
/// first receiver resolves on the first signal (drain, then shut down), the
/// second on the next one (skip the rest of the drain). Must be called
/// inside the runtime.
fn shutdown_signals() -> (
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (first_tx, first) = tokio::sync::oneshot::channel();
    let (second_tx, second) = tokio::sync::oneshot::channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        tokio::spawn(async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    for tx in [first_tx, second_tx] {
                        tokio::select! {
                            _ = int.recv() => {}
                            _ = term.recv() => {}
                        }
                        let _ = tx.send(());
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("cannot listen for SIGINT/SIGTERM: {e}");
                    for tx in [first_tx, second_tx] {
                        let _ = tokio::signal::ctrl_c().await;
                        let _ = tx.send(());
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            for tx in [first_tx, second_tx] {
                let _ = tokio::signal::ctrl_c().await;
                let _ = tx.send(());
            }
        });
    }
    (first, second)
}
