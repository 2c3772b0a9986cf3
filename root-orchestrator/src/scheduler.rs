//! The root scheduler: picks a cluster for one service instance. A pure function over a
//! snapshot of the clusters, so it is unit-tested and benchmarked without I/O.
//!
//! # Filters, in order
//!
//! 1. `direct` constraint naming a cluster: only that cluster is considered. Unknown name →
//!    `TargetClusterNotFound`; inactive → `TargetClusterNotActive`; it does not fit →
//!    `TargetClusterNoCapacity`.
//! 2. Only active clusters.
//! 3. `clusters` constraint: the cluster's name is in `allowed`.
//! 4. `geo` constraint: the cluster has a location, and the distance between the constraint's
//!    point and the cluster's point is at most the constraint's radius plus the radius the
//!    cluster serves.
//! 5. `addons` constraint: every addon in `needs` is among the cluster's supported addons.
//! 6. Capacity: the cluster runs the service's virtualization and its free vcpus, memory and
//!    GPUs (summed over its active workers) cover the request. With `arch` given, the same
//!    check is made per architecture, and some listed architecture must pass.
//!
//! `latency` constraints are not enforced at the root: clusters report no latency
//! measurements yet. Nothing left → `NoActiveClusterWithCapacity`, with a detail that counts
//! why clusters were turned away.
//!
//! # Score
//!
//! Among the clusters left, the least loaded wins (spreading, as Oakestra's scheduler does in
//! effect): score = (100 − cpu%) + (100 − memory%) of the aggregate that fits, less
//! [`UNREPORTED_COST`] spread over its active workers for every instance given to the cluster
//! since that report (else a burst of deploys all lands on the cluster whose last report was
//! best, until its next report). Ties go to more
//! free memory, then more free vcpus, then the smaller cluster id, so the choice is
//! deterministic.

use canopy_core::job::Constraint;
use canopy_core::link::{ClusterLocation, ClusterReport, ResourceAggregate};
use canopy_core::resources::{UNREPORTED_COST, load_headroom};
use canopy_core::{ClusterId, InstanceStatus, ServiceSpec};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One cluster as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterCandidate {
    pub id: ClusterId,
    pub name: String,
    /// Reported within the grace period.
    pub active: bool,
    pub location: Option<ClusterLocation>,
    pub report: ClusterReport,
    /// Instances given to it since `report` (which cannot show them yet).
    pub unreported: u32,
}

/// Why no cluster was chosen: the negative status to store and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: InstanceStatus,
    pub detail: String,
}

/// Chooses a cluster for one instance of `spec`.
pub fn schedule(spec: &ServiceSpec, clusters: &[ClusterCandidate]) -> Result<ClusterId, Rejection> {
    if let Some(target) = direct_cluster(spec) {
        return schedule_direct(spec, clusters, target);
    }
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut best: Option<(&ClusterCandidate, Score)> = None;
    for c in clusters {
        match evaluate(spec, c) {
            Ok(score) => {
                if best.as_ref().is_none_or(|(b, s)| better(&score, c, s, b)) {
                    best = Some((c, score));
                }
            }
            Err(reason) => *reasons.entry(reason).or_default() += 1,
        }
    }
    match best {
        Some((c, _)) => Ok(c.id.clone()),
        None => Err(Rejection {
            status: InstanceStatus::NoActiveClusterWithCapacity,
            detail: describe(clusters.len(), &reasons),
        }),
    }
}

fn direct_cluster(spec: &ServiceSpec) -> Option<&str> {
    spec.constraints.iter().find_map(|c| match c {
        Constraint::Direct {
            cluster: Some(name),
            ..
        } => Some(name.as_str()),
        _ => None,
    })
}

fn schedule_direct(
    spec: &ServiceSpec,
    clusters: &[ClusterCandidate],
    target: &str,
) -> Result<ClusterId, Rejection> {
    let reject = |status, detail: String| Err(Rejection { status, detail });
    let Some(c) = clusters.iter().find(|c| c.name == target) else {
        return reject(
            InstanceStatus::TargetClusterNotFound,
            format!("no cluster is named {target:?}"),
        );
    };
    if !c.active {
        return reject(
            InstanceStatus::TargetClusterNotActive,
            format!("cluster {target:?} is not active"),
        );
    }
    match evaluate(spec, c) {
        Ok(_) => Ok(c.id.clone()),
        Err(reason) => reject(
            InstanceStatus::TargetClusterNoCapacity,
            format!("cluster {target:?}: {reason}"),
        ),
    }
}

