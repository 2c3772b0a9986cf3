//! Placement and failover. [`plan`] is the pure step: over a snapshot of the clusters and of
//! the instances to look at, and `now`, it says what to do with each instance
//! ([`PlacementEffect`]). The async [`Root`] code gathers the snapshot, calls the step and
//! stages the effects (status changes, deploy and undeploy commands) in one change.
//!
//! The rules, per instance:
//!
//! | trigger | instance | effect |
//! |---------|----------|--------|
//! | periodic pass | on a cluster silent for longer than the grace period, not terminal | [`TakeBack`](PlacementEffect::TakeBack), then placed as below |
//! | periodic pass / new | waiting for a cluster | [`Assign`](PlacementEffect::Assign) to the scheduler's choice, else [`Unplaced`](PlacementEffect::Unplaced) with its rejection |
//! | its cluster refused it (`NO_WORKER_CAPACITY` …) | on that cluster, negative status | [`Move`](PlacementEffect::Move) to a cluster that has not refused it, else [`Stays`](PlacementEffect::Stays): the cluster's answer stands |
//!
//! Clusters that refused an instance are not tried for it again until it runs.

use super::state::{Change, ClusterEntry, InstanceKey, State};
use super::{Now, Result, Root};
use crate::model::Instance;
use crate::scheduler::{self, ClusterCandidate, Rejection};
use canopy_core::link::{ClusterReport, CommandAction};
use canopy_core::{ClusterId, InstanceStatus, ServiceId, ServiceSpec, StatusClass};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What [`plan`] looks at.
pub(super) struct PlacementSnapshot<'a> {
    pub clusters: &'a BTreeMap<ClusterId, ClusterEntry>,
    /// A cluster silent for longer than this is inactive and loses its instances.
    pub grace: Duration,
    pub services: Vec<ServiceSnapshot<'a>>,
    /// The cluster that just answered it has no worker for these instances; `None` for a new
    /// instance and the periodic pass.
    pub refused_by: Option<&'a ClusterId>,
}

/// One service and the instances of it to look at.
pub(super) struct ServiceSnapshot<'a> {
    pub id: &'a ServiceId,
    pub spec: &'a ServiceSpec,
    pub instances: Vec<&'a Instance>,
}

/// What to do with one instance.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PlacementEffect {
    /// Its cluster stopped reporting: undeploy it there; it waits for a cluster again.
    TakeBack { key: InstanceKey, from: ClusterId },
    /// Place it on `to`: `CLUSTER_SCHEDULED` and a deploy command.
    Assign { key: InstanceKey, to: ClusterId },
    /// No cluster fits: it keeps waiting with the scheduler's negative status.
    Unplaced {
        key: InstanceKey,
        rejection: Rejection,
    },
    /// Its cluster refused it and `to` fits: undeploy it on `from`, deploy it on `to`.
    Move {
        key: InstanceKey,
        from: ClusterId,
        to: ClusterId,
    },
    /// Its cluster refused it and no other cluster fits: the cluster's answer stands.
    Stays { key: InstanceKey },
}

impl PlacementEffect {
    pub fn key(&self) -> &InstanceKey {
        match self {
            PlacementEffect::TakeBack { key, .. }
            | PlacementEffect::Assign { key, .. }
            | PlacementEffect::Unplaced { key, .. }
            | PlacementEffect::Move { key, .. }
            | PlacementEffect::Stays { key } => key,
        }
    }
}

