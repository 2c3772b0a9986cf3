//! `root-orchestrator`: thin binary over the `root_orchestrator` library.

use root_orchestrator::config::Config;
use root_orchestrator::server::{Listeners, Server};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    canopy_daemon::allocator::return_large_frees_to_the_system();
    tokio::spawn(canopy_daemon::allocator::keep_giving_back());
    let config: Config = canopy_daemon::config::parse();
    canopy_daemon::init_logging(&config.log);
    canopy_daemon::exit_code("root orchestrator", run(config).await)
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
    server
        .serve(listeners, canopy_daemon::shutdown_signal())
        .await?;
    tracing::info!("root orchestrator stopped cleanly");
    Ok(())
}
