//! Decision time of the root scheduler for 10, 100 and 1,000 clusters.
//!
//!     cargo bench -p root-orchestrator --bench root_scheduler
//!
//! Prints a table (median and p99 of per-decision time over repeated runs). Not part of the
//! test suite's pass/fail.

use canopy_core::job::{Constraint, GeoPoint};
use canopy_core::link::{ClusterLocation, ClusterReport, ResourceAggregate};
use canopy_core::{Architecture, ClusterId, JobName, Resources, ServiceSpec, Virtualization};
use root_orchestrator::scheduler::{ClusterCandidate, schedule};
use std::hint::black_box;
use std::time::Instant;

/// Deterministic pseudo-random numbers (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn clusters(n: usize) -> Vec<ClusterCandidate> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    (0..n)
        .map(|i| {
            let agg = ResourceAggregate {
                active_nodes: 1 + (rng.next() % 50) as u32,
                free: Resources {
                    vcpus: (rng.next() % 64) as u32,
                    memory_mb: rng.next() % 128_000,
                    vgpus: (rng.next() % 3) as u32,
                },
                cpu_percent: (rng.next() % 100) as f64,
                memory_percent: (rng.next() % 100) as f64,
                virtualizations: [Virtualization::Container, Virtualization::Wasm].into(),
                supported_addons: Default::default(),
                csi_drivers: Default::default(),
            };
            ClusterCandidate {
                id: ClusterId::parse(format!("cluster{i:05}")).unwrap_or_else(|e| panic!("{e}")),
                name: format!("c{i}"),
                active: !rng.next().is_multiple_of(10),
                location: Some(ClusterLocation {
                    point: GeoPoint {
                        lat: (rng.next() % 180) as f64 - 90.0,
                        lon: (rng.next() % 360) as f64 - 180.0,
                    },
                    radius_km: 50.0,
                }),
                report: ClusterReport {
                    per_architecture: [(Architecture::Amd64, agg.clone())].into(),
                    total: agg,
                    ..Default::default()
                },
                unreported: 0,
            }
        })
        .collect()
}

fn spec(geo: bool) -> ServiceSpec {
    let job = JobName::new("bench", "bench", "svc", "bench").unwrap_or_else(|e| panic!("{e}"));
    let mut s = ServiceSpec::new(job, Virtualization::Container, "img");
    s.resources = Resources {
        vcpus: 2,
        memory_mb: 2048,
        vgpus: 0,
    };
    s.architectures = vec![Architecture::Amd64];
    if geo {
        s.constraints = vec![Constraint::Geo {
            location: GeoPoint {
                lat: 48.1,
                lon: 11.5,
            },
            radius_km: 5000.0,
        }];
    }
    s
}

fn main() {
    println!("root scheduler decision time (one instance)");
    println!("| clusters | constraints | median | p99 |");
    println!("|---:|---|---:|---:|");
    for n in [10usize, 100, 1_000] {
        let cs = clusters(n);
        for geo in [false, true] {
            let s = spec(geo);
            let runs = 2_000_000 / n;
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                let r = schedule(black_box(&s), black_box(&cs));
                times.push(t.elapsed());
                black_box(r).ok();
            }
            times.sort();
            let pick = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
            println!(
                "| {n} | {} | {:.2?} | {:.2?} |",
                if geo { "geo" } else { "none" },
                pick(0.5),
                pick(0.99)
            );
        }
    }
}
