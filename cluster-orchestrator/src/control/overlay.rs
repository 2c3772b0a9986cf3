//! The overlay at the cluster: worker subnets from the root's address plan at registration,
//! and the view every worker's net manager applies — this cluster's workers and RUNNING
//! instances first-hand, the other clusters' from the root's [`GlobalView`] — published on
//! `nodes/<id>/net/view` whenever it changes (and again every [`RESEND`], for a worker that
//! missed one).
//!
//! [`local_overlay`] is a pure function of the state; the merge is
//! [`WorkerView::merge`](canopy_core::overlay::WorkerView::merge).

use super::state::State;
use super::{Cluster, Publish};
use async_trait::async_trait;
use canopy_core::overlay::{GlobalView, LocalOverlay, LocalService, WorkerView};
use canopy_core::{InstanceStatus, NodeId};
use canopy_proto::worker::topics;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Changes closer together than this are published as one view.
const COALESCE: Duration = Duration::from_millis(5);
/// A worker gets the current view again after this long even when nothing changed.
const RESEND: Duration = Duration::from_secs(10);

/// Where worker subnets come from: the root's address plan (through the cluster link).
#[async_trait]
pub trait AddressPlan: Send + Sync {
    /// The subnet of `node` (the same one again for a node that has one).
    async fn allocate(&self, node: &NodeId) -> Result<Ipv4Addr, String>;
    /// Returns the subnet of `node`.
    async fn release(&self, node: &NodeId) -> Result<(), String>;
}

/// What this cluster knows first-hand: its workers on the overlay and its RUNNING, ready
/// instances with an overlay address (an instance whose readiness probe has not passed gets
/// no traffic through its service's addresses).
pub(super) fn local_overlay(st: &State) -> LocalOverlay {
    let workers: BTreeMap<NodeId, _> = st
        .workers
        .iter()
        .filter_map(|(id, w)| Some((id.clone(), w.doc.overlay?)))
        .collect();
    let mut services: BTreeMap<_, LocalService> = BTreeMap::new();
    if workers.is_empty() {
        return LocalOverlay::default();
    }
    for (id, s) in &st.services {
        let Some(rr_ip) = s.spec.rr_ip else { continue };
        services.insert(
            id.clone(),
            LocalService {
                name: s.spec.job_name.to_string(),
                rr_ip,
                closest_ip: s.spec.closest_ip,
                instances: Vec::new(),
            },
        );
    }
    for i in st.instances.values() {
        if i.status != InstanceStatus::Running || !i.ready {
            continue;
        }
        let (Some(node), Some(address)) = (&i.node, i.ns_ip) else {
            continue;
        };
        if let Some(s) = services.get_mut(&i.service_id) {
            s.instances.push((i.ip, address, node.clone()));
        }
    }
    LocalOverlay { workers, services }
}

/// What the overlay loop remembers between rounds.
#[derive(Default)]
pub(super) struct Sent {
    /// Per worker: the payload last published to it, and when.
    last: BTreeMap<NodeId, (Arc<Vec<u8>>, Instant)>,
}

impl Cluster {
    /// Sets where worker subnets come from (the root link, once it is known).
    pub fn set_address_plan(&self, plan: Arc<dyn AddressPlan>) {
        let _ = self.address_plan.set(plan);
    }

    pub(super) fn address_plan(&self) -> Option<&Arc<dyn AddressPlan>> {
        self.address_plan.get()
    }

    /// The root's latest view of the whole overlay.
    pub async fn set_global_overlay(&self, view: GlobalView) {
        *self
            .global_overlay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
        self.overlay_changed();
    }

    pub(super) fn overlay_changed(&self) {
        self.overlay_dirty.notify_one();
    }

    /// Worker `node` (re)joined: it gets the view again.
    pub(super) fn overlay_forget(&self, node: &NodeId) {
        self.overlay_sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last
            .remove(node);
        self.overlay_changed();
    }

    /// The view for this cluster's workers now.
    pub async fn worker_view(&self) -> WorkerView {
        let (me, local) = {
            let st = self.state.lock().await;
            (st.identity.cluster_id.clone(), local_overlay(&st))
        };
        let global = self
            .global_overlay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        WorkerView::merge(me.as_ref(), &local, &global)
    }

    /// Publishes the view to every online worker on the overlay whenever it changes, until
    /// `shutdown`.
    pub async fn run_overlay(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = self.overlay_dirty.notified() => {}
                _ = tokio::time::sleep(RESEND) => {}
            }
            tokio::time::sleep(COALESCE).await;
            self.publish_overlay().await;
        }
    }

    pub(super) async fn publish_overlay(&self) {
        let workers: Vec<NodeId> = {
            let st = self.state.lock().await;
            st.workers
                .iter()
                .filter(|(_, w)| w.online && w.doc.overlay.is_some())
                .map(|(id, _)| id.clone())
                .collect()
        };
        if workers.is_empty() {
            return;
        }
        let view = self.worker_view().await;
        let payload = match serde_json::to_vec(&view) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the overlay view");
                return;
            }
        };
        let now = Instant::now();
        let mut sent = self
            .overlay_sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sent.last.retain(|id, _| workers.contains(id));
        for node in workers {
            let fresh = sent
                .last
                .get(&node)
                .is_some_and(|(p, at)| **p == *payload && now.duration_since(*at) < RESEND);
            if fresh {
                continue;
            }
            let _ = self.outgoing.send(Publish {
                topic: topics::net_view(&node),
                payload: payload.to_vec(),
            });
            sent.last.insert(node, (payload.clone(), now));
        }
    }
}
