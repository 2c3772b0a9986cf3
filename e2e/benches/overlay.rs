//! The overlay's benchmark, on the multi-host lab (`canopy_e2e::lab`: two workers, each a
//! network namespace with its own net manager and node engine, one cluster; release build):
//!
//!     cargo build --release --workspace --bins
//!     cargo bench -p canopy-e2e --bench overlay
//!
//! - `overlay_throughput_ratio`: TCP throughput (Debian `iperf3`, 3 s) from a client
//!   instance on worker 1 to a server instance on worker 2 through the server's rr_ip (VXLAN
//!   tunnel and nftables translation), over the throughput between the same two workers'
//!   namespaces talking directly over the lab LAN (no tunnel, no translation). Measured as
//!   `CANOPY_BENCH_OVERLAY_PAIRS` (default 9) back-to-back pairs, direct then overlay, and the
//!   median of the pairs' ratios: on a shared 2-core machine one 5 s run of each varied by
//!   ±30 % from run to run, and a pair sees the same background load for both halves;
//! - `overlay_rtt_overhead_us` {p50, p90}: ICMP echo round trip through the rr_ip minus the
//!   direct one between the workers (`busybox ping`, 50 each);
//! - `overlay_update_ms` {p50, p90, p99}: an instance RUNNING (the moment its node engine
//!   logs it) → the first TCP connection to its service IP from the client instance on the
//!   other worker that reaches the instance's namespace (accepted or refused: either way the
//!   packet arrived through the new translation); 10 services.
//!
//! iperf3 and ping run as this host's binaries inside the instances' network namespaces (the
//! net manager's pinned files), so they take exactly the path the containers' traffic takes.
//! Prints one `BENCH_JSON {"overlay": {...}}` line for `scripts/bench.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_e2e::lab::{Lab, code};
use canopy_e2e::stats::summarize;
use canopy_e2e::{demo_image, sla};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SERVER_IP: &str = "10.30.60.60";

fn idler(name: &str, image: &Path, node: &str, rr_ip: &str) -> Value {
    json!({
        "microservice_name": name,
        "microservice_namespace": "e2e",
        "virtualization": "container",
        "code": code(image),
        "cmd": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
        "memory": 16,
        "vcpus": 0,
        "addresses": {"rr_ip": rr_ip},
        "constraints": [{"type": "direct", "node": node}],
    })
}

/// The pinned network namespace of instance `name` on worker `w`.
fn instance_ns(lab: &Lab, w: &str, name: &str) -> PathBuf {
    lab.worker(w).dir.join("netns").join(name)
}

fn worker_ns(lab: &Lab, w: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{}", lab.worker(w).netns))
}

fn in_ns(ns: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display()));
    c
}

