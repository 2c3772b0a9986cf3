//! The cluster link server (gRPC, `--grpc-addr`, default port 50052): clusters register with the
//! cluster join token, then hold one session that carries their reports up and commands down.
//! Wire ⇄ domain conversions are in `canopy-proto`; the decisions are in [`crate::control`].

use crate::control::{self, Outbound, Root};
use canopy_core::link::{
    ClusterReport, Command, CommandAck, CommandAction, InstanceReport, Registration,
};
use canopy_core::span::{self, Hop};
use canopy_core::{ClusterId, NodeId};
use canopy_proto::burst::run_of;
use canopy_proto::pb::cluster_link_server::{ClusterLink, ClusterLinkServer};
use canopy_proto::pb::{self, cluster_message, root_message};
use canopy_store::secrets::constant_time_eq;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// The tonic service.
pub struct LinkService {
    root: Arc<Root>,
    join_token: String,
    /// Changes (closes) when the server shuts down; open sessions end then.
    stop: tokio::sync::watch::Receiver<()>,
}

impl LinkService {
    pub fn new(
        root: Arc<Root>,
        join_token: String,
        stop: tokio::sync::watch::Receiver<()>,
    ) -> ClusterLinkServer<LinkService> {
        ClusterLinkServer::new(LinkService {
            root,
            join_token,
            stop,
        })
    }
}

fn status_of(e: control::Error) -> Status {
    use control::Error as E;
    match e {
        E::NotFound { .. } => Status::not_found(e.to_string()),
        E::BadCredentials => Status::unauthenticated("session token is not valid; register again"),
        E::Conflict { .. } => Status::already_exists(e.to_string()),
        E::BadRequest { .. } | E::Unprocessable { .. } => Status::invalid_argument(e.to_string()),
        E::QuotaExceeded { .. } => Status::resource_exhausted(e.to_string()),
        E::Forbidden => Status::permission_denied(e.to_string()),
        E::Store(_) | E::Auth(_) => Status::unavailable(e.to_string()),
    }
}

type RootStream = Pin<Box<dyn Stream<Item = Result<pb::RootMessage, Status>> + Send>>;

fn message(body: root_message::Body) -> pb::RootMessage {
    pb::RootMessage { body: Some(body) }
}

#[tonic::async_trait]
impl ClusterLink for LinkService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let reg = Registration::try_from(request.into_inner())?;
        if !constant_time_eq(&reg.join_token, &self.join_token) {
            tracing::warn!(name = %reg.cluster_name, "cluster registration with a wrong join token");
            return Err(Status::unauthenticated("wrong cluster join token"));
        }
        let registered = self.root.register_cluster(&reg).await.map_err(status_of)?;
        Ok(Response::new(pb::RegisterResponse {
            cluster_id: registered.id.to_string(),
            session_token: registered.session_token,
        }))
    }

    async fn allocate_subnet(
        &self,
        request: Request<pb::SubnetRequest>,
    ) -> Result<Response<pb::SubnetGrant>, Status> {
        let (cluster, node, token) = subnet_request(request.into_inner())?;
        let subnet = self
            .root
            .allocate_subnet(&cluster, &token, &node)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SubnetGrant {
            subnet: subnet.to_string(),
        }))
    }

    async fn release_subnet(
        &self,
        request: Request<pb::SubnetRequest>,
    ) -> Result<Response<pb::SubnetGrant>, Status> {
        let (cluster, node, token) = subnet_request(request.into_inner())?;
        self.root
            .release_subnet(&cluster, &token, &node)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SubnetGrant::default()))
    }

    type SessionStream = RootStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::ClusterMessage>>,
    ) -> Result<Response<RootStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("session closed before hello"))?;
        let Some(cluster_message::Body::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument(
                "body: the first session message must be hello",
            ));
        };
        let cluster = ClusterId::parse(hello.cluster_id)
            .map_err(|e| Status::invalid_argument(format!("hello.cluster_id: {e}")))?;
        let control::Session {
            last_acked_seq: last_seq,
            generation,
            outbound: mut commands,
        } = self
            .root
            .open_session(&cluster, &hello.session_token)
            .await
            .map_err(status_of)?;
        tracing::info!(cluster = %cluster, "cluster session opened");

        let (out_tx, out_rx) = mpsc::channel::<Result<pb::RootMessage, Status>>(64);
        let welcome = message(root_message::Body::Welcome(pb::Welcome {
            last_acked_seq: last_seq,
        }));
        out_tx
            .send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("session closed"))?;
        let root = self.root.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    cmd = commands.recv() => {
                        let Some(cmd) = cmd else { break };
                        let m = match &cmd {
                            Outbound::Command(c) => message(root_message::Body::Command(pb::Command::from(c))),
                            Outbound::Overlay(v) => message(root_message::Body::Overlay(pb::OverlayView::from(&**v))),
                            Outbound::LogOpen(o) => message(root_message::Body::LogOpen(pb::LogOpen::from(o))),
                            Outbound::LogCredit(c) => message(root_message::Body::LogCredit(pb::LogCredit::from(c))),
                            Outbound::LogClose(c) => message(root_message::Body::LogClose(pb::LogClose::from(c))),
                        };
                        if out_tx.send(Ok(m)).await.is_err() { break; }
                        if let Outbound::Command(Command { action: CommandAction::Deploy { spec, instance, .. }, .. }) = &cmd {
                            span::mark(Hop::RootSent, &spec.job_name, instance.0);
                        }
                    }
                    burst = canopy_proto::burst::next_burst(&mut inbound) => {
                        let burst = match burst {
                            Ok(Some(b)) => b,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::info!(cluster = %cluster, error = %e, "cluster session ended");
                                break;
                            }
                        };
                        let (replies, failed) = handle_burst(&root, &cluster, burst.messages).await;
                        let mut open = true;
                        for reply in replies {
                            if out_tx.send(Ok(reply)).await.is_err() { open = false; break; }
                        }
                        if let Some(status) = failed {
                            tracing::warn!(cluster = %cluster, error = %status, "cluster session failed");
                            let _ = out_tx.send(Err(status)).await;
                            break;
                        }
                        match burst.end {
                            None if open => {}
                            Some(Err(e)) => {
                                tracing::info!(cluster = %cluster, error = %e, "cluster session ended");
                                break;
                            }
                            _ => break,
                        }
                    }
                }
            }
            root.close_session(&cluster, generation);
            tracing::info!(cluster = %cluster, "cluster session closed");
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn subnet_request(r: pb::SubnetRequest) -> Result<(ClusterId, NodeId, String), Status> {
    let cluster = ClusterId::parse(r.cluster_id)
        .map_err(|e| Status::invalid_argument(format!("cluster_id: {e}")))?;
    let node =
        NodeId::parse(r.node_id).map_err(|e| Status::invalid_argument(format!("node_id: {e}")))?;
    Ok((cluster, node, r.session_token))
}

