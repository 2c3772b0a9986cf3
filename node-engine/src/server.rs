//! Start-up: open the local state, connect the runtimes, recover the instances, then serve the
//! local API and hold the cluster link until shutdown.

use crate::api;
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::runtime::Runtime;
use crate::runtime::containerd::ContainerdRuntime;
use crate::runtime::qemu::QemuRuntime;
use crate::runtime::wasm::WasmRuntime;
use crate::uplink::{LinkState, Uplink, UplinkConfig};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state directory {0}: {1}")]
    DataDir(String, std::io::Error),
    #[error("local state: {0}")]
    Store(#[from] canopy_store::StoreError),
    #[error("runtime {name}: {error}")]
    Runtime {
        name: String,
        error: crate::runtime::RuntimeError,
    },
    #[error("--runtimes: {0:?} is not a runtime (container, wasm, unikernel)")]
    UnknownRuntime(String),
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("--net-manager-socket: {0}")]
    Overlay(crate::overlay::OverlayError),
}

/// A started engine: instances recovered, not yet linked to a cluster.
pub struct Node {
    pub engine: Arc<Engine>,
    config: Config,
    updates: tokio::sync::mpsc::UnboundedReceiver<canopy_proto::worker::JobStatus>,
}

impl Node {
    /// Opens the state, connects the runtimes and recovers persisted instances (no cluster
    /// needed).
    pub async fn start(config: &Config) -> Result<Node, StartError> {
        let dir = |e| StartError::DataDir(config.data_dir.display().to_string(), e);
        std::fs::create_dir_all(&config.data_dir).map_err(dir)?;
        let scratch = config.data_dir.join("scratch");
        std::fs::create_dir_all(&scratch).map_err(dir)?;
        let mut runtimes: Vec<Arc<dyn Runtime>> = Vec::new();
        for name in &config.runtimes {
            let rt_err = |error| StartError::Runtime {
                name: name.clone(),
                error,
            };
            match name.trim() {
                "container" | "docker" => runtimes.push(Arc::new(
                    ContainerdRuntime::connect(
                        &config.containerd_socket,
                        &config.containerd_namespace,
                        config.insecure_registries.clone(),
                        scratch.clone(),
                    )
                    .await
                    .map_err(rt_err)?,
                )),
                "wasm" => runtimes.push(Arc::new(WasmRuntime::new().map_err(rt_err)?)),
                "unikernel" => runtimes.push(Arc::new(
                    QemuRuntime::new(config.data_dir.join("unikernel"), config.unikernel_accel)
                        .await
                        .map_err(rt_err)?,
                )),
                "" => {}
                other => return Err(StartError::UnknownRuntime(other.to_owned())),
            }
        }
        Node::with_runtimes(config, runtimes).await
    }

    /// Opens the state with these runtimes and recovers persisted instances.
    pub async fn with_runtimes(
        config: &Config,
        runtimes: Vec<Arc<dyn Runtime>>,
    ) -> Result<Node, StartError> {
        let dir = |e| StartError::DataDir(config.data_dir.display().to_string(), e);
        std::fs::create_dir_all(config.log_dir()).map_err(dir)?;
        let store = canopy_store::StoreConfig::choose(None, "", &config.data_dir)
            .open()
            .await?;
        let (engine, updates) = Engine::new(
            runtimes,
            store,
            EngineConfig {
                log_dir: config.log_dir(),
                stop_grace: config.stop_grace(),
                public_ip: crate::host::primary_ipv4(),
                overlay: match config.overlay_socket() {
                    Some(socket) => Some(
                        crate::overlay::NetManager::new(socket, &config.data_dir.join("resolv"))
                            .map_err(StartError::Overlay)?,
                    ),
                    None => None,
                },
            },
        );
        engine.recover().await?;
        Ok(Node {
            engine,
            config: config.clone(),
            updates,
        })
    }

    /// Serves the local API on `api` and holds the cluster link until `shutdown`; `link`, when
    /// given, is told how the link stands.
    pub async fn serve(
        self,
        api: tokio::net::TcpListener,
        link: Option<watch::Sender<LinkState>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let stopper = canopy_daemon::Stopper::new(shutdown);
        let engine = self.engine.clone();
        let remove_on_exit = self.config.remove_on_exit;
        let check_every = self.config.untracked_check_interval();
        let uplink_task = tokio::spawn(self.hold_link(link, stopper.stopped()));
        let (checked, checks_end) = (engine.clone(), stopper.stopped());
        let checker = tokio::spawn(async move {
            canopy_daemon::every(check_every, checks_end, || async {
                checked.remove_untracked().await;
            })
            .await;
        });
        let http =
            axum::serve(api, api::router(engine.clone())).with_graceful_shutdown(stopper.stopped());
        let served = http.await.map_err(StartError::Serve);
        let _ = uplink_task.await;
        let _ = checker.await;
        // Whatever happened to the API, nothing in flight is abandoned.
        engine.shutdown(remove_on_exit).await;
        served
    }

    /// Registers with the cluster and holds the worker protocol until `shutdown`.
    pub async fn hold_link(
        self,
        link: Option<watch::Sender<LinkState>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let state = link.unwrap_or_else(|| watch::channel(LinkState::Offline).0);
        let uplink = Uplink::new(
            self.engine.clone(),
            UplinkConfig {
                cluster_addr: self.config.cluster_addr.clone(),
                join_token: self.config.join_token.clone(),
                name: crate::host::node_name(self.config.name.as_deref()),
                report_interval: self.config.report_interval(),
                report_refresh: self.config.report_refresh(),
                keep_alive: self.config.keep_alive(),
                data_dir: self.config.data_dir.clone(),
                overlay_address: self.config.overlay_address,
                offer_memory_mb: self.config.offer_memory_mb,
            },
            state,
        );
        uplink.run(self.updates, shutdown).await;
    }
}
