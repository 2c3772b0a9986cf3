//! Benchmark mode (`--bench-virtual-workers N`): N workers in one process, each a real engine
//! (its own records, registration, MQTT session, statuses and reports) over the simulated
//! runtime, so a cluster's placement and protocol handling can be measured at a scale no test
//! machine could run containers for. The local API serves `/health` once every virtual worker
//! is subscribed. Virtual workers are never on the overlay (they run nothing, so they ask no
//! net manager for a subnet), whatever `--no-overlay` says.

use crate::config::Config;
use crate::runtime::Runtime;
use crate::runtime::simulated::SimulatedRuntime;
use crate::server::Node;
use crate::uplink::LinkState;
use axum::routing::get;
use canopy_core::Virtualization;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::watch;

pub async fn run(
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let n = config.bench_virtual_workers;
    let base = crate::host::node_name(config.name.as_deref());
    let stopper = canopy_daemon::Stopper::new(shutdown);
    let connected = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 1..=n {
        let mut c = config.clone();
        c.name = Some(format!("{base}-v{i}"));
        c.data_dir = config.data_dir.join(format!("v{i}"));
        c.no_overlay = true;
        let runtimes: Vec<Arc<dyn Runtime>> = vec![
            Arc::new(SimulatedRuntime::new(Virtualization::Container)),
            Arc::new(SimulatedRuntime::new(Virtualization::Wasm)),
        ];
        let node = Node::with_runtimes(&c, runtimes).await?;
        let (state, mut seen) = watch::channel(LinkState::Offline);
        let count = connected.clone();
        tokio::spawn(async move {
            let mut was = false;
            while seen.changed().await.is_ok() {
                let now = matches!(*seen.borrow(), LinkState::Connected(_));
                if now != was {
                    if now {
                        count.fetch_add(1, Ordering::Relaxed);
                    } else {
                        count.fetch_sub(1, Ordering::Relaxed);
                    }
                    was = now;
                }
            }
        });
        tasks.push(tokio::spawn(node.hold_link(Some(state), stopper.stopped())));
    }
    let api = tokio::net::TcpListener::bind(config.api_addr).await?;
    tracing::info!(workers = n, api = %api.local_addr()?, "benchmark mode: virtual workers started");
    let ready = connected.clone();
    let app = axum::Router::new().route(
        "/health",
        get(move || {
            let ready = ready.clone();
            async move {
                let up = ready.load(Ordering::Relaxed);
                let status = if up == n as usize {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                };
                (status, format!("{up}/{n} virtual workers connected"))
            }
        }),
    );
    axum::serve(api, app)
        .with_graceful_shutdown(stopper.stopped())
        .await?;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
