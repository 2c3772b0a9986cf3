//! The overlay at the root: the worker subnets of its address plan (given to clusters for
//! their workers, kept across restarts, returned when a worker is removed) and the
//! [`GlobalView`] every cluster gets — every worker on the overlay and every service with its
//! RUNNING instances there — sent down each session whenever it changes.
//!
//! The view is a pure function of the state ([`global_view`]); [`Root::run_overlay`] computes it
//! after changes (coalesced) and sends it only when it differs from the last one sent.

use super::state::{Change, State};
use super::{Error, Now, Outbound, Result, Root, not_found};
use crate::model::SubnetGrant;
use canopy_core::InstanceStatus;
use canopy_core::overlay::{GlobalEndpoint, GlobalPeer, GlobalService, GlobalView};
use canopy_core::{ClusterId, NodeId};
use canopy_store::secrets;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

/// Changes closer together than this are sent as one view.
const COALESCE: Duration = Duration::from_millis(5);

/// The whole overlay as the root knows it: workers from the clusters' last reports, instances
/// RUNNING with an overlay address. Empty when no worker is on the overlay.
pub(super) fn global_view(st: &State) -> GlobalView {
    let mut peers = Vec::new();
    for (cluster, e) in &st.clusters {
        for n in &e.nodes {
            if let Some(peer) = n.overlay {
                peers.push(GlobalPeer {
                    cluster: cluster.clone(),
                    node: n.id.clone(),
                    peer,
                });
            }
        }
    }
    if peers.is_empty() {
        return GlobalView::default();
    }
    let services = st
        .services
        .iter()
        .map(|(id, s)| GlobalService {
            id: id.clone(),
            name: s.spec.job_name.to_string(),
            rr_ip: s.rr_ip,
            closest_ip: s.spec.closest_ip,
            instances: s
                .instances
                .values()
                .filter(|i| i.status == InstanceStatus::Running && i.ready)
                .filter_map(|i| {
                    Some(GlobalEndpoint {
                        instance: i.number,
                        instance_ip: Some(i.ip),
                        address: i.ns_ip?,
                        cluster: i.cluster_id.clone()?,
                        node: i.node_id.clone()?,
                    })
                })
                .collect(),
        })
        .collect();
    GlobalView { peers, services }
}

impl Root {
    /// Checks a cluster's session token (for the link's unary calls).
    fn check_session(st: &State, cluster: &ClusterId, token: &str) -> Result<()> {
        let e = st
            .clusters
            .get(cluster)
            .ok_or_else(|| not_found("cluster", cluster.as_str()))?;
        if secrets::constant_time_eq(&e.doc.session_token, token) {
            Ok(())
        } else {
            Err(Error::BadCredentials)
        }
    }

    /// The worker subnet of `node` of `cluster`: the one it has, or a new one from the plan.
    pub async fn allocate_subnet(
        &self,
        cluster: &ClusterId,
        session_token: &str,
        node: &NodeId,
    ) -> Result<Ipv4Addr> {
        let mut st = self.state.lock().await;
        Self::check_session(&st, cluster, session_token)?;
        if let Some(g) = st.subnets.get(&SubnetGrant::key(cluster, node)) {
            return Ok(g.subnet);
        }
        let mut pool = st.subnet_pool.clone();
        let subnet = pool.allocate().map_err(|e| Error::Conflict {
            field: "node_id".into(),
            message: format!("no worker subnet left: {e}"),
        })?;
        let mut change = Change::new(&st);
        change.put_subnet(SubnetGrant {
            cluster_id: cluster.clone(),
            node_id: node.clone(),
            subnet,
        })?;
        self.commit(&mut st, change).await?;
        tracing::info!(cluster = %cluster, node = %node, %subnet, "worker subnet given");
        Ok(subnet)
    }

    /// Returns the worker subnet of `node` of `cluster` to the plan (fine when it has none).
    pub async fn release_subnet(
        &self,
        cluster: &ClusterId,
        session_token: &str,
        node: &NodeId,
    ) -> Result<()> {
        let mut st = self.state.lock().await;
        Self::check_session(&st, cluster, session_token)?;
        let key = SubnetGrant::key(cluster, node);
        if !st.subnets.contains_key(&key) {
            return Ok(());
        }
        let mut change = Change::new(&st);
        change.delete_subnet(&key);
        self.commit(&mut st, change).await?;
        tracing::info!(cluster = %cluster, node = %node, "worker subnet returned");
        Ok(())
    }

    /// The view last sent (what a new session starts with).
    pub(super) fn last_overlay(&self) -> Arc<GlobalView> {
        self.overlay_sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Something the view depends on may have changed.
    pub(super) fn overlay_changed(&self) {
        self.overlay_dirty.notify_one();
    }

    /// Sends the overlay view to every cluster whenever it changes, until `shutdown`.
    pub async fn run_overlay(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.overlay_dirty.notified() => {}
            }
            tokio::time::sleep(COALESCE).await;
            let started = Now::read().at;
            let view = global_view(&*self.state.lock().await);
            if *self.last_overlay() == view {
                continue;
            }
            let view = Arc::new(view);
            *self
                .overlay_sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = view.clone();
            for s in self.sessions_lock().values() {
                let _ = s.tx.send(Outbound::Overlay(view.clone()));
            }
            tracing::debug!(
                peers = view.peers.len(),
                services = view.services.len(),
                took_us = started.elapsed().as_micros() as u64,
                "overlay view sent"
            );
        }
    }
}
