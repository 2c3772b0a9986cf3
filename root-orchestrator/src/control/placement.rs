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
use super::{Result, Root, now};
use crate::model::Instance;
use crate::scheduler::{self, ClusterCandidate, Rejection};
use canopy_core::link::CommandAction;
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
            report: e.report.clone().unwrap_or_default(),
        })
        .collect();
    let gone: Vec<&ClusterId> = snapshot
        .clusters
        .values()
        .filter(|e| e.gone(grace, now))
        .map(|e| &e.doc.id)
        .collect();
    let mut effects = Vec::new();
    for s in &snapshot.services {
        for inst in &s.instances {
            let key = || InstanceKey::new(s.id.clone(), inst.number);
            if let Some(refuser) = snapshot.refused_by {
                let refused = inst.cluster_id.as_ref() == Some(refuser)
                    && inst.status.class() == StatusClass::NegativeScheduling;
                if refused {
                    effects.push(match decide(s.spec, &candidates, inst, Some(refuser)) {
                        Ok(to) => PlacementEffect::Move {
                            key: key(),
                            from: refuser.clone(),
                            to,
                        },
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
                Ok(to) => PlacementEffect::Assign { key: key(), to },
                Err(rejection) => PlacementEffect::Unplaced {
                    key: key(),
                    rejection,
                },
            });
        }
    }
    effects
}

/// Runs the scheduler for `inst`, leaving out `exclude` and the clusters that refused it.
fn decide(
    spec: &ServiceSpec,
    candidates: &[ClusterCandidate],
    inst: &Instance,
    exclude: Option<&ClusterId>,
) -> Result<ClusterId, Rejection> {
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
        now: Instant,
    ) -> Result<()> {
        let Some(s) = st.services.get(&key.service) else {
            return Ok(());
        };
        let one = ServiceSnapshot {
            id: &key.service,
            spec: &s.spec,
            instances: vec![&*inst],
        };
        let effects = plan(&self.snapshot(st, vec![one], refused_by), now);
        for effect in &effects {
            self.stage(st, change, inst, effect)?;
        }
        Ok(())
    }

    /// Periodic work: clusters that stopped reporting lose their instances, and instances that
    /// wait for a cluster are placed when one fits.
    pub async fn tick(&self) -> Result<()> {
        let now = now();
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
        let effects = plan(&self.snapshot(&st, services, None), now);
        let mut change = Change::new(&st);
        for one in effects.chunk_by(|a, b| a.key() == b.key()) {
            let key = one[0].key();
            let Some(before) = st.instance(key) else {
                continue;
            };
            let mut inst = before.clone();
            for effect in one {
                self.stage(&st, &mut change, &mut inst, effect)?;
            }
            if inst.status != before.status || inst.cluster_id != before.cluster_id {
                change.put_instance(key.clone(), inst)?;
            }
        }
        self.commit(&mut st, change).await
    }

    /// Stages one effect on `inst`, the copy of the instance being changed.
    fn stage(
        &self,
        st: &State,
        change: &mut Change,
        inst: &mut Instance,
        effect: &PlacementEffect,
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
                );
                self.metrics.reschedule();
            }
            PlacementEffect::Assign { key, to } => {
                self.metrics.schedule_decision(true);
                deploy(st, change, key, inst, to)?;
            }
            PlacementEffect::Unplaced { rejection, .. } => {
                self.metrics.schedule_decision(false);
                if inst.status != rejection.status || inst.detail != rejection.detail {
                    inst.set_status(rejection.status, rejection.detail.clone());
                }
            }
            PlacementEffect::Move { key, from, to } => {
                self.metrics.schedule_decision(true);
                change.undeploy(from.clone(), &key.service, Some(key.number))?;
                deploy(st, change, key, inst, to)?;
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
) -> Result<()> {
    let Some(s) = st.services.get(&key.service) else {
        return Ok(());
    };
    inst.cluster_id = Some(cluster.clone());
    inst.node_id = None;
    inst.set_status(InstanceStatus::ClusterScheduled, "");
    let action = CommandAction::Deploy {
        service_id: key.service.clone(),
        instance: inst.number,
        spec: Box::new(s.spec.clone()),
        instance_ip: Some(inst.ip),
    };
    change.send(cluster.clone(), action)
}

