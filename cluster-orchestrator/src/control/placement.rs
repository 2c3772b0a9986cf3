//! Placement: every instance that waits for a worker (new, failed over, or past its crash
//! back-off) is offered to [`crate::scheduler`] with the workers' free capacity; a chosen
//! worker is sent a deploy, a refusal becomes the instance's negative status.
//!
//! Placement runs after almost every change, so it reads [`PlacementIndex`] (the unplaced
//! instances, and what the placed ones use on each worker) adjusted by the change's own
//! entries, never a scan of every instance: its cost follows the change and the workers, not
//! the size of the cluster.

use super::Cluster;
use super::state::{Change, InstanceKey};
use crate::lifecycle::Event;
use crate::model::{Instance, Service};
use crate::scheduler::{self, Rejection, WorkerCandidate};
use canopy_core::{InstanceStatus, NodeId, Resources, ServiceId, ServiceSpec, StatusClass};
use canopy_proto::worker::{DeployMessage, topics};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The spec instance `i` runs: its own, else its service's.
pub(super) fn spec_of<'a>(ch: &'a Change<'_>, i: &'a Instance) -> Option<&'a ServiceSpec> {
    spec_in(i, ch.services.get(&i.service_id))
}

/// The spec instance `i` runs: its own, else `service`'s (its service's).
fn spec_in<'a>(i: &'a Instance, service: Option<&'a Service>) -> Option<&'a ServiceSpec> {
    i.spec.as_deref().or(service.map(|s| &s.spec))
}

/// Not on a worker and not finished: placement may have to find it one.
fn unplaced(i: &Instance) -> bool {
    i.node.is_none() && !i.status.is_terminal()
}

/// The worker instance `i` holds resources on, and how much it holds.
fn occupancy<'a>(i: &'a Instance, service: Option<&Service>) -> Option<(&'a NodeId, Resources)> {
    let node = i.node.as_ref().filter(|_| i.status.occupies_worker())?;
    Some((node, spec_in(i, service)?.resources))
}

/// What placement reads instead of every instance: the unplaced instances and what the placed
/// ones hold on each worker. Memory only, derived from the instances and services: built at
/// load and kept current by [`super::state::State::apply`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PlacementIndex {
    unplaced: BTreeSet<InstanceKey>,
    /// What each instance holding resources holds, and where (so that it can be taken back
    /// exactly when the instance changes).
    holds: HashMap<InstanceKey, (NodeId, Resources)>,
    /// Per worker, the sum of `holds`.
    used: HashMap<NodeId, Resources>,
}

impl PlacementIndex {
    /// The index of `instances` whose services are `services`.
    pub fn of(
        instances: &BTreeMap<InstanceKey, Instance>,
        services: &BTreeMap<ServiceId, Service>,
    ) -> Self {
        let mut index = PlacementIndex::default();
        for (k, i) in instances {
            index.set(k, Some(i), services.get(&i.service_id));
        }
        index
    }

    /// Instance `k` is now `i` (`None`: gone), of service `service`.
    pub fn set(&mut self, k: &InstanceKey, i: Option<&Instance>, service: Option<&Service>) {
        self.unplaced.remove(k);
        if let Some((node, r)) = self.holds.remove(k)
            && let Some(u) = self.used.get_mut(&node)
        {
            *u = u.saturating_sub(&r);
            if *u == Resources::ZERO {
                self.used.remove(&node);
            }
        }
        let Some(i) = i else { return };
        if unplaced(i) {
            self.unplaced.insert(k.clone());
        }
        if let Some((node, r)) = occupancy(i, service).filter(|(_, r)| *r != Resources::ZERO) {
            let u = self.used.entry(node.clone()).or_insert(Resources::ZERO);
            *u = u.saturating_add(&r);
            self.holds.insert(k.clone(), (node.clone(), r));
        }
    }
}

