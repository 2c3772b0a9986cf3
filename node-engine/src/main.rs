//! `node-engine`: thin binary over the `node_engine` library.

use node_engine::config::Config;
use node_engine::server::Node;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    canopy_daemon::allocator::return_large_frees_to_the_system();
    tokio::spawn(canopy_daemon::allocator::keep_giving_back());
    let config: Config = canopy_daemon::config::parse();
    canopy_daemon::init_logging(&config.log);
    canopy_daemon::exit_code("node engine", run(config).await)
}

async fn run(config: Config) -> anyhow::Result<()> {
    if config.bench_virtual_workers > 0 {
        return node_engine::virtual_workers::run(&config, canopy_daemon::shutdown_signal()).await;
    }
    let node = Node::start(&config).await?;
    let api = tokio::net::TcpListener::bind(config.api_addr).await?;
    tracing::info!(api = %api.local_addr()?, cluster = %config.cluster_addr, "node engine ready");
    node.serve(api, None, canopy_daemon::shutdown_signal())
        .await?;
    tracing::info!("node engine stopped cleanly");
    Ok(())
}
