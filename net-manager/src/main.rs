//! `net-manager`: thin binary over the `net_manager` library.

use net_manager::config::Config;
use net_manager::manager::{Manager, NodeConfig, Settings};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    canopy_daemon::allocator::return_large_frees_to_the_system();
    tokio::spawn(canopy_daemon::allocator::keep_giving_back());
    let config: Config = canopy_daemon::config::parse();
    canopy_daemon::init_logging(&config.log);
    canopy_daemon::exit_code("net manager", run(config).await)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let node = match (config.subnet, config.underlay) {
        (Some(subnet), Some(underlay)) => Some(NodeConfig { subnet, underlay }),
        _ => None,
    };
    std::fs::create_dir_all(&config.data_dir)?;
    let store = canopy_store::StoreConfig::choose(None, "", &config.data_dir)
        .open()
        .await?;
    let settings = Settings {
        bridge: config.bridge.clone(),
        tunnel: config.tunnel.clone(),
        vni: config.vni,
        vxlan_port: config.vxlan_port,
        same_host: config.same_host,
        table: config.nft_table.clone(),
        netns_dir: config.netns_dir.clone(),
        mtu: net_manager::OVERLAY_MTU,
    };
    let manager = Arc::new(Manager::start(settings, store, node).await?);
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = tokio::net::UnixListener::bind(&config.socket)?;
    let stop = canopy_daemon::Stopper::new(canopy_daemon::shutdown_signal());
    let measuring = (!config.same_host).then(|| {
        let probe = net_manager::probe::Settings {
            port: config.probe_port,
            interval: Duration::from_secs(config.probe_interval_secs),
        };
        tokio::spawn(manager.clone().measure(probe, stop.stopped()))
    });
    let upstream = net_manager::dns::upstream_from_resolv_conf(
        &std::fs::read_to_string(&config.resolv_conf).unwrap_or_default(),
    );
    let resolving = tokio::spawn(manager.clone().resolve(
        config.dns_port,
        upstream,
        stop.stopped(),
    ));
    tracing::info!(
        socket = %config.socket.display(),
        node = ?manager.node().await,
        same_host = config.same_host,
        "net manager ready"
    );
    axum::serve(listener, net_manager::api::router(manager.clone()))
        .with_graceful_shutdown(stop.stopped())
        .await?;
    if let Some(m) = measuring {
        let _ = m.await;
    }
    let _ = resolving.await;
    if config.remove_on_exit {
        tracing::info!("removing every instance's network, the tunnel and the bridge before exit");
        manager.remove_all().await;
    }
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("net manager stopped cleanly");
    Ok(())
}
