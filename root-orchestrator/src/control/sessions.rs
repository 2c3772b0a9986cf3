//! The cluster side of the root: registration, sessions and their outbound channel, resource
//! and instance reports, command acknowledgements and the outbox. (The gRPC server that calls
//! these is [`crate::link`].)

use super::accounts::check_label;
use super::state::{Change, InstanceKey, State};
use super::{Error, Now, Outbound, Result, Root, SessionHandle, conflict, new_id, not_found};
use crate::model::{Cluster, PendingCommand};
use canopy_core::link::{
    ClusterReport, CommandAck, CommandAction, InstanceReport, NodeSummary, Registration,
};
use canopy_core::span::{self, Hop};
use canopy_core::{ClusterId, InstanceNumber, InstanceStatus, StatusClass};
use canopy_store::secrets;
use tokio::sync::mpsc;

/// A cluster as the API shows it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub doc: Cluster,
    pub report: Option<ClusterReport>,
    pub active: bool,
    /// Unix seconds of the last report; 0 if none since the root started.
    pub last_report: f64,
}

/// One worker of a cluster, from the cluster's last report.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The cluster, without its report.
    pub cluster: ClusterView,
    pub node: NodeSummary,
}

/// A registered cluster: its id and the token its sessions must show.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub id: ClusterId,
    pub session_token: String,
}

/// An open cluster session.
#[derive(Debug)]
pub struct Session {
    /// The highest instance-report sequence number stored from the cluster.
    pub last_acked_seq: u64,
    /// Closes exactly this session ([`Root::close_session`]).
    pub generation: u64,
    /// What to send the cluster, starting with every unacknowledged command.
    pub outbound: mpsc::UnboundedReceiver<Outbound>,
}

impl Root {
    pub async fn clusters(&self, only_active: bool) -> Vec<ClusterView> {
        let now = Now::read();
        let st = self.state.lock().await;
        let grace = self.settings.cluster_grace;
        st.clusters
            .values()
            .filter(|e| !only_active || e.active(grace, now.at))
            .map(|e| ClusterView {
                doc: e.doc.clone(),
                report: e.report.clone(),
                active: e.active(grace, now.at),
                last_report: e.last_report_unix,
            })
            .collect()
    }

    /// Registers a cluster (the join token was checked by the caller). The same name, or the
    /// id the cluster already holds, keeps its identity.
    pub async fn register_cluster(&self, reg: &Registration) -> Result<Registered> {
        check_label("cluster_name", &reg.cluster_name)?;
        let now = Now::read();
        let mut st = self.state.lock().await;
        let by_id = reg
            .cluster_id
            .as_ref()
            .filter(|id| st.clusters.contains_key(*id))
            .cloned();
        let by_name = st
            .clusters
            .values()
            .find(|e| e.doc.name == reg.cluster_name)
            .map(|e| e.doc.id.clone());
        if let (Some(a), Some(b)) = (&by_id, &by_name)
            && a != b
        {
            return Err(conflict(
                "cluster_name",
                format!("name {:?} belongs to cluster {b}", reg.cluster_name),
            ));
        }
        let id = match by_id.or(by_name) {
            Some(id) => id,
            None => match &reg.cluster_id {
                Some(id) => id.clone(),
                None => new_id()?,
            },
        };
        let token = secrets::random_token(16);
        let last_acked_seq = st.clusters.get(&id).map_or(0, |e| e.doc.last_acked_seq);
        let doc = Cluster {
            id: id.clone(),
            name: reg.cluster_name.clone(),
            location: reg.location,
            session_token: token.clone(),
            last_acked_seq,
            registered_at: now.unix,
            version: reg.version.clone(),
        };
        let mut change = Change::new(&st);
        change.put_cluster(doc, now.at)?;
        self.commit(&mut st, change).await?;
        tracing::info!(cluster = %id, name = %reg.cluster_name, "cluster registered");
        Ok(Registered {
            id,
            session_token: token,
        })
    }

    /// Opens a session for a registered cluster: checks the session token and fills the
    /// outbound channel with every unacknowledged command.
    pub async fn open_session(&self, cluster: &ClusterId, session_token: &str) -> Result<Session> {
        let now = Now::read();
        let mut st = self.state.lock().await;
        let e = st
            .clusters
            .get_mut(cluster)
            .ok_or_else(|| not_found("cluster", cluster.as_str()))?;
        if !secrets::constant_time_eq(&e.doc.session_token, session_token) {
            return Err(Error::BadCredentials);
        }
        e.last_seen = now.at;
        let last_acked_seq = e.doc.last_acked_seq;
        let (tx, outbound) = mpsc::unbounded_channel();
        for p in st.outbox.values().filter(|p| &p.cluster_id == cluster) {
            let _ = tx.send(Outbound::Command(p.command.clone()));
        }
        let overlay = self.last_overlay();
        if !overlay.peers.is_empty() {
            let _ = tx.send(Outbound::Overlay(overlay));
        }
        let generation = self
            .session_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sessions_lock()
            .insert(cluster.clone(), SessionHandle { generation, tx });
        Ok(Session {
            last_acked_seq,
            generation,
            outbound,
        })
    }