/// Load score of a fitting cluster; higher is better.
#[derive(Debug, Clone, Copy)]
struct Score {
    headroom: f64,
    free_memory_mb: u64,
    free_vcpus: u32,
}

fn better(a: &Score, ac: &ClusterCandidate, b: &Score, bc: &ClusterCandidate) -> bool {
    let order = a
        .headroom
        .partial_cmp(&b.headroom)
        .unwrap_or(Ordering::Equal)
        .then(a.free_memory_mb.cmp(&b.free_memory_mb))
        .then(a.free_vcpus.cmp(&b.free_vcpus))
        .then(bc.id.cmp(&ac.id));
    order == Ordering::Greater
}

/// Whether `c` can take one instance of `spec`, and how good a choice it is.
fn evaluate(spec: &ServiceSpec, c: &ClusterCandidate) -> Result<Score, &'static str> {
    if !c.active {
        return Err("not active");
    }
    for constraint in &spec.constraints {
        match constraint {
            Constraint::Clusters { allowed } if !allowed.contains(&c.name) => {
                return Err("not in the allowed clusters");
            }
            Constraint::Geo {
                location,
                radius_km,
            } => {
                let Some(cl) = &c.location else {
                    return Err("no location for a geo constraint");
                };
                if location.distance_km(&cl.point) > radius_km + cl.radius_km {
                    return Err("too far away");
                }
            }
            Constraint::Addons { needs }
                if !needs
                    .iter()
                    .all(|n| c.report.total.supported_addons.contains(n)) =>
            {
                return Err("missing addons");
            }
            _ => {}
        }
    }
    if spec.architectures.is_empty() {
        return fits(spec, &c.report.total, c.unreported);
    }
    let mut last_err = "no worker of the required architecture";
    let mut best: Option<Score> = None;
    for arch in &spec.architectures {
        if let Some(agg) = c.report.per_architecture.get(arch) {
            match fits(spec, agg, c.unreported) {
                Ok(s) if best.is_none_or(|b| s.headroom > b.headroom) => best = Some(s),
                Ok(_) => {}
                Err(e) => last_err = e,
            }
        }
    }
    best.ok_or(last_err)
}

/// Whether `agg` can take one instance of `spec`; `unreported`: instances given to its
/// cluster since it was reported.
fn fits(
    spec: &ServiceSpec,
    agg: &ResourceAggregate,
    unreported: u32,
) -> Result<Score, &'static str> {
    if agg.active_nodes == 0 {
        return Err("no active workers");
    }
    if !agg.virtualizations.contains(&spec.virtualization) {
        return Err("virtualization not offered");
    }
    let need = &spec.resources;
    if need.vcpus > agg.free.vcpus {
        return Err("too few free vcpus");
    }
    if need.memory_mb > agg.free.memory_mb {
        return Err("too little free memory");
    }
    if need.vgpus > agg.free.vgpus {
        return Err("too few free GPUs");
    }
    Ok(Score {
        headroom: load_headroom(agg.cpu_percent, agg.memory_percent)
            - UNREPORTED_COST * f64::from(unreported) / f64::from(agg.active_nodes),
        free_memory_mb: agg.free.memory_mb,
        free_vcpus: agg.free.vcpus,
    })
}