/// The placement step: the effects for every instance of the snapshot that needs one, in
/// snapshot order (an instance's effects are adjacent).
pub(super) fn plan(snapshot: &PlacementSnapshot<'_>, now: Instant) -> Vec<PlacementEffect> {
    let grace = snapshot.grace;
    let candidates: Vec<ClusterCandidate> = snapshot
        .clusters
        .values()
        .map(|e| ClusterCandidate {
            id: e.doc.id.clone(),
            name: e.doc.name.clone(),
            active: e.active(grace, now),
            location: e.doc.location,
            unreported: e.unreported,
            // The scheduler reads the aggregates: not the per-node and per-instance lists
            // (thousands of entries per cluster, copied per placement otherwise).
            report: e
                .report
                .as_ref()
                .map(|r| ClusterReport {
                    total: r.total.clone(),
                    per_architecture: r.per_architecture.clone(),
                    ..Default::default()
                })
                .unwrap_or_default(),
        })
        .collect();
    let gone: Vec<&ClusterId> = snapshot
        .clusters
        .values()
        .filter(|e| e.gone(grace, now))
        .map(|e| &e.doc.id)
        .collect();
    let mut candidates = candidates;
    let mut effects = Vec::new();
    for s in &snapshot.services {
        for inst in &s.instances {
            let key = || InstanceKey::new(s.id.clone(), inst.number);
            if let Some(refuser) = snapshot.refused_by {
                let refused = inst.cluster_id.as_ref() == Some(refuser)
                    && inst.status.class() == StatusClass::NegativeScheduling;
                if refused {
                    effects.push(match decide(s.spec, &candidates, inst, Some(refuser)) {
                        Ok(to) => {
                            given(&mut candidates, &to);
                            PlacementEffect::Move {
                                key: key(),
                                from: refuser.clone(),
                                to,
                            }
                        }
                        Err(_) => PlacementEffect::Stays { key: key() },
                    });
                }
                continue;
            }
            let lost = inst.cluster_id.as_ref().filter(|c| gone.contains(c));
            match lost {
                Some(from) if !inst.status.is_terminal() => {
                    effects.push(PlacementEffect::TakeBack {
                        key: key(),
                        from: from.clone(),
                    });
                }
                _ if inst.awaits_cluster() => {}
                _ => continue,
            }
            effects.push(match decide(s.spec, &candidates, inst, None) {
                Ok(to) => {
                    given(&mut candidates, &to);
                    PlacementEffect::Assign { key: key(), to }
                }
                Err(rejection) => PlacementEffect::Unplaced {
                    key: key(),
                    rejection,
                },
            });
        }
    }
    effects
}

/// One more instance given to cluster `to` in this plan: later choices in it count it.
fn given(candidates: &mut [ClusterCandidate], to: &ClusterId) {
    if let Some(c) = candidates.iter_mut().find(|c| &c.id == to) {
        c.unreported += 1;
    }
}

/// Runs the scheduler for `inst`, leaving out `exclude` and the clusters that refused it.
fn decide(
    spec: &ServiceSpec,
    candidates: &[ClusterCandidate],
    inst: &Instance,
    exclude: Option<&ClusterId>,
) -> Result<ClusterId, Rejection> {
    if exclude.is_none() && inst.refused_by.is_empty() {
        return scheduler::schedule(spec, candidates);
    }
    let allowed: Vec<ClusterCandidate> = candidates
        .iter()
        .filter(|c| exclude != Some(&c.id) && !inst.refused_by.contains(&c.id))
        .cloned()
        .collect();
    scheduler::schedule(spec, &allowed)
}

