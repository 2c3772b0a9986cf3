//! The root link client: registers with the root under the cluster's stored identity, holds one
//! session, and reconnects with back-off after any failure. Up: resource reports every
//! interval (liveness), instance reports until acknowledged, command acks. Down: commands,
//! applied by the control plane (idempotent), and status acks.

use crate::control::Cluster;
use canopy_core::ClusterId;
use canopy_core::link::{ClusterLocation, Command, CommandAck, Registration};
use canopy_proto::pb::cluster_link_client::ClusterLinkClient;
use canopy_proto::pb::{self, cluster_message, root_message};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How to reach and join the root.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// `HOST:PORT` of the root's cluster link.
    pub root_addr: String,
    pub join_token: String,
    pub name: String,
    pub location: Option<ClusterLocation>,
    pub report_every: Duration,
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot reach the root: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the root refused: {0}")]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Protocol(String),
}

impl Uplink {
    /// Keeps a session with the root until `shutdown`. `connected` tells whether one is up.
    pub async fn run(
        self,
        cluster: Arc<Cluster>,
        connected: Arc<AtomicBool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                _ = &mut shutdown => break,
                r = self.session(&cluster, &connected) => r,
            };
            connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => tracing::info!("root closed the session"),
                Err(LinkError::Status(s)) if s.code() == tonic::Code::Unauthenticated => {
                    tracing::error!(error = %s, "the root refused the cluster's join token")
                }
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "root link down"),
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(200);
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        connected.store(false, Ordering::Relaxed);
    }

    async fn session(&self, cluster: &Cluster, connected: &AtomicBool) -> Result<(), LinkError> {
        let mut client = ClusterLinkClient::connect(format!("http://{}", self.root_addr)).await?;
        let reg = Registration {
            join_token: self.join_token.clone(),
            cluster_name: self.name.clone(),
            location: self.location,
            cluster_id: cluster.cluster_id().await,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let answer = client
            .register(pb::RegisterRequest::from(&reg))
            .await?
            .into_inner();
        let id = ClusterId::parse(answer.cluster_id)
            .map_err(|e| LinkError::Protocol(format!("cluster_id from the root: {e}")))?;
        cluster
            .set_cluster_id(id.clone())
            .await
            .map_err(|e| LinkError::Protocol(e.to_string()))?;

        let (tx, rx) = mpsc::channel::<pb::ClusterMessage>(256);
        let send = |body| pb::ClusterMessage { body: Some(body) };
        tx.send(send(cluster_message::Body::Hello(pb::Hello {
            cluster_id: id.to_string(),
            session_token: answer.session_token,
        })))
        .await
        .map_err(|_| LinkError::Protocol("session closed".into()))?;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(LinkError::Protocol("session closed before welcome".into()));
        };
        let Some(root_message::Body::Welcome(welcome)) = first.body else {
            return Err(LinkError::Protocol(
                "the root's first message is not welcome".into(),
            ));
        };
        cluster.root_has(welcome.last_acked_seq).await;
        connected.store(true, Ordering::Relaxed);
        tracing::info!(cluster = %id, root = %self.root_addr, "root session open");

        let closed = || LinkError::Protocol("session closed".into());
        let mut last_sent = welcome.last_acked_seq;
        let mut reports = tokio::time::interval(self.report_every);
        loop {
            // Everything queued and not sent yet goes first.
            for r in cluster.pending_reports().await {
                if r.seq > last_sent {
                    last_sent = r.seq;
                    tx.send(send(cluster_message::Body::Instance(
                        pb::InstanceReport::from(&r),
                    )))
                    .await
                    .map_err(|_| closed())?;
                }
            }
            tokio::select! {
                _ = cluster.reports_ready().notified() => {}
                _ = reports.tick() => {
                    let r = cluster.resource_report().await;
                    tx.send(send(cluster_message::Body::Report(pb::ClusterReport::from(&r))))
                        .await
                        .map_err(|_| closed())?;
                }
                msg = inbound.message() => {
                    let Some(msg) = msg? else { return Ok(()) };
                    match msg.body {
                        Some(root_message::Body::Command(c)) => {
                            let ack = match Command::try_from(c) {
                                Ok(cmd) => {
                                    let result = cluster.apply_command(&cmd).await.map_err(|e| e.to_string());
                                    CommandAck { id: cmd.id, result }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "invalid command from the root");
                                    continue;
                                }
                            };
                            tx.send(send(cluster_message::Body::Ack(pb::CommandAck::from(&ack))))
                                .await
                                .map_err(|_| closed())?;
                        }
                        Some(root_message::Body::StatusAck(a)) => cluster.reports_acked(a.seq).await,
                        Some(root_message::Body::Welcome(_)) | None => {
                            tracing::warn!("unexpected message from the root ignored");
                        }
                    }
                }
            }
        }
    }
}
