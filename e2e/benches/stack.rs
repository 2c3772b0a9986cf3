//! Whole-system benchmarks with the real binaries started by `canopy up` (release build), on
//! this machine's containerd. Each section prints a `BENCH_JSON {...}` line that
//! `scripts/bench.sh` collects into `docs/benchmarks.json` and `docs/benchmarks.md`.
//!
//!     cargo build --release --workspace --bins
//!     cargo bench -p canopy-e2e --bench stack -- [latency] [placement] [placement_root] [scale] [failover] [failover_silent] [idle] [unikernel]
//!
//! - `latency`: submit (`POST /api/service/<id>/instance`) → `RUNNING` seen through the API,
//!   for a cached container image and a wasm module, and a bare `ctr run -d` of the same image
//!   (`CANOPY_BENCH_RUNS`, default 50), and where the time goes: the daemons run with span
//!   marks on (`--log=info,canopy_span=debug`, `canopy_core::span`) and each leg of the path
//!   (root accepted → sent → cluster → MQTT → engine → runtime → back) is printed as p50/p90;
//! - `placement`: `--virtual-workers 200` (benchmark mode of the node engine), 5,000 instances
//!   submitted, placements per second until all are `RUNNING`;
//! - `placement_root`: the same through the root onto `--clusters 10` clusters of 200 virtual
//!   workers each, 50,000 instances (the 2,000 virtual workers ping every 10 s, as in `scale`);
//! - `scale`: 5 clusters of 1,000 virtual workers holding 50,000 `RUNNING` instances: RSS of
//!   the root and of the largest cluster, and `GET /api/services` p50/p99 (the virtual workers
//!   ping every 10 s here, not every second);
//! - `failover`: two workers; the one holding the instance is killed (engine and containers),
//!   time until the instance is `RUNNING` on the other; 10 runs;
//! - `failover_silent`: in the lab (workers in network namespaces of their own), the LAN link
//!   of the worker holding the instance goes down (nothing is closed), time until the
//!   instance is `RUNNING` on the other; `CANOPY_BENCH_FAILOVER_RUNS` runs;
//! - `idle`: RSS and CPU of root, cluster and node engines with 10 workers over 60 s, and
//!   the bytes both ways on each worker's MQTT connection (kernel counters);
//! - `unikernel`: submit → `RUNNING` for a tiny PVH kernel (`scripts/unikernel-image.sh tiny`)
//!   served over HTTP on loopback, under QEMU with the accelerator the engine picks
//!   (`CANOPY_BENCH_RUNS`, default 50: a start costs tens of milliseconds, so the VM runs no
//!   fewer than the containers). Needs QEMU; not in the default set (`scripts/bench.sh`
//!   runs it).
#![allow(clippy::unwrap_used)]

use canopy_e2e::lab::Lab;
use canopy_e2e::spans;
use canopy_e2e::stats::summarize;
use canopy_e2e::unikernel::{FileServer, QEMU, qemu_installed, tiny_kernel, unikernel};
use canopy_e2e::{Stack, container, ctr, demo_image, signal, sla};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A container that stops promptly on SIGTERM (a shell as PID 1 ignores it otherwise).
fn idler(name: &str, image: &Path) -> Value {
    container(
        name,
        image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ],
    )
}

fn emit(section: &str, v: Value) {
    println!("BENCH_JSON {}", json!({ section: v }));
}

