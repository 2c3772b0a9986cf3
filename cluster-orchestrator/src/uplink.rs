//! The root link client: registers with the root under the cluster's stored identity, holds one
//! session, and reconnects with back-off after any failure. Up: resource reports every
//! interval (liveness), instance reports until acknowledged, command acks. Down: commands,
//! applied by the control plane (idempotent), status acks and the overlay view.
//!
//! [`RootAddressPlan`] gives workers their overlay subnets: a unary call to the root under the
//! session's credentials.

use crate::control::{AddressPlan, Cluster};
use canopy_core::link::{ClusterLocation, Command, CommandAck, CommandAction, Registration};
use canopy_core::logs::{LogChunk, LogOpen};
use canopy_core::overlay::GlobalView;
use canopy_core::span::{self, Hop};
use canopy_core::{ClusterId, NodeId};
use canopy_proto::burst::run_of;
use canopy_proto::pb::cluster_link_client::ClusterLinkClient;
use canopy_proto::pb::{self, cluster_message, root_message};
use std::net::Ipv4Addr;
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
    /// Told the session's credentials at every registration.
    pub address_plan: Arc<RootAddressPlan>,
}

/// Worker subnets from the root's address plan, asked for under the current registration.
#[derive(Debug)]
pub struct RootAddressPlan {
    root_addr: String,
    /// The cluster id and session token of the current registration.
    credentials: std::sync::Mutex<Option<(ClusterId, String)>>,
}

impl RootAddressPlan {
    pub fn new(root_addr: &str) -> Arc<RootAddressPlan> {
        Arc::new(RootAddressPlan {
            root_addr: root_addr.to_owned(),
            credentials: std::sync::Mutex::new(None),
        })
    }

    fn set(&self, id: ClusterId, token: String) {
        *self
            .credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((id, token));
    }

    async fn call(&self, node: &NodeId, allocate: bool) -> Result<String, String> {
        let Some((cluster, token)) = self
            .credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        else {
            return Err("the cluster is not registered at the root yet".into());
        };
        let mut client = ClusterLinkClient::connect(format!("http://{}", self.root_addr))
            .await
            .map_err(|e| format!("cannot reach the root: {e}"))?;
        let req = pb::SubnetRequest {
            cluster_id: cluster.to_string(),
            session_token: token,
            node_id: node.to_string(),
        };
        let answer = if allocate {
            client.allocate_subnet(req).await
        } else {
            client.release_subnet(req).await
        };
        answer
            .map(|a| a.into_inner().subnet)
            .map_err(|s| format!("the root refused: {}", s.message()))
    }
}

#[async_trait::async_trait]
impl AddressPlan for RootAddressPlan {
    async fn allocate(&self, node: &NodeId) -> Result<Ipv4Addr, String> {
        let subnet = self.call(node, true).await?;
        subnet
            .parse()
            .map_err(|_| format!("the root gave {subnet:?}, not a subnet address"))
    }

    async fn release(&self, node: &NodeId) -> Result<(), String> {
        self.call(node, false).await.map(|_| ())
    }
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

        self.address_plan
            .set(id.clone(), answer.session_token.clone());
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
        let mut log_chunks = cluster.attach_log_uplink();
        loop {
            // Everything queued and not sent yet goes first.
            for (r, job) in cluster.reports_to_send(last_sent).await {
                last_sent = r.seq;
                tx.send(send(cluster_message::Body::Instance(
                    pb::InstanceReport::from(&r),
                )))
                .await
                .map_err(|_| closed())?;
                if let Some(job) = job {
                    span::mark(Hop::ClusterReported, &job, r.instance.0);
                }
            }
            tokio::select! {
                _ = cluster.reports_ready().notified() => {}
                Some(chunk) = log_chunks.recv() => {
                    tx.send(send(cluster_message::Body::LogChunk(pb::LogChunk::from(&chunk))))
                        .await
                        .map_err(|_| closed())?;
                }
                _ = reports.tick() => {
                    let r = cluster.resource_report().await;
                    tx.send(send(cluster_message::Body::Report(pb::ClusterReport::from(&r))))
                        .await
                        .map_err(|_| closed())?;
                }
                burst = canopy_proto::burst::next_burst(&mut inbound) => {
                    let Some(burst) = burst? else { return Ok(()) };
                    let mut messages = burst.messages.into_iter().peekable();
                    while let Some(msg) = messages.next() {
                        match msg.body {
                            Some(root_message::Body::Command(c)) => {
                                // This command and the ones right behind it: one change.
                                let wire = run_of(
                                    c,
                                    &mut messages,
                                    |m| matches!(m.body, Some(root_message::Body::Command(_))),
                                    |m| match m.body {
                                        Some(root_message::Body::Command(c)) => Some(c),
                                        _ => None,
                                    },
                                );
                                let cmds: Vec<Command> = wire
                                    .into_iter()
                                    .filter_map(|c| {
                                        Command::try_from(c)
                                            .map_err(|e| tracing::warn!(error = %e, "invalid command from the root"))
                                            .ok()
                                    })
                                    .collect();
                                for c in &cmds {
                                    if let CommandAction::Deploy { spec, instance, .. } = &c.action {
                                        span::mark(Hop::ClusterReceived, &spec.job_name, instance.0);
                                    }
                                }
                                let result = cluster.apply_commands(&cmds).await.map_err(|e| e.to_string());
                                for cmd in cmds {
                                    let ack = CommandAck { id: cmd.id, result: result.clone() };
                                    tx.send(send(cluster_message::Body::Ack(pb::CommandAck::from(&ack))))
                                        .await
                                        .map_err(|_| closed())?;
                                }
                            }
                            Some(root_message::Body::StatusAck(a)) => {
                                // Acknowledgements are cumulative: the last one says it all.
                                let seq = run_of(
                                    a.seq,
                                    &mut messages,
                                    |m| matches!(m.body, Some(root_message::Body::StatusAck(_))),
                                    |m| match m.body {
                                        Some(root_message::Body::StatusAck(a)) => Some(a.seq),
                                        _ => None,
                                    },
                                )
                                .into_iter()
                                .max()
                                .unwrap_or(a.seq);
                                cluster.reports_acked(seq).await;
                            }
                            Some(root_message::Body::Overlay(v)) => match GlobalView::try_from(v) {
                                Ok(v) => cluster.set_global_overlay(v).await,
                                Err(e) => tracing::warn!(error = %e, "invalid overlay view from the root ignored"),
                            },
                            Some(root_message::Body::LogOpen(o)) => {
                                let stream = o.stream;
                                match LogOpen::try_from(o) {
                                    Ok(o) => cluster.open_log(o).await,
                                    Err(e) => {
                                        let refused = LogChunk::failed(stream, 0, format!("invalid log request: {e}"));
                                        tx.send(send(cluster_message::Body::LogChunk(pb::LogChunk::from(&refused))))
                                            .await
                                            .map_err(|_| closed())?;
                                    }
                                }
                            }
                            Some(root_message::Body::LogCredit(c)) => cluster.log_credit(c.into()),
                            Some(root_message::Body::LogClose(c)) => cluster.log_close(c.into()),
                            Some(root_message::Body::Welcome(_)) | None => {
                                tracing::warn!("unexpected message from the root ignored");
                            }
                        }
                    }
                    match burst.end {
                        None => {}
                        Some(Ok(())) => return Ok(()),
                        Some(Err(e)) => return Err(e.into()),
                    }
                }
            }
        }
    }
}