    pub fn close_session(&self, cluster: &ClusterId, generation: u64) {
        let mut sessions = self.sessions_lock();
        if sessions
            .get(cluster)
            .is_some_and(|s| s.generation == generation)
        {
            sessions.remove(cluster);
            drop(sessions);
            self.end_logs_of(cluster);
        }
    }

    /// A cluster's resource report: it is alive and has this much room. Kept in memory only.
    pub async fn cluster_report(&self, cluster: &ClusterId, mut report: ClusterReport) {
        let now = Now::read();
        let usage = std::mem::take(&mut report.usage);
        let nodes = std::mem::take(&mut report.nodes);
        let mut st = self.state.lock().await;
        let Some(e) = st.clusters.get_mut(cluster) else {
            return;
        };
        e.report = Some(report);
        e.unreported = 0;
        let overlay_moved = e
            .nodes
            .iter()
            .map(|n| (&n.id, n.overlay))
            .ne(nodes.iter().map(|n| (&n.id, n.overlay)));
        let changed = super::feed::node_changes(cluster, &e.nodes, &nodes);
        e.nodes = nodes;
        self.feed.publish(changed);
        if overlay_moved {
            self.overlay_changed();
        }
        e.last_seen = now.at;
        e.last_report_unix = now.unix;
        // Live figures and log tails: kept in memory, written with the next status change.
        let stamp = st.stamp();
        for u in usage {
            if let Some(i) = st
                .services
                .get_mut(&u.service_id)
                .and_then(|s| s.instances.get_mut(&u.instance))
                .filter(|i| i.cluster_id.as_ref() == Some(cluster))
            {
                let same = i.cpu_percent == u.cpu_percent
                    && i.memory_mb == u.memory_mb
                    && i.logs == u.logs;
                if !same {
                    i.cpu_percent = u.cpu_percent;
                    i.memory_mb = u.memory_mb;
                    i.logs = u.logs;
                    i.stamp = stamp;
                }
            }
        }
    }

    /// Every worker of every cluster, from the clusters' last reports.
    pub async fn nodes(&self) -> Vec<ClusterNode> {
        let now = Now::read();
        let st = self.state.lock().await;
        let grace = self.settings.cluster_grace;
        let mut out = Vec::new();
        for e in st.clusters.values() {
            let view = ClusterView {
                doc: e.doc.clone(),
                report: None,
                active: e.active(grace, now.at),
                last_report: e.last_report_unix,
            };
            for n in &e.nodes {
                out.push(ClusterNode {
                    cluster: view.clone(),
                    node: n.clone(),
                });
            }
        }
        out
    }

    /// Applies one instance status report; returns the sequence number to acknowledge.
    pub async fn instance_report(&self, cluster: &ClusterId, r: InstanceReport) -> Result<u64> {
        self.instance_reports(cluster, vec![r]).await
    }

    /// Applies instance status reports in the order the cluster sent them; returns the
    /// highest sequence number stored (to acknowledge). They are staged together as one
    /// change, split only where a report is about an instance already staged in it, or may be
    /// placed elsewhere (a refusal): each report is staged against the state as the ones
    /// before it left it. The answer waits for the writes, outside the lock.
    pub async fn instance_reports(
        &self,
        cluster: &ClusterId,
        reports: Vec<InstanceReport>,
    ) -> Result<u64> {
        let now = Now::read();
        let arrived = span::enabled().then(span::now_us);
        let mut st = self.state.lock().await;
        let running = match arrived {
            Some(at) => mark_running_reports(&st, &reports, at),
            None => Vec::new(),
        };
        let mut reports = reports.into_iter().peekable();
        let mut written = None;
        loop {
            let Some(e) = st.clusters.get_mut(cluster) else {
                return Err(not_found("cluster", cluster.as_str()));
            };
            e.last_seen = now.at;
            let mut doc = e.doc.clone();
            if reports.peek().is_none() {
                let seq = doc.last_acked_seq;
                // Applied to memory by now (`enqueue`): what the API shows.
                for (job, n) in &running {
                    span::mark(Hop::RootVisible, job, *n);
                }
                if let Some(durable) = written {
                    self.settle(st, durable).await?;
                }
                return Ok(seq);
            }
            let mut change = Change::new(&st);
            let mut staged = std::collections::HashSet::new();
            while let Some(r) = reports
                .next_if(|r| !staged.contains(&InstanceKey::new(r.service_id.clone(), r.instance)))
            {
                if r.seq <= doc.last_acked_seq {
                    continue;
                }
                doc.last_acked_seq = r.seq;
                staged.insert(InstanceKey::new(r.service_id.clone(), r.instance));
                let refused = r.status.class() == StatusClass::NegativeScheduling;
                self.stage_report(&st, &mut change, cluster, r, now)?;
                if refused {
                    break;
                }
            }
            if !staged.is_empty() {
                change.put_cluster(doc, now.at)?;
                written = Some(self.enqueue(&mut st, change));
            }
        }
    }