/// iperf3 for 3 s from `client` (a namespace) to `target` served in `server`; bits/s.
fn iperf(server: &Path, client: &Path, target: &str) -> f64 {
    let mut s = in_ns(server)
        .args(["iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 (Debian iperf3) runs");
    std::thread::sleep(Duration::from_millis(500));
    let out = in_ns(client)
        .args(["iperf3", "-c", target, "-t", "3", "-J"])
        .output()
        .expect("iperf3 client");
    let _ = s.kill();
    let _ = s.wait();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| {
            panic!(
                "iperf3 to {target} gave no figure: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

/// Round trips (µs) of 50 pings from namespace `from` to `target`.
fn pings(from: &Path, target: &str) -> Vec<f64> {
    let out = in_ns(from)
        .args([
            "busybox", "ping", "-c", "50", "-i", "0.05", "-W", "2", target,
        ])
        .output()
        .expect("busybox ping");
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    assert!(!rtts.is_empty(), "no ping answered {target}:\n{text}");
    rtts
}

/// Unix seconds of the line of `log` saying `instance` is RUNNING (tracing's RFC 3339 UTC
/// timestamp at the start of the line).
fn running_at(log: &str, instance: &str) -> Option<f64> {
    let line = log.lines().find(|l| {
        l.contains(&format!("instance=\"{instance}\"")) && l.contains("status=RUNNING")
    })?;
    let ts = line.split_whitespace().next()?;
    // 2026-12-02T00:33:21.654068Z
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date.split('-').filter_map(|x| x.parse().ok()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').filter_map(|x| x.parse().ok()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    Some(secs as f64 + format!("0.{frac}").parse::<f64>().ok()?)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// From a thread inside namespace `ns`, connects to `target` every 2 ms until a connection
/// reaches the far namespace (accepted, or refused by it); the Unix time it did.
fn first_reach(ns: &Path, target: SocketAddr, within: Duration) -> Option<f64> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).ok()?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let start = Instant::now();
        while start.elapsed() < within {
            match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(20)) {
                Ok(_) => return Some(unix_now()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Some(unix_now());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        None
    })
    .join()
    .ok()
    .flatten()
}

async fn bench() {
    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let image = demo_image(&work);
    let lab = Lab::start(1, &[0, 0], &[]).await;
    let ids = lab
        .create(&sla(
            "ovb",
            vec![
                idler("srv", &image, "w2", SERVER_IP),
                idler("cli", &image, "w1", "10.30.60.59"),
            ],
        ))
        .await;
    for id in &ids {
        lab.scale_up(id).await;
        lab.wait_running(id, 1).await;
    }
    let server = instance_ns(&lab, "w2", "ovb.e2e.srv.e2e.instance.0");
    let client = instance_ns(&lab, "w1", "ovb.e2e.cli.e2e.instance.0");
    // Wait until the client reaches the server's service IP.
    let target: SocketAddr = (SERVER_IP.parse::<Ipv4Addr>().unwrap(), 5201).into();
    assert!(
        first_reach(&client, target, Duration::from_secs(30)).is_some(),
        "the client never reached {SERVER_IP}:\n{}",
        lab.logs()
    );

    let direct_ip = lab.worker("w2").lan.to_string();
    let (w1, w2) = (worker_ns(&lab, "w1"), worker_ns(&lab, "w2"));
    let pairs: usize = std::env::var("CANOPY_BENCH_OVERLAY_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let (mut direct, mut overlay, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..pairs.max(1) {
        let d = iperf(&w2, &w1, &direct_ip);
        let o = iperf(&server, &client, SERVER_IP);
        eprintln!(
            "throughput pair {}: direct {:.0} Mbit/s, overlay {:.0} Mbit/s ({:.3})",
            k + 1,
            d / 1e6,
            o / 1e6,
            o / d
        );
        direct.push(d / 1e6);
        overlay.push(o / 1e6);
        ratios.push(o / d);
    }
    let (direct, overlay, ratios) = (summarize(direct), summarize(overlay), summarize(ratios));
    let rtt_direct = summarize(pings(&w1, &direct_ip));
    let rtt_overlay = summarize(pings(&client, SERVER_IP));

    let mut updates = Vec::new();
    for k in 0..10u32 {
        let ip = format!("10.30.61.{}", 10 + k);
        let app = format!("upd{k}");
        let ids = lab
            .create(&sla(&app, vec![idler("s", &image, "w2", &ip)]))
            .await;
        let instance = format!("{app}.e2e.s.e2e.instance.0");
        let target: SocketAddr = (ip.parse::<Ipv4Addr>().unwrap(), 80).into();
        let client = client.clone();
        let reach =
            std::thread::spawn(move || first_reach(&client, target, Duration::from_secs(60)));
        lab.scale_up(&ids[0]).await;
        let reached = tokio::task::spawn_blocking(move || reach.join().ok().flatten())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{ip} never became reachable"));
        let log = std::fs::read_to_string(lab.dir.path().join("w2-engine.log")).unwrap_or_default();
        let running = running_at(&log, &instance).expect("the engine logged RUNNING");
        updates.push(((reached - running) * 1000.0).max(0.0));
        let (status, v) = lab
            .call(
                "DELETE",
                &format!("/api/application/{}", app_id(&lab, &app).await),
                None,
            )
            .await;
        assert!(status.is_success(), "delete {app}: {status} {v}");
    }
    let updates = summarize(updates);
    let v = json!({
        "overlay_throughput_ratio": (ratios.p50 * 1000.0).round() / 1000.0,
        "overlay_throughput_ratio_range": [
            (ratios.min * 1000.0).round() / 1000.0,
            (ratios.max * 1000.0).round() / 1000.0,
        ],
        "throughput_pairs": pairs,
        "overlay_throughput_mbit_s": overlay.p50.round(),
        "direct_throughput_mbit_s": direct.p50.round(),
        "overlay_rtt_overhead_us": {
            "p50": (rtt_overlay.p50 - rtt_direct.p50).round(),
            "p90": (rtt_overlay.p90 - rtt_direct.p90).round(),
        },
        "overlay_rtt_us": rtt_overlay.json(),
        "direct_rtt_us": rtt_direct.json(),
        "overlay_update_ms": updates.json(),
        "update_runs": 10,
    });
    println!("BENCH_JSON {}", json!({ "overlay": v }));
}

/// The id of application `name`.
async fn app_id(lab: &Lab, name: &str) -> String {
    let apps = lab.get("/api/applications").await;
    apps.as_array()
        .and_then(|l| l.iter().find(|a| a["application_name"] == name))
        .and_then(|a| a["applicationID"].as_str().or(a["_id"].as_str()))
        .expect("the application is listed")
        .to_owned()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}