impl Change<'_> {
    /// The unplaced instances as this change leaves them, in key order.
    fn unplaced(&self) -> Vec<InstanceKey> {
        let mut keys: BTreeSet<&InstanceKey> = self
            .placement
            .unplaced
            .iter()
            .filter(|k| !self.instances.touches(k))
            .collect();
        keys.extend(
            self.instances
                .touched()
                .filter(|(_, i)| i.is_some_and(unplaced))
                .map(|(k, _)| k),
        );
        keys.into_iter().cloned().collect()
    }

    /// What the instances hold on each worker as this change leaves them.
    fn used(&self) -> HashMap<&NodeId, Resources> {
        let mut used: HashMap<&NodeId, Resources> =
            self.placement.used.iter().map(|(n, r)| (n, *r)).collect();
        for (k, i) in self.instances.touched() {
            if let Some((node, r)) = self.placement.holds.get(k)
                && let Some(u) = used.get_mut(node)
            {
                *u = u.saturating_sub(r);
            }
            if let Some(i) = i
                && let Some((node, r)) = occupancy(i, self.services.get(&i.service_id))
            {
                let u = used.entry(node).or_insert(Resources::ZERO);
                *u = u.saturating_add(&r);
            }
        }
        used
    }
}

impl Cluster {
    /// Every worker as the scheduler sees it, in worker order: free capacity is its offer less
    /// what the instances placed on it ask for.
    pub(super) fn candidates(&self, ch: &Change) -> Vec<WorkerCandidate> {
        let used = ch.used();
        ch.workers
            .values()
            .map(|w| WorkerCandidate {
                id: w.doc.id.clone(),
                name: w.doc.name.clone(),
                active: w.active(self.settings.worker_timeout, ch.now.at),
                architecture: w.doc.architecture,
                virtualizations: w.doc.virtualizations.iter().copied().collect(),
                free: w
                    .doc
                    .capacity
                    .saturating_sub(used.get(&w.doc.id).unwrap_or(&Resources::ZERO)),
                cpu_percent: w.info.cpu_percent,
                memory_percent: w.info.memory_percent,
                unreported: w.unreported,
            })
            .collect()
    }

    /// Stages a placement of every instance that waits for a worker and whose back-off has
    /// passed.
    pub(super) fn place_waiting(&self, ch: &mut Change) {
        let now = ch.now.unix;
        let waiting: Vec<InstanceKey> = ch
            .unplaced()
            .into_iter()
            .filter(|k| {
                ch.instances.get(k).is_some_and(|i| {
                    i.status == InstanceStatus::Requested
                        || i.status.class() == StatusClass::NegativeScheduling
                        || (i.status.needs_rescheduling() && i.retry_at <= now)
                })
            })
            .collect();
        if waiting.is_empty() {
            return;
        }
        let mut candidates = self.candidates(ch);
        // Free capacity only shrinks while this runs: a spec refused once is refused again.
        let mut refused: Vec<(ServiceSpec, Rejection)> = Vec::new();
        for k in waiting {
            let spec: Option<ServiceSpec> =
                ch.instances.get(&k).and_then(|i| spec_of(ch, i)).cloned();
            let Some(spec) = spec else {
                continue;
            };
            let decision = match refused.iter().find(|(s, _)| *s == spec) {
                Some((_, r)) => Err(r.clone()),
                None => {
                    let d = scheduler::schedule(&spec, &candidates, &BTreeSet::new());
                    if let Err(r) = &d {
                        refused.push((spec.clone(), r.clone()));
                    }
                    d
                }
            };
            self.metrics.schedule_decision(decision.is_ok());
            let result = match decision {
                Ok(node) => {
                    if let Some(c) = candidates.iter_mut().find(|c| c.id == node) {
                        c.free = c.free.saturating_sub(&spec.resources);
                        c.unreported += 1;
                    }
                    if let Some(w) = ch.workers.get_mut(&node) {
                        w.unreported += 1;
                    }
                    let ip = ch.instances.get(&k).and_then(|i| i.ip);
                    if let Some(i) = ch.instances.get_mut(&k) {
                        i.node = Some(node.clone());
                    }
                    ch.publish(
                        topics::deploy(&node),
                        &DeployMessage::new(&k.service, k.number, &spec, ip),
                    );
                    self.apply(ch, &k, Event::Placed, Some(String::new()))
                }
                Err(rejection) => {
                    let unchanged = ch
                        .instances
                        .get(&k)
                        .is_some_and(|i| i.status == rejection.status);
                    if unchanged {
                        Ok(())
                    } else {
                        self.apply(
                            ch,
                            &k,
                            Event::NotPlaced(rejection.status),
                            Some(rejection.detail),
                        )
                    }
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot record a placement");
            }
        }
    }
}
