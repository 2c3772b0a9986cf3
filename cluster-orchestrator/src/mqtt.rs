//! The cluster's MQTT client: subscribes to what workers publish, decodes and checks each
//! message and hands the control plane domain values, and publishes the control plane's
//! deploy/delete messages. A malformed payload is logged and dropped; it never stops the
//! loop. MQTT message metrics (both directions) are counted here.
//!
//! Incoming messages go through a queue to one task that takes whatever has arrived
//! ([`dispatch_all`]): consecutive job statuses, from any workers, become one change of the
//! control plane (one store commit) instead of one each, so a burst of statuses costs one
//! commit. Order is kept: any other message first flushes the statuses before it.

use crate::broker::{DYNSEC_RESPONSE_TOPIC, DynsecWaiters, dynsec_response};
use crate::control::{Cluster, Publish, UsageReport};
use canopy_core::span::{self, Hop};
use canopy_core::{InstanceNumber, InstanceStatus};
use canopy_proto::worker::topics::{self, Incoming};
use canopy_proto::worker::{
    DeployMessage, JobStatus, LogDataMessage, NodeInformation, ResourcesReport,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where the cluster's own client connects.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

/// Builds the client (not yet connected: the event loop connects when run).
pub fn client(endpoint: &Endpoint, client_id: &str) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    opts.set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true)
        .set_credentials(endpoint.username.clone(), endpoint.password.clone())
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    // Deploys go out at once (Nagle's algorithm would hold one behind an unacknowledged one).
    // It was off for a while over lost dynsec answers: see docs/benchmarks.md.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    (client, events)
}

