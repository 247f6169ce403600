//! The `chorus` binary: parses the command line, sets up logging, runs the
//! server until SIGINT / SIGTERM, then shuts down gracefully.

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use chorus::config::{Cli, LogFormat};
use chorus::http::Server;

fn main() -> anyhow::Result<()> {
    let config = Cli::parse().into_config();
    let filter = EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("bad log filter {:?}", config.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    actix_web::rt::System::new().block_on(async move {
        let stop = shutdown_signal();
        let server = Server::start(config).context("starting the server")?;
        tracing::info!(addr = %server.addr(), "chorus listening");
        server.run_until(stop).await.context("server failed")
    })
}

/// Registers the SIGINT and SIGTERM handlers at once (so a signal sent as
/// soon as the server says it listens still shuts it down gracefully) and
/// resolves on the first of them. Must be called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("cannot listen for SIGINT/SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
