//! What the cluster tells the root: the outbox of instance reports (numbered, kept until the
//! root acknowledges them, only the newest per instance) and the [`ClusterReport`] of its
//! workers' resources.

use super::state::{Change, InstanceKey};
use super::{Cluster, Effect, Result, logged};
use crate::model::{collections as col, report_key};
use crate::scheduler::WorkerCandidate;
use canopy_core::link::{
    ClusterReport, InstanceReport, InstanceUsage, NodeSummary, ResourceAggregate,
};
use canopy_core::span;
use canopy_core::{Architecture, InstanceStatus, JobName, NodeId};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::Notify;

impl Cluster {
    /// Stages a report of instance `k`'s state for the root (replacing an older pending one).
    pub(super) fn report(&self, ch: &mut Change, k: &InstanceKey) -> Result<()> {
        let Some(i) = ch.instances.get(k) else {
            return Ok(());
        };
        let identity = ch.identity.to_mut();
        identity.last_seq += 1;
        let seq = identity.last_seq;
        let r = i.report(seq);
        if let Some(old) = ch.outbox_by_instance.insert(k.clone(), seq) {
            ch.outbox.remove(&old);
            ch.tx.delete(col::REPORTS, &report_key(old));
        }
        ch.tx.put(col::REPORTS, &report_key(seq), &r)?;
        ch.tx.put(col::IDENTITY, "cluster", &*ch.identity)?;
        ch.outbox.insert(seq, r);
        ch.tx.effect(Effect::ReportsReady);
        Ok(())
    }

    /// Reports the root has not acknowledged, oldest first.
    pub async fn pending_reports(&self) -> Vec<InstanceReport> {
        self.pending_reports_after(0).await
    }

    /// Reports the root has not acknowledged numbered above `seq` (those not sent yet),
    /// oldest first.
    pub async fn pending_reports_after(&self, seq: u64) -> Vec<InstanceReport> {
        let reports = self.reports_to_send(seq).await;
        reports.into_iter().map(|(r, _)| r).collect()
    }

    /// [`Cluster::pending_reports_after`] for the root link, each with its job's name when it is
    /// a `RUNNING` report and span marks are on ([`canopy_core::span`]; the uplink marks it sent).
    pub async fn reports_to_send(&self, seq: u64) -> Vec<(InstanceReport, Option<JobName>)> {
        let st = self.state.lock().await;
        let marks = span::enabled();
        st.outbox
            .range(seq.saturating_add(1)..)
            .map(|(_, r)| {
                let job = (marks && r.status == InstanceStatus::Running)
                    .then(|| st.services.get(&r.service_id))
                    .flatten()
                    .map(|s| s.spec.job_name.clone());
                (r.clone(), job)
            })
            .collect()
    }

    /// The root's welcome: it has stored every report up to `seq`. If the root knows higher
    /// numbers than this cluster made (the cluster's state was reset), pending reports are
    /// renumbered above it so the root does not take them for old ones.
    pub async fn root_has(&self, seq: u64) {
        let mut st = self.state.lock().await;
        if seq > st.identity.last_seq {
            let now = self.now();
            let result = self
                .change(&mut st, now, |ch| {
                    let pending: Vec<u64> = ch.outbox.keys().copied().collect();
                    let mut last_seq = seq;
                    for old in pending {
                        let Some(mut r) = ch.outbox.remove(&old) else {
                            continue;
                        };
                        ch.tx.delete(col::REPORTS, &report_key(old));
                        last_seq += 1;
                        r.seq = last_seq;
                        if let Err(e) = ch.tx.put(col::REPORTS, &report_key(r.seq), &r) {
                            tracing::error!(error = %e, "cannot renumber a report");
                        }
                        ch.outbox_by_instance
                            .insert(InstanceKey::of_report(&r), r.seq);
                        ch.outbox.insert(r.seq, r);
                    }
                    ch.identity.to_mut().last_seq = last_seq;
                    if let Err(e) = ch.tx.put(col::IDENTITY, "cluster", &*ch.identity) {
                        tracing::error!(error = %e, "cannot store the identity");
                    }
                    Ok(())
                })
                .await;
            logged(result);
        }
        drop(st);
        self.reports_acked(seq).await;
    }