/// Runs the event loop until `shutdown`: dispatches incoming messages, reconnects with back-off.
pub async fn run(
    cluster: Arc<Cluster>,
    client: AsyncClient,
    mut events: EventLoop,
    mut outgoing: mpsc::UnboundedReceiver<Publish>,
    dynsec: Option<DynsecWaiters>,
    subscribed: tokio::sync::watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (ingress, queued) = mpsc::channel(INGRESS_QUEUE);
    let ingress_task = tokio::spawn(run_ingress(cluster.clone(), queued));
    let publisher = client.clone();
    let counter = cluster.clone();
    let publish_task = tokio::spawn(async move {
        while let Some(p) = outgoing.recv().await {
            let kind = topic_kind(&p.topic);
            counter.metrics.mqtt_message("out", kind);
            // The deploy's key, read back from the payload only when span marks are on.
            let deploy = (kind == "deploy" && span::enabled())
                .then(|| serde_json::from_slice::<DeployMessage>(&p.payload).ok())
                .flatten();
            if let Err(e) = publisher
                .publish(p.topic, QoS::AtLeastOnce, false, p.payload)
                .await
            {
                tracing::warn!(error = %e, "MQTT publish failed");
            } else if let Some(d) = deploy {
                span::mark(Hop::ClusterPublished, &d.job_name, d.instance_number);
            }
        }
    });
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    let mut pending_subacks = 0usize;
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            e = events.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!("connected to the MQTT broker");
                let mut filters: Vec<&str> = topics::CLUSTER_FILTERS.to_vec();
                if dynsec.is_some() {
                    filters.push(DYNSEC_RESPONSE_TOPIC);
                }
                pending_subacks = filters.len();
                for f in filters {
                    if let Err(e) = client.subscribe(f, QoS::AtLeastOnce).await {
                        tracing::error!(filter = f, error = %e, "MQTT subscribe failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                pending_subacks = pending_subacks.saturating_sub(1);
                if pending_subacks == 0 {
                    subscribed.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == DYNSEC_RESPONSE_TOPIC {
                    if let Some(w) = &dynsec {
                        dynsec_response(w, &p.payload);
                    }
                    continue;
                }
                if ingress.send((p.topic, p.payload)).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                subscribed.send_replace(false);
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection failed");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    publish_task.abort();
    drop(ingress);
    let _ = ingress_task.await;
    let _ = client.disconnect().await;
}

/// Messages received and not yet handed to the control plane, at most.
const INGRESS_QUEUE: usize = 4096;
/// Messages taken from the queue at once, at most.
const INGRESS_BATCH: usize = 512;

async fn run_ingress(cluster: Arc<Cluster>, mut queued: mpsc::Receiver<(String, bytes::Bytes)>) {
    let mut batch = Vec::with_capacity(INGRESS_BATCH);
    while queued.recv_many(&mut batch, INGRESS_BATCH).await > 0 {
        dispatch_all(&cluster, batch.drain(..)).await;
    }
}

/// Messages from workers in the order they arrived: runs of job statuses are handed to the
/// control plane together ([`Cluster::on_job_statuses`]), every other message alone
/// ([`dispatch`]).
pub async fn dispatch_all<P: AsRef<[u8]>>(
    cluster: &Cluster,
    messages: impl IntoIterator<Item = (String, P)>,
) {
    let mut statuses = Vec::new();
    for (topic, payload) in messages {
        if let Some(Incoming::Job(node)) = topics::parse(&topic) {
            if let Some(event) = job_status(cluster, &node, payload.as_ref()) {
                statuses.push((node, event));
            }
            continue;
        }
        if !statuses.is_empty() {
            cluster.on_job_statuses(std::mem::take(&mut statuses)).await;
        }
        dispatch(cluster, &topic, payload.as_ref()).await;
    }
    if !statuses.is_empty() {
        cluster.on_job_statuses(statuses).await;
    }
}

/// A job status decoded and checked (counted), or `None` (logged and dropped).
fn job_status(
    cluster: &Cluster,
    node: &canopy_core::NodeId,
    payload: &[u8],
) -> Option<canopy_proto::worker::JobStatusEvent> {
    let parsed = serde_json::from_slice::<JobStatus>(payload)
        .map_err(|e| e.to_string())
        .and_then(|js| {
            cluster.metrics.mqtt_message("in", "job");
            js.parse().map_err(|e| e.to_string())
        });
    match parsed {
        Ok(event) => {
            if event.status == InstanceStatus::Running {
                span::mark(Hop::ClusterStatus, &event.job, event.instance.0);
            }
            Some(event)
        }
        Err(e) => {
            tracing::warn!(%node, error = %e, "bad job status dropped");
            None
        }
    }
}

/// One message from a worker, decoded, checked and handed to the control plane.
pub async fn dispatch(cluster: &Cluster, topic: &str, payload: &[u8]) {
    let Some(kind) = topics::parse(topic) else {
        tracing::debug!(topic, "message on an unknown topic dropped");
        return;
    };
    let count = |kind| cluster.metrics.mqtt_message("in", kind);
    match kind {
        Incoming::Information(node) => match serde_json::from_slice::<NodeInformation>(payload) {
            Ok(info) => match info.check() {
                Ok(()) => {
                    count("information");
                    cluster.on_information(&node, info).await;
                }
                Err(e) => tracing::warn!(%node, error = %e, "bad node information dropped"),
            },
            Err(e) => tracing::warn!(%node, error = %e, "bad node information dropped"),
        },
        Incoming::Job(node) => {
            if let Some(event) = job_status(cluster, &node, payload) {
                cluster.on_job_status(&node, event).await;
            }
        }
        Incoming::Resources(node) => match serde_json::from_slice::<ResourcesReport>(payload) {
            Ok(r) => {
                count("resources");
                let usage = r
                    .services
                    .into_iter()
                    .map(|s| UsageReport {
                        job: s.job_name,
                        instance: InstanceNumber(s.instance),
                        cpu_percent: s.cpu_percent,
                        memory_mb: s.memory,
                        logs: s.logs,
                    })
                    .collect();
                cluster.on_resources(&node, usage).await;
            }
            Err(e) => tracing::warn!(%node, error = %e, "bad resource report dropped"),
        },
        Incoming::Will(node) => {
            count("will");
            cluster.on_will(&node).await;
        }
        Incoming::LogData(node) => match serde_json::from_slice::<LogDataMessage>(payload) {
            Ok(m) => {
                count("log_data");
                cluster.on_log_data(&node, m.chunk());
            }
            Err(e) => tracing::warn!(%node, error = %e, "bad log chunk dropped"),
        },
    }
}

/// The metrics label of an outgoing topic.
fn topic_kind(topic: &str) -> &'static str {
    if topic.ends_with("/control/deploy") {
        "deploy"
    } else if topic.ends_with("/control/delete") {
        "delete"
    } else if topic.contains("/logs/") {
        "logs"
    } else {
        "other"
    }
}
