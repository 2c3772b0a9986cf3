//! The embedded broker: `mqtt5`'s broker on the cluster's tokio runtime, with [`Access`] as
//! its authentication provider. It sets TCP_NODELAY on every accepted connection, keeps
//! nothing on disk and stops with the cluster ([`EmbeddedBroker::stop`], or on drop).

use super::access::Access;
use crate::control::NodeAuth;
use crate::model::sha256_hex;
use async_trait::async_trait;
use canopy_core::NodeId;
use mqtt5::broker::config::{StorageBackend, StorageConfig};
use mqtt5::broker::{BrokerConfig, BrokerShutdownHandle, MqttBroker};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The broker in this process.
pub struct EmbeddedBroker {
    access: Arc<Access>,
    addr: SocketAddr,
    shutdown: BrokerShutdownHandle,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl EmbeddedBroker {
    /// Binds `listen` and serves on the current runtime; `cluster_user`/`cluster_password` are
    /// the cluster's own credentials.
    pub async fn start(
        listen: SocketAddr,
        cluster_user: &str,
        cluster_password: &str,
    ) -> Result<Arc<EmbeddedBroker>, String> {
        let access = Arc::new(Access::new(cluster_user, cluster_password));
        let config = BrokerConfig::default()
            .with_bind_address(listen)
            .with_max_clients(20_000)
            .with_max_packet_size(1 << 20)
            .with_sys_topics_enabled(false)
            .with_storage(StorageConfig {
                backend: StorageBackend::Memory,
                enable_persistence: false,
                ..StorageConfig::default()
            });
        let mut broker = MqttBroker::with_config(config)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?
            .with_auth_provider(access.clone());
        let addr = broker.local_addr().unwrap_or(listen);
        let shutdown = broker.shutdown_handle();
        let mut ready = broker.ready_receiver();
        let task = tokio::spawn(async move {
            if let Err(e) = broker.run().await {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        });
        // Ready means accepting: the cluster's own client connects right after this.
        let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
        tracing::info!(%addr, "embedded MQTT broker listening");
        Ok(Arc::new(EmbeddedBroker {
            access,
            addr,
            shutdown,
            task: Mutex::new(Some(task)),
        }))
    }

    /// Where it listens (the bound port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Admits the stored workers again after a restart (name, SHA-256 of the password).
    pub fn restore(&self, workers: &[(NodeId, String)]) {
        for (id, hash) in workers {
            if let Err(e) = self.access.allow_hash(id.as_str(), hash.clone()) {
                tracing::warn!(node = %id, error = %e, "stored worker not admitted");
            }
        }
    }

    /// Stops accepting, closes every connection and waits (at most 5 s) until it is done.
    pub async fn stop(&self) {
        self.shutdown.shutdown();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

#[async_trait]
impl NodeAuth for EmbeddedBroker {
    async fn allow(&self, node: &NodeId, password: &str) -> Result<(), String> {
        self.access.allow_hash(node.as_str(), sha256_hex(password))
    }
}
