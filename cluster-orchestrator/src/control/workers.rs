//! Workers: registration (a new MQTT password each time), liveness from their messages, and
//! worker loss (last will or silence), which moves their instances elsewhere.

use super::state::{Change, State, WorkerState};
use super::{Cluster, Error, Result, logged};
use crate::lifecycle::Event;
use crate::model::{Worker, collections as col, new_node_id, sha256_hex};
use canopy_core::NodeId;
use canopy_proto::worker::{NodeInformation, NodeOffer, NodeRegistration};
use std::time::Duration;
use tokio::time::Instant;

/// A worker as shown in status views.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub doc: Worker,
    pub active: bool,
    pub info: NodeInformation,
}

/// A registration's outcome: the worker's id (also its MQTT user name) and MQTT password,
/// and its overlay subnet when it asked to be on the overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub id: NodeId,
    pub password: String,
    pub subnet: Option<std::net::Ipv4Addr>,
}

impl Cluster {
    /// Registers a worker (the join token was checked by the caller). The same host name keeps
    /// its id; every registration issues a new MQTT password.
    pub async fn register_worker(&self, reg: &NodeRegistration) -> Result<Registered> {
        let offer: NodeOffer = reg.offer().map_err(|e| Error::Invalid {
            field: e.field,
            message: e.reason,
        })?;
        let password = canopy_store::secrets::random_token(16);
        let _one = self.registrations.lock().await;
        let (id, subnet) = {
            let st = self.state.lock().await;
            let id = st.names.get(&reg.host).cloned().unwrap_or_else(new_node_id);
            let subnet = st
                .workers
                .get(&id)
                .and_then(|w| w.doc.overlay)
                .map(|p| p.subnet);
            (id, subnet)
        };
        // A worker on the overlay keeps the subnet it has; a new one asks the root's address
        // plan (not under the state lock either).
        let overlay = match offer.overlay_address {
            None => None,
            Some(underlay) => {
                let subnet = match subnet {
                    Some(s) => s,
                    None => {
                        let plan = self.address_plan().ok_or_else(|| {
                            Error::AddressPlan(
                                "the cluster has no link to the root's address plan".into(),
                            )
                        })?;
                        plan.allocate(&id).await.map_err(Error::AddressPlan)?
                    }
                };
                Some(canopy_core::overlay::Peer { subnet, underlay })
            }
        };
        // Not under the state lock: the broker's answer arrives through the MQTT loop, which
        // takes that lock for every worker message (holding it here made registrations time
        // out whenever a worker message came in between).
        self.auth
            .allow(&id, &password)
            .await
            .map_err(Error::Broker)?;
        let mut st = self.state.lock().await;
        let now = self.now();
        self.change(&mut st, now, |ch| {
            let doc = Worker {
                id: id.clone(),
                name: reg.host.clone(),
                ip: reg.ip.clone(),
                architecture: offer.architecture,
                virtualizations: offer.virtualizations,
                capacity: offer.capacity,
                supported_addons: reg.supported_addons.clone(),
                mqtt_password_sha256: sha256_hex(&password),
                registered_at: ch.now.unix,
                overlay,
            };
            ch.tx.put(col::WORKERS, id.as_str(), &doc)?;
            ch.names.insert(doc.name.clone(), id.clone());
            let info = NodeInformation {
                ip: reg.ip.clone(),
                cpu_percent: reg.cpu_percent,
                vcpus: reg.vcpus,
                memory_percent: reg.memory_percent,
                memory: reg.memory,
                vgpus: reg.vgpus,
                gpu_usage: 0.0,
            };
            ch.workers.insert(
                id.clone(),
                WorkerState {
                    doc,
                    info,
                    last_seen: ch.now.at,
                    online: true,
                    unreported: 0,
                },
            );
            Ok(())
        })
        .await?;
        self.overlay_forget(&id);
        tracing::info!(node = %id, host = %reg.host, subnet = ?overlay.map(|p| p.subnet), "worker registered");
        Ok(Registered {
            id,
            password,
            subnet: overlay.map(|p| p.subnet),
        })
    }

    /// Stored MQTT password hashes of every worker (for an embedded broker's auth).
    pub async fn worker_password_hashes(&self) -> Vec<(NodeId, String)> {
        let st = self.state.lock().await;
        st.workers
            .values()
            .map(|w| (w.doc.id.clone(), w.doc.mqtt_password_sha256.clone()))
            .collect()
    }