/// Messages that arrived together from a cluster, in order; returns the replies to send and,
/// if handling stopped, why (then the session ends). Consecutive instance reports are applied
/// as one change with one acknowledgement (of the highest sequence number stored), and
/// consecutive command acknowledgements as one change.
async fn handle_burst(
    root: &Root,
    cluster: &ClusterId,
    messages: Vec<pb::ClusterMessage>,
) -> (Vec<pb::RootMessage>, Option<Status>) {
    let mut replies = Vec::new();
    let mut messages = messages.into_iter().peekable();
    while let Some(msg) = messages.next() {
        let result = match msg.body {
            Some(cluster_message::Body::Instance(r)) => {
                let wire = run_of(
                    r,
                    &mut messages,
                    |m| matches!(m.body, Some(cluster_message::Body::Instance(_))),
                    |m| match m.body {
                        Some(cluster_message::Body::Instance(r)) => Some(r),
                        _ => None,
                    },
                );
                instance_reports(root, cluster, wire).await
            }
            Some(cluster_message::Body::Ack(a)) => {
                let wire = run_of(
                    a,
                    &mut messages,
                    |m| matches!(m.body, Some(cluster_message::Body::Ack(_))),
                    |m| match m.body {
                        Some(cluster_message::Body::Ack(a)) => Some(a),
                        _ => None,
                    },
                );
                command_acks(root, cluster, wire).await
            }
            body => handle(root, cluster, pb::ClusterMessage { body }).await,
        };
        match result {
            Ok(reply) => replies.extend(reply),
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                dropped(cluster, &status);
            }
            Err(status) => return (replies, Some(status)),
        }
    }
    (replies, None)
}

/// Instance reports (those that do not convert are dropped), stored as one change; the reply
/// acknowledges the highest sequence number stored.
async fn instance_reports(
    root: &Root,
    cluster: &ClusterId,
    wire: Vec<pb::InstanceReport>,
) -> Result<Option<pb::RootMessage>, Status> {
    let reports: Vec<InstanceReport> = wire
        .into_iter()
        .filter_map(|r| {
            InstanceReport::try_from(r)
                .map_err(|e| dropped(cluster, &Status::from(e)))
                .ok()
        })
        .collect();
    if reports.is_empty() {
        return Ok(None);
    }
    let seq = root
        .instance_reports(cluster, reports)
        .await
        .map_err(status_of)?;
    Ok(Some(message(root_message::Body::StatusAck(
        pb::StatusAck { seq },
    ))))
}

/// Command acknowledgements, stored as one change.
async fn command_acks(
    root: &Root,
    cluster: &ClusterId,
    wire: Vec<pb::CommandAck>,
) -> Result<Option<pb::RootMessage>, Status> {
    let acks = wire.into_iter().map(CommandAck::from).collect();
    root.command_acks(cluster, acks).await.map_err(status_of)?;
    Ok(None)
}

fn dropped(cluster: &ClusterId, status: &Status) {
    tracing::warn!(cluster = %cluster, error = %status, "invalid message from cluster dropped");
}

/// One message from a cluster; returns the reply to send, if any. A message that does not
/// convert is logged and dropped (the session goes on); a store failure ends the session so the
/// cluster retries later.
async fn handle(
    root: &Root,
    cluster: &ClusterId,
    msg: pb::ClusterMessage,
) -> Result<Option<pb::RootMessage>, Status> {
    match apply(root, cluster, msg).await {
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            dropped(cluster, &status);
            Ok(None)
        }
        other => other,
    }
}

async fn apply(
    root: &Root,
    cluster: &ClusterId,
    msg: pb::ClusterMessage,
) -> Result<Option<pb::RootMessage>, Status> {
    match msg.body {
        Some(cluster_message::Body::Report(r)) => {
            let report = ClusterReport::try_from(r)?;
            root.cluster_report(cluster, report).await;
            Ok(None)
        }
        Some(cluster_message::Body::Instance(r)) => instance_reports(root, cluster, vec![r]).await,
        Some(cluster_message::Body::Ack(a)) => command_acks(root, cluster, vec![a]).await,
        Some(cluster_message::Body::LogChunk(c)) => {
            root.log_chunk(cluster, c.into());
            Ok(None)
        }
        Some(cluster_message::Body::Hello(_)) => Err(Status::invalid_argument(
            "body: hello is only allowed as the first message",
        )),
        None => Err(Status::invalid_argument("body: missing")),
    }
}
