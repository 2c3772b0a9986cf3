//! [`plan`], the pure placement step, case by case: a snapshot of clusters and one instance at
//! a chosen `now`, and the effects it must give.

use super::report;
use crate::control::placement::{
    PlacementEffect as E, PlacementEffect, PlacementSnapshot, ServiceSnapshot, plan,
};
use crate::control::state::{ClusterEntry, InstanceKey};
use crate::model::Cluster;
use crate::model::Instance;
use canopy_core::job::Constraint;
use canopy_core::{ClusterId, InstanceStatus, ServiceId, ServiceSpec};
use canopy_core::{InstanceNumber, JobName, Virtualization};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

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
    let mut i = Instance::new(InstanceNumber(0), Ipv4Addr::new(10, 30, 0, 2), 0.0);
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
