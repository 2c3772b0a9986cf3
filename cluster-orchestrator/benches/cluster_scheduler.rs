//! Decision time of the cluster scheduler for 45, 1,000 and 5,000 workers.
//!
//!     cargo bench -p cluster-orchestrator --bench cluster_scheduler
//!
//! Prints median and p99 of one placement decision. Not part of the test suite's pass/fail.

use canopy_core::{Architecture, JobName, NodeId, Resources, ServiceSpec, Virtualization};
use cluster_orchestrator::scheduler::{WorkerCandidate, schedule};
use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Instant;

fn workers(n: usize) -> Vec<WorkerCandidate> {
    // A fixed linear congruential sequence: the same snapshot on every run.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        x >> 33
    };
    (0..n)
        .map(|i| WorkerCandidate {
            id: NodeId::parse(format!("node{i:05}")).unwrap_or_else(|e| panic!("{e}")),
            name: format!("w{i}"),
            active: next() % 20 != 0,
            architecture: if next() % 4 == 0 {
                Architecture::Arm64
            } else {
                Architecture::Amd64
            },
            virtualizations: [Virtualization::Container, Virtualization::Wasm].into(),
            free: Resources {
                vcpus: (next() % 8) as u32,
                memory_mb: next() % 16_000,
                vgpus: 0,
            },
            cpu_percent: (next() % 100) as f64,
            memory_percent: (next() % 100) as f64,
            unreported: (next() % 4) as u32,
        })
        .collect()
}

fn main() {
    let job = JobName::new("bench", "bench", "svc", "bench").unwrap_or_else(|e| panic!("{e}"));
    let mut spec = ServiceSpec::new(job, Virtualization::Container, "img");
    spec.resources = Resources {
        vcpus: 2,
        memory_mb: 1024,
        vgpus: 0,
    };
    spec.architectures = vec![Architecture::Amd64];
    let exclude = BTreeSet::new();
    println!("cluster scheduler decision time (one instance)");
    println!("| workers | median | p99 |");
    println!("|---:|---:|---:|");
    for n in [45usize, 1_000, 5_000] {
        let ws = workers(n);
        let runs = 5_000_000 / n;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let r = schedule(black_box(&spec), black_box(&ws), &exclude);
            times.push(t.elapsed());
            black_box(r).ok();
        }
        times.sort();
        let q = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!("| {n} | {:.2?} | {:.2?} |", q(0.5), q(0.99));
    }
}
