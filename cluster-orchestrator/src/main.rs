//! `cluster-orchestrator`: thin binary over the `cluster_orchestrator` library.

use cluster_orchestrator::config::Config;
use cluster_orchestrator::server::Server;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    canopy_daemon::allocator::return_large_frees_to_the_system();
    tokio::spawn(canopy_daemon::allocator::keep_giving_back());
    let config: Config = canopy_daemon::config::parse();
    canopy_daemon::init_logging(&config.log);
    canopy_daemon::exit_code("cluster orchestrator", run(config).await)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::open(&config).await?;
    let api = tokio::net::TcpListener::bind(config.api_addr).await?;
    tracing::info!(api = %api.local_addr()?, mqtt = %config.mqtt_addr, "cluster orchestrator ready");
    server.serve(api, canopy_daemon::shutdown_signal()).await?;
    tracing::info!("cluster orchestrator stopped cleanly");
    Ok(())
}
