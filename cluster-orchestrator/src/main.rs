//! `cluster-orchestrator`: thin binary over the `cluster_orchestrator` library.

use clap::Parser;
use cluster_orchestrator::config::Config;
use cluster_orchestrator::server::Server;
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
            tracing::error!(error = %e, "cluster orchestrator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::open(&config).await?;
    let api = tokio::net::TcpListener::bind(config.api_addr).await?;
    tracing::info!(api = %api.local_addr()?, mqtt = %config.mqtt_addr, "cluster orchestrator ready");
    server.serve(api, shutdown_signal()).await?;
    tracing::info!("cluster orchestrator stopped cleanly");
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
