//! Start latency on this machine: deploy message published → `RUNNING` reported, for a
//! cached container image and for a (compiled, cached) wasm module, beside a bare
//! `ctr run -d` of the same image measured in the same run.
//!
//!     cargo bench -p node-engine --bench start_latency        (as root, containerd running)
//!
//! `CANOPY_BENCH_RUNS` sets the number of starts per kind (default 20). The last line of output
//! is `BENCH_JSON {...}` for scripts/bench.sh.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use canopy_e2e::stats::summarize;
use common::*;
use std::time::Instant;

const JOB: &str = "bench.ns.start.ns";

const IDLE_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; one clock subscription at 0: tag 0 (clock) at 8, clock id 1 (monotonic) at 16,
    ;; timeout 100 ms at 24, relative (flags 0) at 40
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 100000000))
    (loop $l
      (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))
      (br $l))))
"#;

async fn engine_starts(
    cluster: &mut Cluster,
    runs: u32,
    virtualization: &str,
    code: &str,
    cmd: &[&str],
) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..runs {
        let n = 1000 + i;
        let msg = deploy(JOB, n, virtualization, code, cmd);
        let t = Instant::now();
        cluster.deploy(&msg).await;
        cluster.status(JOB, n, "RUNNING", SECS_60).await;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        cluster.delete(JOB, n).await;
        cluster.status(JOB, n, "UNDEPLOYED", SECS_60).await;
    }
    out
}

fn main() {
    require_containerd();
    let runs: u32 = std::env::var("CANOPY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ns = Namespace::new("bench");
        let broker = Broker::start().await;
        let mut cluster = Cluster::start(&broker).await;
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::start(Engine::config(&cluster.addr, dir.path(), &ns)).await;
        engine.wait_connected(SECS_30).await;
        // A service that idles: sleeps 100 ms at a time in poll_oneoff (a spinning module would
        // take a core and slow everything else on a small machine).
        let module = dir.path().join("idle.wat");
        std::fs::write(&module, IDLE_WAT).unwrap();
        let module = module.display().to_string();
        let image = oci_archive();

        // Warm-up: the image gets imported and unpacked, the module compiled.
        eprintln!("warming up (image import, module compile)...");
        engine_starts(&mut cluster, 1, "container", &image, &["sleep", "600"]).await;
        engine_starts(&mut cluster, 1, "wasm", &module, &[]).await;

        eprintln!("{runs} container starts through the engine...");
        let container = summarize(engine_starts(&mut cluster, runs, "container", &image, &["sleep", "600"]).await);
        eprintln!("{runs} bare `ctr run -d` of the same image...");
        let baseline = summarize(canopy_e2e::ctr::run_baseline(&ns.0, "canopy.test/busybox:1", runs));
        eprintln!("{runs} wasm module starts through the engine...");
        let wasm = summarize(engine_starts(&mut cluster, runs, "wasm", &module, &[]).await);
        // Where the time goes inside the engine: the runtimes' own start latency.
        let (_, metrics) = engine.get("/metrics").await;
        let start_ms = |runtime: &str| -> f64 {
            let field = |what: &str| -> f64 {
                let key = format!("canopy_node_runtime_operation_seconds_{what}{{runtime=\"{runtime}\",op=\"start\",result=\"ok\"}}");
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(&key))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(f64::NAN)
            };
            field("sum") / field("count") * 1000.0
        };
        let (container_rt, wasm_rt) = (start_ms("container"), start_ms("wasm"));
        engine.stop().await;

        println!();
        println!("start latency, {runs} runs each (ms)      p50      p90      p99      max");
        for (name, s) in [
            ("container via node engine (cached)", &container),
            ("bare `ctr run -d`, same image", &baseline),
            ("wasm module via node engine", &wasm),
        ] {
            println!("{name:<38} {:>8.1} {:>8.1} {:>8.1} {:>8.1}", s.p50, s.p90, s.p99, s.max);
        }
        println!(
            "of which inside the runtime's start (mean, ms): container {container_rt:.1}, wasm {wasm_rt:.1}"
        );
        println!(
            "BENCH_JSON {}",
            serde_json::json!({
                "runs": runs,
                "container_start_ms": {"p50": container.p50, "p90": container.p90, "p99": container.p99},
                "ctr_run_baseline_ms": {"p50": baseline.p50, "p90": baseline.p90, "p99": baseline.p99},
                "wasm_start_ms": {"p50": wasm.p50, "p90": wasm.p90, "p99": wasm.p99},
            })
        );
    });
}
