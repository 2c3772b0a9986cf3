//! Placement: every instance that waits for a worker (new, failed over, or past its crash
//! back-off) is offered to [`crate::scheduler`] with the workers' free capacity; a chosen
//! worker is sent a deploy, a refusal becomes the instance's negative status.

use super::Cluster;
use super::state::{Change, InstanceKey};
use crate::lifecycle::Event;
use crate::model::Instance;
use crate::scheduler::{self, WorkerCandidate};
use canopy_core::{InstanceStatus, NodeId, Resources, ServiceSpec, StatusClass};
use canopy_proto::worker::{DeployMessage, topics};
use std::collections::{BTreeSet, HashMap};

/// The spec instance `i` runs: its own, else its service's.
pub(super) fn spec_of<'a>(ch: &'a Change<'_>, i: &'a Instance) -> Option<&'a ServiceSpec> {
    i.spec
        .as_deref()
        .or_else(|| ch.services.get(&i.service_id).map(|s| &s.spec))
}

impl Cluster {
    /// Every worker as the scheduler sees it, in worker order: free capacity is its offer less
    /// what the instances placed on it ask for.
    pub(super) fn candidates(&self, ch: &Change) -> Vec<WorkerCandidate> {
        let mut used: HashMap<&NodeId, Resources> = HashMap::new();
        for i in ch.instances.values() {
            if let Some(n) = &i.node
                && i.status.occupies_worker()
                && let Some(spec) = spec_of(ch, i)
            {
                let u = used.entry(n).or_insert(Resources::ZERO);
                *u = u.saturating_add(&spec.resources);
            }
        }
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
            .instances
            .iter()
            .filter(|(_, i)| {
                i.node.is_none()
                    && !i.status.is_terminal()
                    && (i.status == InstanceStatus::Requested
                        || i.status.class() == StatusClass::NegativeScheduling
                        || (i.status.needs_rescheduling() && i.retry_at <= now))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        let mut candidates = self.candidates(ch);
        for k in waiting {
            let spec: Option<ServiceSpec> =
                ch.instances.get(&k).and_then(|i| spec_of(ch, i)).cloned();
            let Some(spec) = spec else {
                continue;
            };
            let decision = scheduler::schedule(&spec, &candidates, &BTreeSet::new());
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