fn describe(total: usize, reasons: &BTreeMap<&'static str, usize>) -> String {
    if total == 0 {
        return "no cluster is registered".to_owned();
    }
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("none of {total} cluster(s) fits: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::job::GeoPoint;
    use canopy_core::{Architecture, JobName, Resources, Virtualization};

    fn spec(vcpus: u32, memory_mb: u64) -> ServiceSpec {
        let mut s = ServiceSpec::new(
            JobName::new("a", "b", "c", "d").unwrap(),
            Virtualization::Container,
            "img",
        );
        s.resources = Resources {
            vcpus,
            memory_mb,
            vgpus: 0,
        };
        s
    }

    fn agg(vcpus: u32, memory_mb: u64, cpu_percent: f64) -> ResourceAggregate {
        ResourceAggregate {
            active_nodes: 1,
            free: Resources {
                vcpus,
                memory_mb,
                vgpus: 0,
            },
            cpu_percent,
            memory_percent: 50.0,
            virtualizations: [Virtualization::Container].into(),
            supported_addons: Default::default(),
            csi_drivers: Default::default(),
        }
    }

    fn cluster(name: &str, vcpus: u32, memory_mb: u64, cpu_percent: f64) -> ClusterCandidate {
        ClusterCandidate {
            id: ClusterId::parse(format!("id-{name}")).unwrap(),
            name: name.into(),
            active: true,
            location: None,
            report: ClusterReport {
                total: agg(vcpus, memory_mb, cpu_percent),
                per_architecture: [(Architecture::Amd64, agg(vcpus, memory_mb, cpu_percent))]
                    .into(),
                ..Default::default()
            },
            unreported: 0,
        }
    }

    fn id(name: &str) -> ClusterId {
        ClusterId::parse(format!("id-{name}")).unwrap()
    }

    #[test]
    fn picks_the_least_loaded_fitting_cluster() {
        let cs = [
            cluster("busy", 8, 8000, 90.0),
            cluster("idle", 8, 8000, 10.0),
            cluster("small", 1, 100, 0.0),
        ];
        assert_eq!(schedule(&spec(2, 512), &cs), Ok(id("idle")));
    }

    #[test]
    fn ties_are_broken_deterministically() {
        let cs = [cluster("b", 4, 1000, 10.0), cluster("a", 4, 1000, 10.0)];
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("a")));
        let cs = [cluster("b", 4, 2000, 10.0), cluster("a", 4, 1000, 10.0)];
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("b")));
    }

    /// Instances given since the last report count against a cluster, spread over its
    /// workers: equal clusters share a burst; a much less loaded one takes more of it.
    #[test]
    fn instances_given_since_the_report_count_against_a_cluster() {
        let mut cs = [cluster("a", 4, 1000, 10.0), cluster("b", 4, 1000, 10.0)];
        cs[0].unreported = 1;
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("b")));
        cs[1].unreported = 1;
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("a")));
        // 10 points of headroom are 5 instances on a one-worker cluster, 50 on ten workers.
        let mut cs = [
            cluster("idle", 4, 1000, 0.0),
            cluster("busy", 4, 1000, 10.0),
        ];
        cs[0].unreported = 5;
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("busy")));
        for a in [&mut cs[0].report.total]
            .into_iter()
            .chain(cs[0].report.per_architecture.values_mut())
        {
            a.active_nodes = 10;
        }
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("idle")));
        cs[0].unreported = 49;
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("idle")));
        cs[0].unreported = 51;
        assert_eq!(schedule(&spec(1, 1), &cs), Ok(id("busy")));
    }

    #[test]
    fn resources_and_virtualization_filter() {
        let cs = [cluster("c", 2, 1024, 0.0)];
        assert!(schedule(&spec(2, 1024), &cs).is_ok());
        let r = schedule(&spec(3, 10), &cs).unwrap_err();
        assert_eq!(r.status, InstanceStatus::NoActiveClusterWithCapacity);
        assert_eq!(r.detail, "none of 1 cluster(s) fits: 1 too few free vcpus");
        let r = schedule(&spec(1, 2048), &cs).unwrap_err();
        assert!(r.detail.contains("too little free memory"), "{}", r.detail);
        let mut gpu = spec(1, 1);
        gpu.resources.vgpus = 1;
        assert!(schedule(&gpu, &cs).unwrap_err().detail.contains("GPUs"));
        let mut wasm = spec(1, 1);
        wasm.virtualization = Virtualization::Wasm;
        assert!(
            schedule(&wasm, &cs)
                .unwrap_err()
                .detail
                .contains("virtualization")
        );
    }

    #[test]
    fn inactive_clusters_are_skipped_and_nothing_registered_is_said() {
        let mut c = cluster("c", 8, 8000, 0.0);
        c.active = false;
        let r = schedule(&spec(1, 1), &[c]).unwrap_err();
        assert_eq!(r.status, InstanceStatus::NoActiveClusterWithCapacity);
        assert!(r.detail.contains("1 not active"));
        assert_eq!(
            schedule(&spec(1, 1), &[]).unwrap_err().detail,
            "no cluster is registered"
        );
    }

    #[test]
    fn direct_constraint_gives_oakestras_target_statuses() {
        let mut down = cluster("down", 8, 8000, 0.0);
        down.active = false;
        let cs = [
            cluster("big", 8, 8000, 50.0),
            cluster("tiny", 1, 64, 0.0),
            down,
        ];
        let direct = |name: &str, vcpus| {
            let mut s = spec(vcpus, 32);
            s.constraints = vec![Constraint::Direct {
                cluster: Some(name.into()),
                nodes: vec![],
            }];
            s
        };
        assert_eq!(schedule(&direct("tiny", 1), &cs), Ok(id("tiny")));
        let status = |r: Result<ClusterId, Rejection>| r.unwrap_err().status;
        assert_eq!(
            status(schedule(&direct("nope", 1), &cs)),
            InstanceStatus::TargetClusterNotFound
        );
        assert_eq!(
            status(schedule(&direct("down", 1), &cs)),
            InstanceStatus::TargetClusterNotActive
        );
        assert_eq!(
            status(schedule(&direct("tiny", 2), &cs)),
            InstanceStatus::TargetClusterNoCapacity
        );
        // A node-only direct constraint is the cluster's business, not the root's.
        let mut nodes_only = spec(1, 1);
        nodes_only.constraints = vec![Constraint::Direct {
            cluster: None,
            nodes: vec!["w1".into()],
        }];
        assert!(schedule(&nodes_only, &cs).is_ok());
    }

    #[test]
    fn clusters_geo_and_addons_constraints() {
        let mut munich = cluster("munich", 4, 4000, 50.0);
        munich.location = Some(ClusterLocation::parse("48.137,11.575,10").unwrap());
        let mut berlin = cluster("berlin", 4, 4000, 0.0);
        berlin.location = Some(ClusterLocation::parse("52.52,13.405,10").unwrap());
        berlin.report.total.supported_addons = ["gpu-monitoring".to_owned()].into();
        let nowhere = cluster("nowhere", 4, 4000, 0.0);
        let cs = [munich, berlin, nowhere];

        let mut s = spec(1, 1);
        s.constraints = vec![Constraint::Clusters {
            allowed: vec!["munich".into()],
        }];
        assert_eq!(schedule(&s, &cs), Ok(id("munich")));

        // Garching is ~15 km from Munich: inside 10 km + Munich's own 10 km radius.
        s.constraints = vec![Constraint::Geo {
            location: GeoPoint::parse("48.249,11.651").unwrap(),
            radius_km: 10.0,
        }];
        assert_eq!(schedule(&s, &cs), Ok(id("munich")));
        s.constraints = vec![Constraint::Geo {
            location: GeoPoint::parse("48.249,11.651").unwrap(),
            radius_km: 1.0,
        }];
        let r = schedule(&s, &cs).unwrap_err();
        assert!(
            r.detail.contains("2 too far away") && r.detail.contains("1 no location"),
            "{}",
            r.detail
        );

        s.constraints = vec![Constraint::Addons {
            needs: vec!["gpu-monitoring".into()],
        }];
        assert_eq!(schedule(&s, &cs), Ok(id("berlin")));
    }

    #[test]
    fn architecture_uses_per_architecture_aggregates() {
        let mut mixed = cluster("mixed", 8, 8000, 0.0);
        mixed
            .report
            .per_architecture
            .insert(Architecture::Arm64, agg(1, 256, 0.0));
        let cs = [mixed, cluster("x86", 8, 8000, 50.0)];
        let mut s = spec(1, 128);
        s.architectures = vec![Architecture::Arm64];
        assert_eq!(schedule(&s, &cs), Ok(id("mixed")));
        s.resources.vcpus = 2;
        let r = schedule(&s, &cs).unwrap_err();
        assert!(r.detail.contains("1 too few free vcpus"), "{}", r.detail);
        assert!(
            r.detail
                .contains("1 no worker of the required architecture"),
            "{}",
            r.detail
        );
    }
}
