//! The cluster scheduler: picks a worker for one service instance. A pure function over a
//! snapshot of the cluster's workers, unit-tested and benchmarked without I/O.
//!
//! # Filters
//!
//! A worker *qualifies* when it is active, runs the service's virtualization, has one of the
//! service's architectures (when `arch` is given) and, when a `direct` constraint lists nodes
//! (`node1;node2`), is one of them (matched by node name or id). A qualified worker *fits* when
//! its free vcpus, memory and GPUs cover the request.
//!
//! - a `direct` node list naming no known worker → `NO_NODE_FOUND`;
//! - no worker qualifies → `NO_QUALIFIED_WORKER_FOUND`;
//! - workers qualify but none fits → `NO_WORKER_CAPACITY`.
//!
//! # Score
//!
//! Among the fitting workers the least loaded wins (spreading instances over the site), by
//! [`load_headroom`] of its last report less [`UNREPORTED_COST`] for every instance placed on
//! it since that report (a report is seconds old and cannot show them: without this a burst of
//! placements all lands on the worker whose last report was best); ties go to more free
//! memory, then more free vcpus, then the smaller node id. `exclude` lets the caller keep an instance off workers (e.g. the one it just failed on).

use canopy_core::job::Constraint;
use canopy_core::resources::{UNREPORTED_COST, load_headroom};
use canopy_core::{Architecture, InstanceStatus, NodeId, Resources, ServiceSpec, Virtualization};
use std::cmp::Ordering;
use std::collections::BTreeSet;

/// One worker as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCandidate {
    pub id: NodeId,
    pub name: String,
    /// Connected and reporting.
    pub active: bool,
    pub architecture: Architecture,
    pub virtualizations: BTreeSet<Virtualization>,
    /// Free resources, after what is already placed on the worker.
    pub free: Resources,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    /// Instances placed on it since its last load report.
    pub unreported: u32,
}

impl WorkerCandidate {
    /// Its reported headroom less what was placed on it since.
    fn expected_headroom(&self) -> f64 {
        load_headroom(self.cpu_percent, self.memory_percent)
            - UNREPORTED_COST * f64::from(self.unreported)
    }
}

/// Why no worker was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: InstanceStatus,
    pub detail: String,
}

/// Chooses a worker for one instance of `spec`, never one in `exclude`.
pub fn schedule(
    spec: &ServiceSpec,
    workers: &[WorkerCandidate],
    exclude: &BTreeSet<NodeId>,
) -> Result<NodeId, Rejection> {
    let direct = direct_nodes(spec);
    if let Some(names) = &direct
        && !workers
            .iter()
            .any(|w| names.contains(&w.name.as_str()) || names.contains(&w.id.as_str()))
    {
        return Err(Rejection {
            status: InstanceStatus::NoNodeFound,
            detail: format!("no worker is named {}", names.join(" or ")),
        });
    }
    let mut qualified = 0usize;
    let mut best: Option<&WorkerCandidate> = None;
    for w in workers {
        if !qualifies(spec, w, direct.as_deref()) || exclude.contains(&w.id) {
            continue;
        }
        qualified += 1;
        if spec.resources.fits_within(&w.free) && best.is_none_or(|b| better(w, b)) {
            best = Some(w);
        }
    }
    match best {
        Some(w) => Ok(w.id.clone()),
        None if qualified == 0 => Err(Rejection {
            status: InstanceStatus::NoQualifiedWorkerFound,
            detail: format!(
                "none of {} worker(s) is active with {} on {}",
                workers.len(),
                spec.virtualization,
                architectures(spec)
            ),
        }),
        None => Err(Rejection {
            status: InstanceStatus::NoWorkerCapacity,
            detail: format!(
                "{qualified} qualified worker(s), none with {} vcpus, {} MB and {} GPUs free",
                spec.resources.vcpus, spec.resources.memory_mb, spec.resources.vgpus
            ),
        }),
    }
}

fn direct_nodes(spec: &ServiceSpec) -> Option<Vec<&str>> {
    spec.constraints.iter().find_map(|c| match c {
        Constraint::Direct { nodes, .. } if !nodes.is_empty() => {
            Some(nodes.iter().map(String::as_str).collect())
        }
        _ => None,
    })
}

fn qualifies(spec: &ServiceSpec, w: &WorkerCandidate, direct: Option<&[&str]>) -> bool {
    w.active
        && w.virtualizations.contains(&spec.virtualization)
        && (spec.architectures.is_empty() || spec.architectures.contains(&w.architecture))
        && direct
            .is_none_or(|names| names.contains(&w.name.as_str()) || names.contains(&w.id.as_str()))
}

fn architectures(spec: &ServiceSpec) -> String {
    if spec.architectures.is_empty() {
        "any architecture".to_owned()
    } else {
        let names: Vec<&str> = spec.architectures.iter().map(|a| a.as_str()).collect();
        names.join("/")
    }
}

