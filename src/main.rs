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
        let server = Server::start(config).context("starting the server")?;
        tracing::info!(addr = %server.addr(), "chorus listening");
        server
            .run_until(shutdown_signal())
            .await
            .context("server failed")
    })
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