    pub async fn workers(&self) -> Vec<WorkerView> {
        let st = self.state.lock().await;
        let now = self.now();
        st.workers
            .values()
            .map(|w| WorkerView {
                doc: w.doc.clone(),
                active: w.active(self.settings.worker_timeout, now.at),
                info: w.info.clone(),
            })
            .collect()
    }

    /// `nodes/<id>/information`: the worker is alive and this loaded.
    pub async fn on_information(&self, node: &NodeId, info: NodeInformation) {
        let mut st = self.state.lock().await;
        let now = self.now();
        let Some(w) = st.heard_from(node, now.at) else {
            tracing::debug!(node = %node, "information from an unregistered node dropped");
            return;
        };
        w.info = info;
        w.unreported = 0;
    }

    /// `nodes/<id>/will`: the worker's connection died.
    pub async fn on_will(&self, node: &NodeId) {
        let mut st = self.state.lock().await;
        let now = self.now();
        let Some(since) = st
            .workers
            .get(node)
            .filter(|w| w.online)
            .map(|w| w.silent_for(now.at))
        else {
            return;
        };
        let result = self
            .change(&mut st, now, |ch| {
                self.lose_worker(ch, node, "its connection died", since);
                self.place_waiting(ch);
                Ok(())
            })
            .await;
        logged(result);
    }

    /// Removes worker `node` for good (an operator's uninstall): its instances move to other
    /// workers, it is forgotten (its host name registers as a new worker), and its overlay
    /// subnet goes back to the root's address plan. `Ok(false)`: no such worker.
    pub async fn remove_worker(&self, node: &NodeId) -> Result<bool> {
        let _one = self.registrations.lock().await;
        let subnet = {
            let mut st = self.state.lock().await;
            let Some(w) = st.workers.get(node) else {
                return Ok(false);
            };
            let (name, since, subnet) = (
                w.doc.name.clone(),
                w.silent_for(self.now().at),
                w.doc.overlay.map(|p| p.subnet),
            );
            let now = self.now();
            self.change(&mut st, now, |ch| {
                self.lose_worker(ch, node, "it was removed", since);
                ch.workers.remove(node);
                if ch.names.get(&name) == Some(node) {
                    ch.names.remove(&name);
                }
                ch.tx.delete(col::WORKERS, node.as_str());
                self.place_waiting(ch);
                Ok(())
            })
            .await?;
            subnet
        };
        tracing::info!(node = %node, "worker removed");
        // Not under the state lock (the root may be slow or away): a subnet not returned now
        // stays given to this node id, which no worker will have again.
        if let (Some(subnet), Some(plan)) = (subnet, self.address_plan()) {
            match plan.release(node).await {
                Ok(()) => tracing::info!(node = %node, %subnet, "worker subnet returned"),
                Err(e) => {
                    tracing::warn!(node = %node, %subnet, error = %e, "cannot return the worker subnet")
                }
            }
        }
        Ok(true)
    }

    /// Stages the loss of `node`: it goes offline and its instances are failed over.
    pub(super) fn lose_worker(&self, ch: &mut Change, node: &NodeId, why: &str, since: Duration) {
        if let Some(w) = ch.workers.get_mut(node) {
            w.online = false;
        }
        self.metrics.worker_lost(since);
        tracing::warn!(node = %node, why, "worker lost; moving its instances");
        // Not state: the logs it was streaming end now, whatever the commit does.
        self.end_logs_of(node, why);
        let keys: Vec<_> = ch
            .instances
            .iter()
            .filter(|(_, i)| i.node.as_ref() == Some(node))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let detail = format!("worker {node} lost: {why}");
            if let Err(e) = self.apply(ch, &k, Event::WorkerLost, Some(detail)) {
                tracing::error!(error = %e, "cannot record a worker loss");
            }
        }
    }
}

/// Online workers silent for longer than `timeout` at `now`, and for how long.
pub(super) fn silent(st: &State, timeout: Duration, now: Instant) -> Vec<(NodeId, Duration)> {
    st.workers
        .values()
        .filter(|w| w.online && w.silent_for(now) > timeout)
        .map(|w| (w.doc.id.clone(), w.silent_for(now)))
        .collect()
}