/// Polls until instance `n` of `service` is RUNNING; returns when it was first seen so.
async fn until_running(stack: &Stack, service: &str, n: u64) -> Instant {
    let start = Instant::now();
    loop {
        let list = stack.instances(service).await;
        if list
            .iter()
            .any(|i| i["instance_number"] == n && i["status"] == "RUNNING")
        {
            return Instant::now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "instance {n} of {service} not RUNNING: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Submit → RUNNING for `runs` instances of `service`, one at a time.
async fn submit_to_running(stack: &Stack, service: &str, runs: u32) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let (status, v) = stack
            .call("POST", &format!("/api/service/{service}/instance"), None)
            .await;
        assert!(status.is_success(), "{v}");
        let n = v["instance_number"].as_u64().unwrap();
        let seen = until_running(stack, service, n).await;
        out.push(seen.duration_since(t).as_secs_f64() * 1000.0);
        stack
            .call(
                "DELETE",
                &format!("/api/service/{service}/instance/{n}"),
                None,
            )
            .await;
    }
    out
}

async fn latency(runs: u32) {
    let image = demo_image(&work());
    // Span marks on (`canopy_core::span`): the legs of the path are read back from the logs.
    let stack = Stack::up_with(
        1,
        &[
            "--node-arg=--stop-grace-secs=1",
            "--log=info,canopy_span=debug",
        ],
    )
    .await;
    let module = stack.dir.path().join("ticker.wat");
    std::fs::copy(canopy_e2e::repo().join("examples/ticker.wat"), &module).unwrap();
    let wasm = json!({
        "microservice_name": "tick",
        "microservice_namespace": "e2e",
        "virtualization": "wasm",
        "code": module.display().to_string(),
        "memory": 16,
    });
    let ids = stack
        .create(&sla("latency", vec![idler("idle", &image), wasm]))
        .await;
    eprintln!("warming up (image import, module compile)...");
    submit_to_running(&stack, &ids[0], 1).await;
    submit_to_running(&stack, &ids[1], 1).await;
    eprintln!("{runs} container instances: submit → RUNNING...");
    let c = summarize(submit_to_running(&stack, &ids[0], runs).await);
    eprintln!("{runs} wasm instances: submit → RUNNING...");
    let w = summarize(submit_to_running(&stack, &ids[1], runs).await);
    let ns = stack.namespace(1);
    let image_name = std::process::Command::new("ctr")
        .args(["-n", &ns, "images", "ls", "-q"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap();
    eprintln!("{runs} bare `ctr run -d --net-host {image_name}`...");
    let b = summarize(ctr::run_baseline(&ns, &image_name, runs));
    println!("submit → RUNNING over the REST API, {runs} runs (ms): p50 / p90 / p99");
    println!(
        "  container (cached image)  {:>7.1} {:>7.1} {:>7.1}",
        c.p50, c.p90, c.p99
    );
    println!(
        "  wasm module               {:>7.1} {:>7.1} {:>7.1}",
        w.p50, w.p90, w.p99
    );
    println!(
        "  bare ctr run -d           {:>7.1} {:>7.1} {:>7.1}",
        b.p50, b.p90, b.p99
    );
    let marks: Vec<spans::Mark> = ["root", "cluster", "worker1"]
        .iter()
        .flat_map(|d| {
            let log = stack.dir.path().join(format!("up/logs/{d}.log"));
            spans::parse(&std::fs::read_to_string(log).unwrap_or_default())
        })
        .collect();
    let mut legs = serde_json::Map::new();
    for (kind, service) in [("container", "idle"), ("wasm", "tick")] {
        let job = spans::jobs(&marks)
            .into_iter()
            .find(|j| j.split('.').nth(2) == Some(service))
            .unwrap_or_default();
        // The warm-up instance is the first of each job.
        let path = spans::legs(&marks, &job, 1);
        let n = path.first().map_or(0, |l| l.ms.len());
        println!("  {kind}: where the milliseconds go, {n} instances (ms): p50 / p90");
        let mut total = 0.0;
        let mut rows = Vec::new();
        for leg in &path {
            let s = leg.summary();
            total += s.p50;
            println!("    {:<38} {:>7.2} {:>7.2}", leg.label(), s.p50, s.p90);
            rows.push(json!({"leg": leg.label(), "p50": s.p50, "p90": s.p90}));
        }
        println!("    {:<38} {:>7.2}", "sum of the p50s", total);
        legs.insert(kind.to_owned(), Value::Array(rows));
    }
    emit(
        "latency",
        json!({
            "runs": runs,
            "container_submit_to_running_ms": c.json(),
            "wasm_submit_to_running_ms": w.json(),
            "ctr_run_baseline_ms": b.json(),
            "submit_spans_ms": legs,
        }),
    );
}

/// The accelerator worker `name`'s engine chose at start (`kvm`, `tcg`), from its log.
fn accel_of(stack: &Stack, name: &str) -> String {
    let log = std::fs::read_to_string(stack.dir.path().join(format!("up/logs/{name}.log")))
        .unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("unikernel accelerator"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("accel=")))
        .map(|a| {
            a.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn unikernel_section(runs: u32) {
    assert!(
        qemu_installed(),
        "the unikernel section needs {QEMU} (scripts/bench.sh installs it)"
    );
    let kernels = tempfile::tempdir().unwrap();
    let kernel = tiny_kernel(kernels.path(), "tiny", "BENCH-TINY", "halt");
    let server = FileServer::start(kernels.path()).await;
    // No grace: the tiny kernel ignores the power button, so each delete quits QEMU at once
    // instead of leaving VMs stopping beside the next start.
    let stack = Stack::up_with(1, &["--node-arg=--stop-grace-secs=0"]).await;
    let accel = accel_of(&stack, "worker1");
    let ids = stack
        .create(&sla(
            "unibench",
            vec![unikernel("tiny", &server.url(&kernel), &[])],
        ))
        .await;
    eprintln!("warming up (kernel fetch and unpack)...");
    submit_to_running(&stack, &ids[0], 1).await;
    eprintln!("{runs} unikernel instances ({accel}): submit → RUNNING...");
    let u = summarize(submit_to_running(&stack, &ids[0], runs).await);
    println!("submit → RUNNING over the REST API, {runs} runs (ms): p50 / p90 / p99");
    println!(
        "  unikernel (tiny kernel, {accel:<4})  {:>7.1} {:>7.1} {:>7.1}",
        u.p50, u.p90, u.p99
    );
    if u.p50 >= 1000.0 {
        eprintln!("note: p50 {:.0} ms is above the 1000 ms aimed at", u.p50);
    }
    emit(
        "unikernel",
        json!({
            "runs": runs,
            "accel": accel,
            "unikernel_submit_to_running_ms": u.json(),
        }),
    );
}

/// How a [`place`] went.
struct Placed {
    /// Seconds to submit every instance.
    submitted: f64,
    /// Seconds until all were `RUNNING`, if they were within `CANOPY_BENCH_PLACE_WAIT_SECS`.
    done: Option<f64>,
    /// The most instances seen `RUNNING` at once.
    most_running: f64,
}

/// `services` services of `per` instances each, every service submitting from a task of its
/// own (one `POST /api/service/<id>/instance` per instance), then waiting until the root
/// counts them all `RUNNING` (at most `CANOPY_BENCH_PLACE_WAIT_SECS`, 300, after the
/// submissions: a stack that does not get there is reported as such, not waited for).
async fn place(stack: std::sync::Arc<Stack>, app: &str, services: u32, per: u32) -> Placed {
    let micro: Vec<Value> = (0..services)
        .map(|i| {
            json!({
                "microservice_name": format!("s{i}"),
                "microservice_namespace": "e2e",
                "virtualization": "container",
                "code": "docker.io/library/placeholder:1",
                "memory": 1,
            })
        })
        .collect();
    let ids = stack.create(&sla(app, micro)).await;
    let total = f64::from(per * services);
    let running = r#"canopy_root_instances{status="RUNNING"}"#;
    let before = stack.root_metric(running).await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for id in ids {
        let s = stack.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let (status, v) = s
                    .call("POST", &format!("/api/service/{id}/instance"), None)
                    .await;
                assert!(status.is_success(), "{v}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let submitted = t0.elapsed().as_secs_f64();
    eprintln!("submitted in {submitted:.1} s; waiting for all RUNNING...");
    let wait: u64 = std::env::var("CANOPY_BENCH_PLACE_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let deadline = Instant::now() + Duration::from_secs(wait);
    let mut last = -1.0;
    let mut most_running = 0.0f64;
    let done = loop {
        let now = stack.root_metric(running).await - before;
        most_running = most_running.max(now);
        if now != last {
            eprintln!(
                "  {:>6.1} s  {now}/{total} RUNNING",
                t0.elapsed().as_secs_f64()
            );
            last = now;
        }
        if now >= total {
            break Some(t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            eprintln!("not all RUNNING {wait} s after the submissions: giving up");
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Placed {
        submitted,
        done,
        most_running,
    }
}

/// `canopy up` with `clusters` clusters of `workers` virtual workers each, and no real ones;
/// `keepalive_secs`: the virtual workers' MQTT keep-alive (a real worker's is 1 s).
async fn virtual_stack(clusters: u32, workers: u32, keepalive_secs: u32) -> std::sync::Arc<Stack> {
    let stack = Stack::up_with(
        0,
        &[
            &format!("--clusters={clusters}"),
            &format!("--virtual-workers={workers}"),
            &format!("--node-arg=--keepalive-secs={keepalive_secs}"),
        ],
    )
    .await;
    std::sync::Arc::new(stack)
}

/// `placement` (one cluster) and `placement_root` (several, so the root's own path is what is
/// measured): instances submitted through the root's API until all are `RUNNING`.
/// `keepalive_secs`: the virtual workers' MQTT keep-alive (see [`scale`]).
async fn placement(
    section: &str,
    clusters: u32,
    workers: u32,
    instances: u32,
    keepalive_secs: u32,
) {
    let stack = virtual_stack(clusters, workers, keepalive_secs).await;
    let services = (instances / 100).clamp(1, 100);
    let per = instances / services;
    let total = per * services;
    eprintln!(
        "submitting {total} instances over {services} services to {clusters} cluster(s) x {workers} virtual workers..."
    );
    let p = place(stack.clone(), "placement", services, per).await;
    let submitted = p.submitted;
    // Not all RUNNING: the rate is what was reached over the whole wait.
    let done = p.done.unwrap_or(f64::INFINITY);
    let rate = match p.done {
        Some(d) => f64::from(total) / d,
        None => 0.0,
    };
    println!(
        "{section}: {total} instances on {clusters} cluster(s) x {workers} virtual workers, all RUNNING after {done:.1} s ({rate:.0}/s; submitted in {submitted:.1} s; at most {:.0} RUNNING at once)",
        p.most_running
    );
    let key = if section == "placement" {
        "placements_per_second"
    } else {
        "placements_per_second_root"
    };
    emit(
        section,
        json!({
            "clusters": clusters,
            "virtual_workers": workers,
            "instances": total,
            "seconds_to_all_running": p.done,
            "submit_seconds": submitted,
            "most_running": p.most_running,
            key: rate,
        }),
    );
}

/// `scale`: `clusters` x `workers` virtual workers hold `instances` RUNNING instances; then the
/// RSS of the root and of the largest cluster, and `GET /api/services` (every service with
/// its instances) timed `CANOPY_BENCH_RUNS` times, request to the last byte of the body (the
/// client parses it after).
async fn scale(clusters: u32, workers: u32, instances: u32, runs: u32) {
    // Thousands of simulated workers in a few processes on two cores miss 1-s pings when
    // placements saturate the machine, and every miss is a worker lost (its instances move):
    // here they ping every 10 s, as workers on their own machines do not need to.
    let stack = virtual_stack(clusters, workers, 10).await;
    let services = 100;
    let per = instances / services;
    eprintln!(
        "placing {} instances on {clusters} clusters x {workers} virtual workers...",
        per * services
    );
    let p = place(stack.clone(), "scale", services, per).await;
    // Past the reports that follow the last placements.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = |name: &str| stack.component(name)["pid"].as_u64().unwrap() as u32;
    let root_rss = usage(pid("root")).0;
    // `cluster`, `cluster2`, ... as `canopy up` names them in up.json.
    let cluster_rss = stack.state()["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with("cluster")))
        .map(|c| usage(c["pid"].as_u64().unwrap() as u32).0)
        .fold(0.0, f64::max);
    let mut times = Vec::new();
    let mut listed = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let body = stack.get_bytes("/api/services").await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let list: Value = serde_json::from_slice(&body).unwrap();
        listed = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["instance_list"].as_array().map_or(0, Vec::len))
            .sum::<usize>();
    }
    let get = summarize(times);
    println!(
        "scale: {listed} instances on {clusters} clusters x {workers} virtual workers (all RUNNING after {:?} s, at most {:.0} RUNNING at once): root {root_rss:.1} MB, largest cluster {cluster_rss:.1} MB, GET /api/services p50 {:.1} / p99 {:.1} ms",
        p.done, p.most_running, get.p50, get.p99
    );
    emit(
        "scale",
        json!({
            "clusters": clusters,
            "virtual_workers": workers,
            "instances": listed,
            "seconds_to_all_running": p.done,
            "most_running": p.most_running,
            "scale": {
                "root_rss_mb": root_rss,
                "cluster_rss_mb": cluster_rss,
                "get_services_p99_ms": get.p99,
                "get_services_p50_ms": get.p50,
            },
        }),
    );
}

async fn failover(runs: u32) {
    let image = demo_image(&work());
    let mut stack = Stack::up_with(2, &["--node-arg=--stop-grace-secs=1"]).await;
    let token = stack.node_token();
    let mut pids = [0u32; 3];
    for w in 1..=2u32 {
        pids[w as usize] = stack.component(&format!("worker{w}"))["pid"]
            .as_u64()
            .unwrap() as u32;
    }
    let mut times = Vec::new();
    for run in 0..runs {
        let ids = stack
            .deploy(&sla(&format!("failover{run}"), vec![idler("svc", &image)]))
            .await;
        let id = ids[0].clone();
        let list = stack.wait_all(&id, 1, "RUNNING").await;
        let node = list[0]["worker_id"].as_str().unwrap().to_owned();
        let victim = stack.worker_of(&node).await;
        let t = Instant::now();
        signal(pids[victim as usize], Signal::SIGKILL);
        for (_, pid) in ctr::tasks(&stack.namespace(victim)) {
            signal(pid, Signal::SIGKILL);
        }
        stack
            .wait_instances(&id, "moved", Duration::from_secs(60), |l| {
                l.len() == 1 && l[0]["status"] == "RUNNING" && l[0]["worker_id"] != node.as_str()
            })
            .await;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("  run {run}: worker{victim} killed → RUNNING elsewhere in {ms:.0} ms");
        times.push(ms);
        // The worker comes back (same name, same data dir) before the next run.
        pids[victim as usize] =
            stack.restart(&format!("worker{victim}"), &[("CANOPY_NODE_TOKEN", &token)]);
        let back = Instant::now();
        loop {
            let nodes = stack.get("/api/nodes").await;
            let active = nodes
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["active"] == true)
                .count();
            if active == 2 {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "worker{victim} did not come back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        stack
            .call("DELETE", &format!("/api/service/{id}"), None)
            .await;
    }
    let s = summarize(times);
    println!(
        "failover over {runs} runs (ms): p50 {:.0}, p90 {:.0}, max {:.0}",
        s.p50, s.p90, s.max
    );
    emit(
        "failover",
        json!({"runs": runs, "failover_to_running_ms": s.json()}),
    );
    // The restarted engines are stopped like the others: SIGTERM, so they remove what they run.
    for c in &stack.extra {
        signal(c.id(), Signal::SIGTERM);
    }
    for c in stack.extra.iter_mut() {
        let _ = c.wait();
    }
    stack.extra.clear();
    stack.stop().await;
}

/// A worker vanishes without closing anything: in the lab (every worker a network namespace
/// of its own on a LAN bridge), the LAN link of the worker running the instance goes down, so
/// its packets are dropped and no connection closes. Time until the instance is `RUNNING` on
/// the other worker; then the link comes back, the worker rejoins and is told to remove its
/// stale copy before the next run.
async fn failover_silent(runs: u32) {
    let image = demo_image(&work());
    let lab = Lab::start(1, &[0, 0], &[]).await;
    let mut times = Vec::new();
    for run in 0..runs {
        let ids = lab
            .create(&sla(&format!("silent{run}"), vec![idler("svc", &image)]))
            .await;
        let id = ids[0].clone();
        lab.scale_up(&id).await;
        let running = lab.wait_running(&id, 1).await;
        let node = running[0]["worker_id"].as_str().unwrap().to_owned();
        let victim = lab.worker_of(&running[0]).await;
        let t = Instant::now();
        lab.cut(&victim);
        loop {
            let list = lab.instances(&id).await;
            if list.len() == 1
                && list[0]["status"] == "RUNNING"
                && list[0]["worker_id"] != node.as_str()
            {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{id} did not move off {victim}: {list:?}\n{}",
                lab.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        eprintln!("  run {run}: {victim} cut off → RUNNING elsewhere in {ms:.0} ms");
        times.push(ms);
        lab.mend(&victim);
        // Back when it has rejoined and removed its stale copy (the cluster tells it to).
        let ns = lab.worker(&victim).containerd_namespace.clone();
        let back = Instant::now();
        while !ctr::tasks(&ns).is_empty() {
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "{victim} kept its stale copy\n{}",
                lab.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lab.wait_nodes(2).await;
        lab.call("DELETE", &format!("/api/service/{id}"), None)
            .await;
    }
    let s = summarize(times);
    println!(
        "silent failover over {runs} runs (ms): p50 {:.0}, p90 {:.0}, max {:.0}",
        s.p50, s.p90, s.max
    );
    emit(
        "failover_silent",
        json!({"runs": runs, "failover_silent_ms": s.json()}),
    );
}

/// (RSS MB, CPU seconds) of a process from /proc.
fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ, as `getconf CLK_TCK` reports it (100 on Linux).
    let hz: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    (rss_kb / 1024.0, (ticks(11) + ticks(12)) / hz)
}

/// Bytes both ways on each established TCP connection to `127.0.0.1:port`, summed by the pid
/// holding the connecting end: the kernel's counters of payload bytes (`bytes_sent`,
/// `bytes_received` in `ss -tinp`), so nothing in Canopy is asked what it sent.
fn connection_bytes(port: u16) -> BTreeMap<u32, u64> {
    let out = std::process::Command::new("ss")
        .args(["-tinpH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = BTreeMap::new();
    let mut owner = None;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            owner = line
                .split_once("pid=")
                .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u32>().ok());
            continue;
        }
        let counter = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if let Some(pid) = owner.take() {
            *bytes.entry(pid).or_default() += counter("bytes_sent:") + counter("bytes_received:");
        }
    }
    bytes
}

async fn idle(workers: u32, secs: u64) {
    let stack = Stack::up(workers).await;
    let pid = |name: &str| stack.component(name)["pid"].as_u64().unwrap() as u32;
    let mut names = vec!["root".to_owned(), "cluster".to_owned()];
    names.extend((1..=workers).map(|w| format!("worker{w}")));
    // Past the first reports of the new connections.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before: Vec<f64> = names.iter().map(|n| usage(pid(n)).1).collect();
    let uplink_before = connection_bytes(stack.mqtt_port());
    eprintln!("{workers} workers up; measuring {secs} s of idling...");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after: Vec<(f64, f64)> = names.iter().map(|n| usage(pid(n))).collect();
    let uplink_after = connection_bytes(stack.mqtt_port());
    let uplink: Vec<f64> = (1..=workers)
        .map(|w| {
            let p = pid(&format!("worker{w}"));
            let (b0, b1) = (uplink_before.get(&p), uplink_after.get(&p));
            let (Some(b0), Some(b1)) = (b0, b1) else {
                panic!("worker{w} (pid {p}) has no connection to the broker: {uplink_after:?}");
            };
            b1.saturating_sub(*b0) as f64 * 8.0 / secs as f64
        })
        .collect();
    let uplink_mean = uplink.iter().sum::<f64>() / uplink.len() as f64;
    let cpu = |i: usize| (after[i].1 - before[i]) / secs as f64 * 100.0;
    let nodes = (2..names.len()).collect::<Vec<_>>();
    let mean =
        |f: &dyn Fn(usize) -> f64| nodes.iter().map(|&i| f(i)).sum::<f64>() / nodes.len() as f64;
    let node_rss = mean(&|i| after[i].0);
    let node_cpu = mean(&cpu);
    println!("idle after {secs} s with {workers} workers: RSS MB / CPU %");
    println!("  root       {:>7.1} {:>6.2}", after[0].0, cpu(0));
    println!("  cluster    {:>7.1} {:>6.2}", after[1].0, cpu(1));
    println!("  node (mean){:>7.1} {:>6.2}", node_rss, node_cpu);
    println!(
        "  MQTT bytes both ways per idle worker: {uplink_mean:.0} bits/s (max {:.0})",
        uplink.iter().copied().fold(0.0, f64::max)
    );
    emit(
        "idle",
        json!({
            "workers": workers,
            "seconds": secs,
            "idle_worker_uplink_bits_per_second": uplink_mean,
            "idle_rss_mb": {"root": after[0].0, "cluster": after[1].0, "node": node_rss},
            "idle_cpu_percent": {"root": cpu(0), "cluster": cpu(1), "node": node_cpu},
        }),
    );
}

fn main() {
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mut sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if sections.is_empty() {
        sections = [
            "latency",
            "placement",
            "placement_root",
            "scale",
            "failover",
            "failover_silent",
            "idle",
        ]
        .map(String::from)
        .to_vec();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    for s in sections {
        eprintln!("== {s}");
        rt.block_on(async {
            match s.as_str() {
                "latency" => latency(env("CANOPY_BENCH_RUNS", 50)).await,
                "placement" => {
                    placement(
                        "placement",
                        1,
                        env("CANOPY_BENCH_VIRTUAL_WORKERS", 200),
                        env("CANOPY_BENCH_INSTANCES", 5000),
                        1,
                    )
                    .await
                }
                "placement_root" => {
                    placement(
                        "placement_root",
                        env("CANOPY_BENCH_CLUSTERS", 10),
                        env("CANOPY_BENCH_VIRTUAL_WORKERS", 200),
                        env("CANOPY_BENCH_ROOT_INSTANCES", 50_000),
                        // 2,000 simulated workers in ten processes on the machine's cores miss
                        // 1-s pings once placements saturate it; each miss loses a worker.
                        10,
                    )
                    .await
                }
                "scale" => {
                    scale(
                        env("CANOPY_BENCH_SCALE_CLUSTERS", 5),
                        env("CANOPY_BENCH_SCALE_WORKERS", 1000),
                        env("CANOPY_BENCH_ROOT_INSTANCES", 50_000),
                        env("CANOPY_BENCH_RUNS", 50),
                    )
                    .await
                }
                "failover" => failover(env("CANOPY_BENCH_FAILOVER_RUNS", 10)).await,
                "failover_silent" => {
                    failover_silent(env("CANOPY_BENCH_FAILOVER_RUNS", 10)).await
                }
                "idle" => idle(10, u64::from(env("CANOPY_BENCH_IDLE_SECS", 60))).await,
                "unikernel" => unikernel_section(env("CANOPY_BENCH_RUNS", 50)).await,
                other => panic!(
                    "unknown section {other:?} (latency, placement, placement_root, scale, failover, failover_silent, idle, unikernel)"
                ),
            }
        });
    }
}