#[cfg(test)]
mod tests {
    use super::PlacementEffect as E;
    use super::*;
    use crate::control::tests::report;
    use crate::model::Cluster;
    use canopy_core::job::Constraint;
    use canopy_core::{InstanceNumber, JobName, Virtualization};
    use std::net::Ipv4Addr;

    const GRACE: Duration = Duration::from_secs(30);

    fn id(name: &str) -> ClusterId {
        ClusterId::parse(name).unwrap()
    }

    /// A one-vcpu service, pinned to a cluster by name with `direct`.
    fn spec(direct: Option<&str>) -> ServiceSpec {
        let mut s = ServiceSpec::new(
            JobName::new("a", "b", "c", "d").unwrap(),
            Virtualization::Container,
            "img",
        );
        s.resources.vcpus = 1;
        s.constraints = direct
            .map(|to| Constraint::Direct {
                cluster: Some(to.into()),
                nodes: Vec::new(),
            })
            .into_iter()
            .collect();
        s
    }

    /// How a cluster looks at `now`.
    #[derive(Clone, Copy)]
    enum Seen {
        /// Reported just now, with this many vcpus free (0: full).
        Now(u32),
        /// Silent for longer than the grace period.
        Silent,
    }

    fn clusters(list: &[(&str, Seen)], now: Instant) -> BTreeMap<ClusterId, ClusterEntry> {
        list.iter()
            .map(|&(name, seen)| {
                let doc = Cluster {
                    id: id(name),
                    name: name.into(),
                    location: None,
                    session_token: String::new(),
                    last_acked_seq: 0,
                    registered_at: 0.0,
                    version: String::new(),
                };
                let (vcpus, last_seen) = match seen {
                    Seen::Now(vcpus) => (vcpus, now),
                    Seen::Silent => (8, now - GRACE - Duration::from_secs(1)),
                };
                let mut e = ClusterEntry::new(doc, last_seen);
                e.report = Some(report(vcpus));
                (id(name), e)
            })
            .collect()
    }

    fn instance(on: Option<&str>, status: InstanceStatus, refused_by: &[&str]) -> Instance {
        let mut i = Instance::new(InstanceNumber(0), Ipv4Addr::new(10, 30, 0, 2));
        i.cluster_id = on.map(id);
        i.status = status;
        i.refused_by = refused_by.iter().map(|c| id(c)).collect();
        i
    }

    /// The effects in short: `assign b`, `move a b`, `stays`, `take-back a`, `unplaced STATUS`.
    fn short(e: &PlacementEffect) -> String {
        match e {
            E::TakeBack { from, .. } => format!("take-back {from}"),
            E::Assign { to, .. } => format!("assign {to}"),
            E::Unplaced { rejection, .. } => format!("unplaced {:?}", rejection.status),
            E::Move { from, to, .. } => format!("move {from} {to}"),
            E::Stays { .. } => "stays".into(),
        }
    }

    use InstanceStatus as S;
    use Seen::{Now, Silent};

