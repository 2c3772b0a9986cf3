//! `root-orchestrator`: thin binary over the `root_orchestrator` library.

use clap::Parser;
use root_orchestrator::config::Config;
use root_orchestrator::server::{Listeners, Server};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&config.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "root orchestrator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::open(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    tracing::info!(
        api = %listeners.api.local_addr()?,
        grpc = %listeners.grpc.local_addr()?,
        metrics = %listeners.metrics.local_addr()?,
        "root orchestrator ready"
    );
    server.serve(listeners, shutdown_signal()).await?;
    tracing::info!("root orchestrator stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
