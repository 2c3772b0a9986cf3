//! `net-manager`: thin binary over the `net_manager` library.

use clap::Parser;
use net_manager::config::Config;
use net_manager::manager::{Manager, Settings};
use net_manager::plan::WorkerNet;
use std::process::ExitCode;
use std::sync::Arc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    canopy_daemon::init_logging(&config.log);
    canopy_daemon::exit_code("net manager", run(config).await)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let net = WorkerNet::new(config.subnet).map_err(|e| anyhow::anyhow!("--subnet: {e}"))?;
    std::fs::create_dir_all(&config.data_dir)?;
    let store = canopy_store::StoreConfig::choose(None, "", &config.data_dir)
        .open()
        .await?;
    let settings = Settings {
        net,
        bridge: config.bridge.clone(),
        table: config.nft_table.clone(),
        netns_dir: config.netns_dir.clone(),
        mtu: net_manager::OVERLAY_MTU,
    };
    let manager = Arc::new(Manager::start(settings, store).await?);
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = tokio::net::UnixListener::bind(&config.socket)?;
    tracing::info!(socket = %config.socket.display(), subnet = %config.subnet, "net manager ready");
    axum::serve(listener, net_manager::api::router(manager.clone()))
        .with_graceful_shutdown(canopy_daemon::shutdown_signal())
        .await?;
    if config.remove_on_exit {
        tracing::info!("removing every instance's network before exit");
        manager.remove_all().await;
    }
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("net manager stopped cleanly");
    Ok(())
}