    struct Case {
        what: &'static str,
        clusters: &'static [(&'static str, Seen)],
        direct: Option<&'static str>,
        on: Option<&'static str>,
        status: InstanceStatus,
        refused: &'static [&'static str],
        /// The cluster whose report triggers the step; `None`: new instance or periodic pass.
        refused_by: Option<&'static str>,
        effects: &'static [&'static str],
    }

    const WAITING: (Option<&str>, InstanceStatus) = (None, S::Requested);

    #[test]
    fn plan_cases() {
        let cases = [
            Case {
                what: "a waiting instance goes to a cluster with room",
                clusters: &[("full", Now(0)), ("roomy", Now(4))],
                direct: None,
                on: WAITING.0,
                status: WAITING.1,
                refused: &[],
                refused_by: None,
                effects: &["assign roomy"],
            },
            Case {
                what: "every cluster full: it waits with the rejection",
                clusters: &[("a", Now(0)), ("b", Now(0))],
                direct: None,
                on: WAITING.0,
                status: WAITING.1,
                refused: &[],
                refused_by: None,
                effects: &["unplaced NoActiveClusterWithCapacity"],
            },
            Case {
                what: "a refusing cluster hands it on",
                clusters: &[("a", Now(4)), ("b", Now(4)), ("c", Now(4))],
                direct: None,
                on: Some("a"),
                status: S::NoWorkerCapacity,
                refused: &["a"],
                refused_by: Some("a"),
                effects: &["move a b"],
            },
            Case {
                what: "a cluster that refused before is not tried again",
                clusters: &[("a", Now(4)), ("b", Now(4)), ("c", Now(4))],
                direct: None,
                on: Some("a"),
                status: S::NoWorkerCapacity,
                refused: &["b", "a"],
                refused_by: Some("a"),
                effects: &["move a c"],
            },
            Case {
                what: "no cluster left: the refusing cluster's answer stands",
                clusters: &[("a", Now(4)), ("b", Now(4)), ("full", Now(0))],
                direct: None,
                on: Some("a"),
                status: S::NoWorkerCapacity,
                refused: &["b", "a"],
                refused_by: Some("a"),
                effects: &["stays"],
            },
            Case {
                what: "a report that is no refusal moves nothing",
                clusters: &[("a", Now(4)), ("b", Now(4))],
                direct: None,
                on: Some("a"),
                status: S::Running,
                refused: &[],
                refused_by: Some("a"),
                effects: &[],
            },
            Case {
                what: "a silent cluster loses its instance to an active one",
                clusters: &[("gone", Silent), ("b", Now(4))],
                direct: None,
                on: Some("gone"),
                status: S::Running,
                refused: &[],
                refused_by: None,
                effects: &["take-back gone", "assign b"],
            },
            Case {
                what: "a completed instance stays on a silent cluster",
                clusters: &[("gone", Silent), ("b", Now(4))],
                direct: None,
                on: Some("gone"),
                status: S::Completed,
                refused: &[],
                refused_by: None,
                effects: &[],
            },
            Case {
                what: "an instance on an active cluster is left alone",
                clusters: &[("a", Now(4)), ("b", Now(8))],
                direct: None,
                on: Some("a"),
                status: S::NoWorkerCapacity,
                refused: &["a"],
                refused_by: None,
                effects: &[],
            },
            Case {
                what: "while its only cluster is silent it keeps waiting",
                clusters: &[("a", Silent)],
                direct: None,
                on: None,
                status: S::NoActiveClusterWithCapacity,
                refused: &[],
                refused_by: None,
                effects: &["unplaced NoActiveClusterWithCapacity"],
            },
            Case {
                what: "a cluster that comes back takes the waiting instance",
                clusters: &[("a", Now(4))],
                direct: None,
                on: None,
                status: S::NoActiveClusterWithCapacity,
                refused: &[],
                refused_by: None,
                effects: &["assign a"],
            },
            Case {
                what: "pinned: only its cluster, however much room others have",
                clusters: &[("a", Now(1)), ("b", Now(8))],
                direct: Some("a"),
                on: WAITING.0,
                status: WAITING.1,
                refused: &[],
                refused_by: None,
                effects: &["assign a"],
            },
            Case {
                what: "pinned to a silent cluster: taken back, waits for that cluster",
                clusters: &[("a", Silent), ("b", Now(8))],
                direct: Some("a"),
                on: Some("a"),
                status: S::Running,
                refused: &[],
                refused_by: None,
                effects: &["take-back a", "unplaced TargetClusterNotActive"],
            },
            Case {
                what: "pinned and refused: no other cluster may take it",
                clusters: &[("a", Now(4)), ("b", Now(8))],
                direct: Some("a"),
                on: Some("a"),
                status: S::NoWorkerCapacity,
                refused: &["a"],
                refused_by: Some("a"),
                effects: &["stays"],
            },
        ];
        let now = Instant::now() + GRACE * 2;
        let sid = ServiceId::parse("svc").unwrap();
        for c in cases {
            let clusters = clusters(c.clusters, now);
            let spec = spec(c.direct);
            let inst = instance(c.on, c.status, c.refused);
            let refused_by = c.refused_by.map(id);
            let snapshot = PlacementSnapshot {
                clusters: &clusters,
                grace: GRACE,
                services: vec![ServiceSnapshot {
                    id: &sid,
                    spec: &spec,
                    instances: vec![&inst],
                }],
                refused_by: refused_by.as_ref(),
            };
            let effects = plan(&snapshot, now);
            let got: Vec<String> = effects.iter().map(short).collect();
            assert_eq!(got, c.effects, "{}", c.what);
            let key = InstanceKey::new(sid.clone(), InstanceNumber(0));
            assert!(effects.iter().all(|e| e.key() == &key), "{}", c.what);
        }
    }
}
