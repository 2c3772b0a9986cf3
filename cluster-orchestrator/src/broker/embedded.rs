//! The embedded broker: `mqtt5`'s broker with [`Access`] as its authentication provider, on a
//! tokio runtime of its own (threads `mqtt-broker`): keep-alive answers and deliveries to
//! a thousand workers do not wait behind the cluster's control work on a busy machine (on the
//! cluster's runtime, a placement burst made the broker miss workers' 1.5 s keep-alive
//! deadlines, and each such worker was declared lost). It sets TCP_NODELAY on every accepted
//! connection, keeps nothing on disk and stops with the cluster ([`EmbeddedBroker::stop`], or
//! on drop).

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
use tokio::sync::oneshot;

/// Messages, and bytes, the broker keeps for one subscriber that is behind (the cluster's own
/// client, in a burst) before it drops the oldest.
const QUEUED_PER_CLIENT: usize = 1_000_000;
const QUEUED_BYTES_PER_CLIENT: usize = 512 << 20;

/// The broker in this process.
pub struct EmbeddedBroker {
    access: Arc<Access>,
    addr: SocketAddr,
    shutdown: BrokerShutdownHandle,
    /// Resolves when the broker's thread has finished.
    finished: Mutex<Option<oneshot::Receiver<()>>>,
}

/// Worker threads of the broker's runtime.
const BROKER_THREADS: usize = 2;

impl EmbeddedBroker {
    /// Binds `listen` and serves on a runtime of its own; `cluster_user`/`cluster_password`
    /// are the cluster's own credentials.
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
                // What waits for a subscriber that reads slower than it is sent to. The
                // cluster's own client hears every worker: with the default (10,000) a burst
                // of statuses from a thousand workers dropped acknowledged messages.
                max_queued_messages_per_client: QUEUED_PER_CLIENT,
                max_queued_bytes_per_client: QUEUED_BYTES_PER_CLIENT,
                ..StorageConfig::default()
            });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(BROKER_THREADS)
            .thread_name("mqtt-broker")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the broker's runtime: {e}"))?;
        let (started_tx, started) = oneshot::channel();
        let (finished_tx, finished) = oneshot::channel();
        let provider = access.clone();
        std::thread::Builder::new()
            .name("mqtt-broker".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut broker = match MqttBroker::with_config(config).await {
                        Ok(b) => b.with_auth_provider(provider),
                        Err(e) => {
                            let _ = started_tx.send(Err(format!("cannot listen on {listen}: {e}")));
                            return;
                        }
                    };
                    let addr = broker.local_addr().unwrap_or(listen);
                    let shutdown = broker.shutdown_handle();
                    let ready = broker.ready_receiver();
                    let _ = started_tx.send(Ok((addr, shutdown, ready)));
                    if let Err(e) = broker.run().await {
                        tracing::error!(error = %e, "embedded MQTT broker stopped");
                    }
                });
                let _ = finished_tx.send(());
            })
            .map_err(|e| format!("cannot start the broker's thread: {e}"))?;
        let (addr, shutdown, mut ready) = started
            .await
            .map_err(|_| "the broker's thread ended before it listened".to_owned())??;
        // Ready means accepting: the cluster's own client connects right after this.
        let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
        tracing::info!(%addr, "embedded MQTT broker listening");
        Ok(Arc::new(EmbeddedBroker {
            access,
            addr,
            shutdown,
            finished: Mutex::new(Some(finished)),
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
        let finished = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(finished) = finished {
            let _ = tokio::time::timeout(Duration::from_secs(6), finished).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    /// A subscriber that does not read while 40,000 QoS 1 messages (four times the broker's
    /// default queue of 10,000) are published gets every one of them once it reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_falls_behind_loses_nothing() {
        let broker = EmbeddedBroker::start("127.0.0.1:0".parse().unwrap(), "cluster", "pw")
            .await
            .unwrap();
        let port = broker.local_addr().port();
        let node = NodeId::parse("burst-node").unwrap();
        broker.allow(&node, "node-pw").await.unwrap();

        let mut opts = MqttOptions::new("cluster-sub", "127.0.0.1", port);
        opts.set_credentials("cluster", "pw")
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true);
        let (sub, mut sub_events) = AsyncClient::new(opts, 64);
        sub.subscribe("nodes/+/job", QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_events.poll().await.unwrap() {
                break;
            }
        }

        const N: usize = 40_000;
        let mut opts = MqttOptions::new("burst-node-ne", "127.0.0.1", port);
        opts.set_credentials("burst-node", "node-pw")
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(100);
        let (publisher, mut pub_events) = AsyncClient::new(opts, 1000);
        let sender = tokio::spawn(async move {
            for i in 0..N {
                publisher
                    .publish(
                        "nodes/burst-node/job",
                        QoS::AtLeastOnce,
                        false,
                        format!("{i:0>200}"),
                    )
                    .await
                    .unwrap();
            }
        });
        let mut acked = 0;
        while acked < N {
            if let Event::Incoming(Packet::PubAck(_)) = pub_events.poll().await.unwrap() {
                acked += 1;
            }
        }
        sender.await.unwrap();

        // Every message was acknowledged to its sender before the subscriber read one.
        let mut seen = std::collections::BTreeSet::new();
        let reading = async {
            while seen.len() < N {
                if let Event::Incoming(Packet::Publish(p)) = sub_events.poll().await.unwrap() {
                    seen.insert(String::from_utf8_lossy(&p.payload).into_owned());
                }
            }
        };
        let done = tokio::time::timeout(Duration::from_secs(60), reading).await;
        assert!(done.is_ok(), "the subscriber got {} of {N}", seen.len());
        broker.stop().await;
    }
}