impl Root {
    fn snapshot<'a>(
        &self,
        st: &'a State,
        services: Vec<ServiceSnapshot<'a>>,
        refused_by: Option<&'a ClusterId>,
    ) -> PlacementSnapshot<'a> {
        PlacementSnapshot {
            clusters: &st.clusters,
            grace: self.settings.cluster_grace,
            services,
            refused_by,
        }
    }

    /// Plans and stages the placement of one instance, `inst`: a copy being changed (a new
    /// instance, or one with the report of `refused_by` applied, which is then failed over).
    pub(super) fn place_copy(
        &self,
        st: &State,
        change: &mut Change,
        key: &InstanceKey,
        inst: &mut Instance,
        refused_by: Option<&ClusterId>,
        now: Now,
    ) -> Result<()> {
        let Some(s) = st.services.get(&key.service) else {
            return Ok(());
        };
        let one = ServiceSnapshot {
            id: &key.service,
            spec: &s.spec,
            instances: vec![&*inst],
        };
        let effects = plan(&self.snapshot(st, vec![one], refused_by), now.at);
        for effect in &effects {
            self.stage(st, change, inst, effect, now)?;
        }
        Ok(())
    }

    /// Periodic work: clusters that stopped reporting lose their instances, instances that
    /// wait for a cluster are placed when one fits, and autoscaled services grow or shrink.
    pub async fn tick(&self) -> Result<()> {
        let now = Now::read();
        let mut st = self.state.lock().await;
        let services = st
            .services
            .iter()
            .map(|(id, s)| ServiceSnapshot {
                id,
                spec: &s.spec,
                instances: s.instances.values().collect(),
            })
            .collect();
        let effects = plan(&self.snapshot(&st, services, None), now.at);
        let mut change = Change::new(&st);
        for one in effects.chunk_by(|a, b| a.key() == b.key()) {
            let key = one[0].key();
            let Some(before) = st.instance(key) else {
                continue;
            };
            let mut inst = before.clone();
            for effect in one {
                self.stage(&st, &mut change, &mut inst, effect, now)?;
            }
            if inst.status != before.status || inst.cluster_id != before.cluster_id {
                // A failover is an event of the service; so is a placement after one.
                if let Some(from) = one.iter().find_map(|e| match e {
                    PlacementEffect::TakeBack { from, .. } => Some(from),
                    _ => None,
                }) {
                    let why = format!("cluster {from} stopped reporting");
                    let outcome = super::apps::placed(&inst);
                    let e =
                        super::state::event(now.unix, Some(key.number), "failover", why, outcome);
                    change.record(&st, &key.service, e)?;
                }
                change.put_instance(key.clone(), inst)?;
            }
        }
        self.commit(&mut st, change).await?;
        self.autoscale(&mut st, now).await
    }

    /// Stages one effect on `inst`, the copy of the instance being changed.
    fn stage(
        &self,
        st: &State,
        change: &mut Change,
        inst: &mut Instance,
        effect: &PlacementEffect,
        now: Now,
    ) -> Result<()> {
        match effect {
            PlacementEffect::TakeBack { key, from } => {
                tracing::warn!(cluster = %from, service = %key.service, instance = %key.number,
                    "cluster stopped reporting; moving the instance");
                change.undeploy(from.clone(), &key.service, Some(key.number))?;
                inst.cluster_id = None;
                inst.node_id = None;
                inst.set_status(
                    InstanceStatus::Requested,
                    format!("cluster {from} stopped reporting"),
                    now.unix,
                );
                self.metrics.reschedule();
            }
            PlacementEffect::Assign { key, to } => {
                self.metrics.schedule_decision(true);
                deploy(st, change, key, inst, to, now)?;
            }
            PlacementEffect::Unplaced { rejection, .. } => {
                self.metrics.schedule_decision(false);
                if inst.status != rejection.status || inst.detail != rejection.detail {
                    inst.set_status(rejection.status, rejection.detail.clone(), now.unix);
                }
            }
            PlacementEffect::Move { key, from, to } => {
                self.metrics.schedule_decision(true);
                change.undeploy(from.clone(), &key.service, Some(key.number))?;
                deploy(st, change, key, inst, to, now)?;
                self.metrics.reschedule();
            }
            PlacementEffect::Stays { .. } => self.metrics.schedule_decision(false),
        }
        Ok(())
    }
}

/// Puts `inst` on `cluster` and queues its deploy.
fn deploy(
    st: &State,
    change: &mut Change,
    key: &InstanceKey,
    inst: &mut Instance,
    cluster: &ClusterId,
    now: Now,
) -> Result<()> {
    let Some(s) = st.services.get(&key.service) else {
        return Ok(());
    };
    inst.cluster_id = Some(cluster.clone());
    inst.node_id = None;
    inst.set_status(InstanceStatus::ClusterScheduled, "", now.unix);
    // The cluster learns the service's address (pinned or allocated) with the order, so its
    // workers can reach the instance through it even while the root is away.
    let mut spec = s.spec_of(inst.revision).clone();
    spec.rr_ip = Some(s.rr_ip);
    let action = CommandAction::Deploy {
        service_id: key.service.clone(),
        instance: inst.number,
        spec: Box::new(spec),
        instance_ip: Some(inst.ip),
    };
    change.send(cluster.clone(), action)
}