    /// The root stored every report up to `seq`.
    pub async fn reports_acked(&self, seq: u64) {
        let mut st = self.state.lock().await;
        let now = self.now();
        let result = self
            .change(&mut st, now, |ch| {
                let done: Vec<u64> = ch
                    .outbox
                    .keys()
                    .take_while(|s| **s <= seq)
                    .copied()
                    .collect();
                for s in done {
                    if let Some(r) = ch.outbox.remove(&s) {
                        let k = InstanceKey::of_report(&r);
                        if ch.outbox_by_instance.get(&k) == Some(&s) {
                            ch.outbox_by_instance.remove(&k);
                        }
                    }
                    ch.tx.delete(col::REPORTS, &report_key(s));
                }
                Ok(())
            })
            .await;
        logged(result);
    }

    /// Wakes when a new report is queued.
    pub fn reports_ready(&self) -> &Notify {
        &self.reports_ready
    }

    /// The cluster's resources for the root: active workers, free capacity after placements.
    pub async fn resource_report(&self) -> ClusterReport {
        let st = self.state.lock().await;
        let view = Change::new(&st, self.now());
        aggregate(&view, &self.candidates(&view))
    }
}

/// Sums and averages over the active workers, per architecture too; what each worker holds;
/// the use of every running instance. `candidates` are in `view`'s worker order.
fn aggregate(view: &Change, candidates: &[WorkerCandidate]) -> ClusterReport {
    let mut total = Aggregator::default();
    let mut per_arch: BTreeMap<Architecture, Aggregator> = BTreeMap::new();
    for (c, w) in candidates.iter().zip(view.workers.values()) {
        if !c.active {
            continue;
        }
        total.add(c, &w.doc.supported_addons);
        per_arch
            .entry(c.architecture)
            .or_default()
            .add(c, &w.doc.supported_addons);
    }
    let mut placed: HashMap<&NodeId, u32> = HashMap::new();
    let mut usage = Vec::new();
    for i in view.instances.values() {
        if let Some(n) = &i.node
            && i.status.occupies_worker()
        {
            *placed.entry(n).or_default() += 1;
        }
        if i.status == InstanceStatus::Running {
            usage.push(InstanceUsage {
                service_id: i.service_id.clone(),
                instance: i.number,
                cpu_percent: i.cpu_percent,
                memory_mb: i.memory_mb,
                logs: i.logs.clone(),
            });
        }
    }
    let nodes = candidates
        .iter()
        .zip(view.workers.values())
        .map(|(c, w)| NodeSummary {
            id: c.id.clone(),
            name: c.name.clone(),
            active: c.active,
            architecture: c.architecture,
            virtualizations: c.virtualizations.iter().copied().collect(),
            cpu_percent: c.cpu_percent.clamp(0.0, 100.0),
            memory_percent: c.memory_percent.clamp(0.0, 100.0),
            instances: placed.get(&c.id).copied().unwrap_or(0),
            overlay: w.doc.overlay,
        })
        .collect();
    ClusterReport {
        total: total.finish(),
        per_architecture: per_arch.into_iter().map(|(a, g)| (a, g.finish())).collect(),
        nodes,
        usage,
    }
}

#[derive(Default)]
struct Aggregator {
    agg: ResourceAggregate,
    cpu_sum: f64,
    mem_sum: f64,
}

impl Aggregator {
    /// Adds one active worker.
    fn add(&mut self, c: &WorkerCandidate, addons: &[String]) {
        self.agg.supported_addons.extend(addons.iter().cloned());
        self.agg.active_nodes += 1;
        self.agg.free = self.agg.free.saturating_add(&c.free);
        self.cpu_sum += c.cpu_percent;
        self.mem_sum += c.memory_percent;
        self.agg
            .virtualizations
            .extend(c.virtualizations.iter().copied());
    }

    fn finish(mut self) -> ResourceAggregate {
        let n = f64::from(self.agg.active_nodes.max(1));
        self.agg.cpu_percent = (self.cpu_sum / n).clamp(0.0, 100.0);
        self.agg.memory_percent = (self.mem_sum / n).clamp(0.0, 100.0);
        self.agg
    }
}