fn better(a: &WorkerCandidate, b: &WorkerCandidate) -> bool {
    a.expected_headroom()
        .partial_cmp(&b.expected_headroom())
        .unwrap_or(Ordering::Equal)
        .then(a.free.memory_mb.cmp(&b.free.memory_mb))
        .then(a.free.vcpus.cmp(&b.free.vcpus))
        .then(b.id.cmp(&a.id))
        == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_core::JobName;
    use std::collections::BTreeMap;

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

    fn worker(name: &str, vcpus: u32, memory_mb: u64, cpu_percent: f64) -> WorkerCandidate {
        WorkerCandidate {
            id: NodeId::parse(format!("id-{name}")).unwrap(),
            name: name.into(),
            active: true,
            architecture: Architecture::Amd64,
            virtualizations: [Virtualization::Container].into(),
            free: Resources {
                vcpus,
                memory_mb,
                vgpus: 0,
            },
            cpu_percent,
            memory_percent: 20.0,
            unreported: 0,
        }
    }

    fn id(name: &str) -> NodeId {
        NodeId::parse(format!("id-{name}")).unwrap()
    }

    fn none() -> BTreeSet<NodeId> {
        BTreeSet::new()
    }

    #[test]
    fn least_loaded_fitting_worker_wins() {
        let ws = [
            worker("busy", 4, 4000, 80.0),
            worker("idle", 4, 4000, 5.0),
            worker("tiny", 1, 64, 0.0),
        ];
        assert_eq!(schedule(&spec(2, 1000), &ws, &none()), Ok(id("idle")));
        assert_eq!(schedule(&spec(1, 10), &ws, &none()), Ok(id("tiny")));
        let ws = [worker("b", 4, 4000, 5.0), worker("a", 4, 4000, 5.0)];
        assert_eq!(schedule(&spec(1, 1), &ws, &none()), Ok(id("a")));
    }

    /// A burst placed between two reports: each placement counts against its worker, so the
    /// less loaded worker takes a head start proportional to its lead, then they alternate.
    #[test]
    fn a_burst_spreads_instead_of_piling_on_the_best_report() {
        let mut ws = [worker("a", 64, 64_000, 10.0), worker("b", 64, 64_000, 20.0)];
        let mut on = BTreeMap::<NodeId, u32>::new();
        let mut order = Vec::new();
        for _ in 0..20 {
            let n = schedule(&spec(0, 1), &ws, &none()).unwrap();
            let w = ws.iter_mut().find(|w| w.id == n).unwrap();
            w.free.memory_mb -= 1;
            w.unreported += 1;
            *on.entry(n.clone()).or_default() += 1;
            order.push(n);
        }
        // 10 points of cpu are 5 placements' worth of headroom.
        assert!(order[..5].iter().all(|n| *n == id("a")), "{order:?}");
        assert_eq!(on[&id("a")], 12, "{on:?}");
        assert_eq!(on[&id("b")], 8, "{on:?}");
        // A report clears the count: the reported load decides again.
        ws[1].unreported = 0;
        ws[1].cpu_percent = 0.0;
        assert_eq!(schedule(&spec(0, 1), &ws, &none()), Ok(id("b")));
    }

    #[test]
    fn capacity_versus_qualification() {
        let mut arm = worker("arm", 8, 8000, 0.0);
        arm.architecture = Architecture::Arm64;
        let mut down = worker("down", 8, 8000, 0.0);
        down.active = false;
        let ws = [worker("small", 1, 100, 0.0), arm, down];

        let r = schedule(&spec(2, 10), &ws[..1], &none()).unwrap_err();
        assert_eq!(r.status, InstanceStatus::NoWorkerCapacity);

        let mut wasm = spec(1, 1);
        wasm.virtualization = Virtualization::Wasm;
        let r = schedule(&wasm, &ws, &none()).unwrap_err();
        assert_eq!(r.status, InstanceStatus::NoQualifiedWorkerFound);
        assert!(r.detail.contains("wasm"), "{}", r.detail);

        let mut on_arm = spec(4, 10);
        on_arm.architectures = vec![Architecture::Arm64];
        assert_eq!(schedule(&on_arm, &ws, &none()), Ok(id("arm")));
        on_arm.architectures = vec![Architecture::Riscv64];
        assert_eq!(
            schedule(&on_arm, &ws, &none()).unwrap_err().status,
            InstanceStatus::NoQualifiedWorkerFound
        );
        assert_eq!(
            schedule(&spec(1, 1), &[], &none()).unwrap_err().status,
            InstanceStatus::NoQualifiedWorkerFound
        );
    }

    #[test]
    fn direct_node_lists() {
        let ws = [
            worker("w1", 1, 100, 90.0),
            worker("w2", 1, 100, 50.0),
            worker("w3", 8, 8000, 0.0),
        ];
        let mut s = spec(1, 10);
        s.constraints = vec![Constraint::Direct {
            cluster: None,
            nodes: vec!["w1".into(), "w2".into()],
        }];
        assert_eq!(schedule(&s, &ws, &none()), Ok(id("w2")));
        s.resources.vcpus = 2;
        assert_eq!(
            schedule(&s, &ws, &none()).unwrap_err().status,
            InstanceStatus::NoWorkerCapacity
        );
        s.constraints = vec![Constraint::Direct {
            cluster: None,
            nodes: vec!["ghost".into()],
        }];
        assert_eq!(
            schedule(&s, &ws, &none()).unwrap_err().status,
            InstanceStatus::NoNodeFound
        );
        // by id as well as by name
        s.resources.vcpus = 1;
        s.constraints = vec![Constraint::Direct {
            cluster: None,
            nodes: vec!["id-w1".into()],
        }];
        assert_eq!(schedule(&s, &ws, &none()), Ok(id("w1")));
    }

    #[test]
    fn excluded_workers_are_never_chosen() {
        let ws = [worker("a", 4, 4000, 0.0), worker("b", 4, 4000, 50.0)];
        let exclude: BTreeSet<NodeId> = [id("a")].into();
        assert_eq!(schedule(&spec(1, 1), &ws, &exclude), Ok(id("b")));
        let all: BTreeSet<NodeId> = [id("a"), id("b")].into();
        assert_eq!(
            schedule(&spec(1, 1), &ws, &all).unwrap_err().status,
            InstanceStatus::NoQualifiedWorkerFound
        );
    }
}