    /// Stages one instance report (its sequence number already checked).
    fn stage_report(
        &self,
        st: &State,
        change: &mut Change,
        cluster: &ClusterId,
        r: InstanceReport,
        now: Now,
    ) -> Result<()> {
        let key = InstanceKey::new(r.service_id.clone(), r.instance);
        let ours = st
            .instance(&key)
            .filter(|i| i.cluster_id.as_ref() == Some(cluster));
        match ours {
            // Unknown here, or placed elsewhere since (failover): the cluster must drop it.
            None => {
                if r.status != InstanceStatus::Undeployed {
                    change.undeploy(cluster.clone(), &key.service, Some(r.instance))?;
                }
            }
            Some(i) => {
                let mut i = i.clone();
                i.set_status(r.status, r.detail.clone(), now.unix);
                if r.status == InstanceStatus::Running {
                    i.refused_by.clear();
                } else if r.status.class() == StatusClass::NegativeScheduling
                    && !i.refused_by.contains(cluster)
                {
                    i.refused_by.push(cluster.clone());
                }
                i.node_id = r.node_id.clone();
                i.ns_ip = r.ns_ip;
                i.ready = r.ready;
                i.cpu_percent = r.cpu_percent;
                i.memory_mb = r.memory_mb;
                // The cluster has no worker for it: move it to a cluster that has not refused
                // it yet, if one fits; otherwise the cluster's answer stands.
                self.place_copy(st, change, &key, &mut i, Some(cluster), now)?;
                change.put_instance(key, i)?;
            }
        }
        Ok(())
    }

    /// A cluster acknowledged a command: it leaves the outbox. A refused deploy marks the
    /// instance `FAILED` with the cluster's reason.
    pub async fn command_ack(&self, cluster: &ClusterId, ack: CommandAck) -> Result<()> {
        self.command_acks(cluster, vec![ack]).await
    }

    /// Acknowledgements in the order the cluster sent them, committed as one change (split
    /// after a refused deploy, whose instance is staged against the state as the ones before
    /// left it).
    pub async fn command_acks(&self, cluster: &ClusterId, acks: Vec<CommandAck>) -> Result<()> {
        let now = Now::read();
        let mut st = self.state.lock().await;
        let mut acks = acks.into_iter().peekable();
        let mut written = None;
        while acks.peek().is_some() {
            let mut change = Change::new(&st);
            let mut staged = false;
            for ack in acks.by_ref() {
                let Some(p) = st.outbox.get(&ack.id) else {
                    continue;
                };
                if &p.cluster_id != cluster {
                    continue;
                }
                staged = true;
                change.acknowledged(ack.id);
                if let (
                    Err(reason),
                    CommandAction::Deploy {
                        service_id,
                        instance,
                        ..
                    },
                ) = (&ack.result, &p.command.action)
                {
                    let key = InstanceKey::new(service_id.clone(), *instance);
                    if let Some(i) = st
                        .instance(&key)
                        .filter(|i| i.cluster_id.as_ref() == Some(cluster))
                    {
                        let mut i = i.clone();
                        i.set_status(
                            InstanceStatus::Failed,
                            format!("cluster {cluster} refused the deployment: {reason}"),
                            now.unix,
                        );
                        change.put_instance(key, i)?;
                        break;
                    }
                }
            }
            if staged {
                written = Some(self.enqueue(&mut st, change));
            }
        }
        match written {
            Some(durable) => self.settle(st, durable).await,
            None => Ok(()),
        }
    }

    /// Unacknowledged commands, oldest first (for tests and diagnostics).
    pub async fn pending_commands(&self) -> Vec<PendingCommand> {
        self.state.lock().await.outbox.values().cloned().collect()
    }
}

/// Marks the `RUNNING` reports among `reports` as arrived at `at` (Unix µs) and returns their
/// job names and numbers (the span marks' keys), to be marked again once visible.
fn mark_running_reports(
    st: &State,
    reports: &[InstanceReport],
    at: u64,
) -> Vec<(canopy_core::JobName, u32)> {
    let running: Vec<(canopy_core::JobName, u32)> = reports
        .iter()
        .filter(|r| r.status == InstanceStatus::Running)
        .filter_map(|r| {
            let InstanceNumber(n) = r.instance;
            st.services
                .get(&r.service_id)
                .map(|s| (s.spec.job_name.clone(), n))
        })
        .collect();
    for (job, n) in &running {
        span::mark_at(Hop::RootReport, job, *n, at);
    }
    running
}
