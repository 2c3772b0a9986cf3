//! A micro-VM on the overlay, for real: the real `net-manager` binary inside a worker network
//! namespace this test creates (`--same-host`), the node engine with the overlay, real QEMU
//! and the Linux micro-VM of `scripts/unikernel-image.sh linux` serving its marker page with
//! busybox `httpd` on port 80.
//!
//! - The worker reaches the guest at its instance address, and through the SLA's port
//!   mapping on its loopback (small, large and one-segment pages; the guest at eth0's MTU).
//! - A container on the same worker reaches it through the service's rr_ip and closest_ip
//!   of a view published on `nodes/<id>/net/view`.
//! - An engine killed (SIGKILL) and started again re-attaches to the running VM (same QEMU),
//!   and the published port keeps working.
//! - A VM whose kernel cannot be downloaded fails with no tap or bridge made.
//! - Deleting the instance stops QEMU and removes its namespace.
//!
//! Traffic goes only to addresses inside the test's namespaces. Skipped (passing, with the
//! reason printed) when QEMU is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use common::net::{NetManager, Netns};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const VM: &str = "app.ns.vm.ns";
const CLIENT: &str = "app.ns.vmclient.ns";
const BAD: &str = "app.ns.vmbad.ns";
const MARKER: &str = "HELLO-OVERLAY-VM";
const SERVICE_IP: &str = "10.30.55.56";
const CLOSEST_IP: &str = "10.30.55.57";

/// QEMU's pid for instance 0 of [`VM`], while it runs.
fn qemu_pid(data: &Path) -> Option<i32> {
    let p = data.join(format!("unikernel/vm/{VM}.instance.0/pid"));
    let pid: i32 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Kills (by pid) the test's QEMU if it still runs when the test ends.
struct VmGuard(PathBuf);

impl Drop for VmGuard {
    fn drop(&mut self) {
        if let Some(pid) = qemu_pid(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// What `cmd` prints inside instance 0 of `job`'s network namespace (under `dir`).
fn in_instance_ns(dir: &Path, job: &str, cmd: &[&str]) -> String {
    let netns = dir.join("netns").join(format!("{job}.instance.0"));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(cmd)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Linux micro-VM image (the Debian kernel .deb cached in the build's tmp dir).
fn linux_microvm(dir: &Path) -> String {
    linux_microvm_at(&dir.join("microvm.tar.gz"), MARKER)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_micro_vm_on_the_overlay_serves_the_worker_and_a_container_through_a_service_ip() {
    if !canopy_e2e::unikernel::qemu_installed() {
        eprintln!("skipped: qemu-system-x86_64 is not installed");
        return;
    }
    require_containerd();
    let ns = Namespace::new("ukoverlay");
    let worker = Netns::new("w");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("engine");
    let _guard = VmGuard(data.clone());
    let image = linux_microvm(dir.path());
    let net = NetManager::start(&worker, dir.path());
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    // The engine binary (not in-process): it is killed with SIGKILL and started again below.
    std::fs::create_dir_all(&data).unwrap();
    let api = free_port();
    let socket = net.socket.display().to_string();
    let args = [
        "--name",
        "uk-worker",
        "--runtimes",
        "container,unikernel",
        "--containerd-namespace",
        &ns.0,
        "--net-manager-socket",
        &socket,
        "--overlay-address",
        "192.0.2.1",
    ];
    let engine = spawn_engine_binary(&cluster.addr, &data, api, &args);
    cluster.wait_worker(SECS_60).await;
    let logs = |job: &'static str| {
        let url = format!("http://127.0.0.1:{api}/instances/{job}.instance.0/logs");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };

    let mut vm = deploy(
        VM,
        0,
        "unikernel",
        &image,
        &common::linux_boot_args("end=httpd"),
    );
    vm.memory = 128;
    let host_port = free_port();
    vm.port = format!("{host_port}:80");
    cluster.deploy(&vm).await;
    cluster.status(VM, 0, "RUNNING", SECS_60).await;
    let address = net
        .address(&format!("{VM}.instance.0"))
        .expect("the VM is on the overlay");
    let pid = qemu_pid(&data).expect("QEMU runs");

    // The worker reaches the guest at the instance address (TCG boots take a while).
    let url = format!("http://{address}/");
    let reached = worker
        .fetch_until(&url, MARKER, Duration::from_secs(90))
        .await;
    let log = logs(VM).await;
    let engine_log = std::fs::read_to_string(data.join("engine.log")).unwrap_or_default();
    let qemu_err =
        std::fs::read_to_string(data.join(format!("unikernel/vm/{VM}.instance.0/stderr")))
            .unwrap_or_default();
    assert!(
        reached,
        "the worker never reached {url}; console:\n{log}\nQEMU: {qemu_err}\nengine: {}",
        &engine_log[engine_log.len().saturating_sub(3000)..]
    );
    assert!(
        log.contains(&format!("netdev.ipv4_addr={address} "))
            && log.contains(&format!("ip={address}::")),
        "the kernel got its address, Oakestra's way and Linux's: {log}"
    );

    // The guest took eth0's MTU (the tunnel's, below 1500), and the SLA's port mapping
    // reaches it on the worker's loopback. The connection's SYN there offers loopback's MSS,
    // so a guest at 1500 would send /mid as one segment too large for eth0, which the bridge
    // drops (/big goes as one GSO packet, cut to size after the bridge).
    let eth0 = in_instance_ns(dir.path(), VM, &["ip", "-o", "link", "show", "eth0"]);
    let mtu = node_engine::runtime::qemu::net::parse_mtu(&eth0).expect("eth0's MTU");
    assert!(mtu < 1500, "the instance's eth0 is below 1500: {mtu}");
    assert!(
        log.lines()
            .any(|l| l.starts_with(&format!("net: eth0 {address} via "))
                && l.trim_end().ends_with(&format!(" mtu {mtu}"))),
        "the guest's MTU is eth0's {mtu}: {log}"
    );
    let published = format!("http://127.0.0.1:{host_port}");
    for _ in 0..5 {
        let page = worker.fetch(&format!("{published}/")).unwrap_or_default();
        assert!(page.contains(MARKER), "{published}/ answered {page:?}");
        let big = worker
            .fetch(&format!("{published}/big"))
            .unwrap_or_default();
        assert_eq!(big.len(), 65536, "{published}/big");
        let mid = worker
            .fetch(&format!("{published}/mid"))
            .unwrap_or_default();
        assert_eq!(mid.len(), 1440, "{published}/mid, one full-sized segment");
    }

    // A container on the same worker reaches it through the service's rr_ip and closest_ip.
    let view = serde_json::json!({
        "peers": [],
        "services": [{"name": VM, "rr_ip": SERVICE_IP, "closest_ip": CLOSEST_IP, "instances": [
            {"address": address, "underlay": "192.0.2.1", "same_cluster": true}
        ]}]
    });
    net.view_from(&cluster, &view, SERVICE_IP).await;
    let mut client = deploy(
        CLIENT,
        0,
        "container",
        &oci_archive(),
        &[
            "sh",
            "-c",
            &format!(
                "for ip in {SERVICE_IP} {CLOSEST_IP}; do ok=; for i in $(seq 40); do busybox timeout 5 busybox wget -q -O - http://$ip/ && echo \" via $ip\" && ok=1 && break; sleep 0.5; done; [ -n \"$ok\" ] || exit 1; done"
            ),
        ],
    );
    client.one_shot = true;
    cluster.deploy(&client).await;
    cluster.status(CLIENT, 0, "COMPLETED", SECS_60).await;
    let log = logs(CLIENT).await;
    assert!(log.contains(MARKER), "client log: {log}");
    for ip in [SERVICE_IP, CLOSEST_IP] {
        assert!(
            log.contains(&format!(" via {ip}")),
            "not through {ip}: {log}"
        );
    }
    cluster.undeploy(CLIENT, 0).await;

    // An engine killed and started again re-attaches to the VM: the same QEMU, the same network.
    drop(engine);
    let engine = spawn_engine_binary(&cluster.addr, &data, api, &args);
    cluster
        .until(SECS_60, "the VM re-attached", |h| {
            matches!(h, Heard::Job(j) if j.sname == VM && j.status == "RUNNING"
                && j.status_detail.contains("re-attached"))
        })
        .await;
    assert_eq!(qemu_pid(&data), Some(pid), "the VM kept running");
    assert_eq!(
        net.address(&format!("{VM}.instance.0")).as_deref(),
        Some(address.as_str())
    );
    // As long as the first boot is given: TCG guests on a loaded 2-core machine are slow.
    if !worker
        .fetch_until(&format!("{published}/"), MARKER, Duration::from_secs(90))
        .await
    {
        let console = std::fs::read_to_string(data.join(format!("logs/{VM}.instance.0.log")))
            .unwrap_or_default();
        let tail: String = console
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "the VM is unreachable after the engine restarted\n--- engine log:\n{}\n--- console tail:\n{tail}\n--- in the instance namespace:\n{}",
            std::fs::read_to_string(data.join("engine.log")).unwrap_or_default(),
            in_instance_ns(dir.path(), VM, &["ip", "-d", "link", "show"]),
        );
    }

    // A VM that cannot start (its kernel cannot be downloaded) fails before any tap exists:
    // its namespace (the net manager's, kept until the cluster deletes it) holds only eth0.
    let mut bad = deploy(BAD, 0, "unikernel", "http://127.0.0.1:1/kernel.tar.gz", &[]);
    bad.memory = 128;
    cluster.deploy(&bad).await;
    let failed = cluster.status(BAD, 0, "FAILED", SECS_60).await;
    assert!(failed.status_detail.contains("127.0.0.1:1"), "{failed:?}");
    let links = in_instance_ns(dir.path(), BAD, &["ip", "-o", "link", "show"]);
    assert!(links.contains(": eth0@"), "{links}");
    assert!(!links.contains("tap0") && !links.contains("br0"), "{links}");
    cluster.undeploy(BAD, 0).await;

    // Deleting the instance stops QEMU and removes its network.
    cluster.undeploy(VM, 0).await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "QEMU stopped");
    assert_eq!(net.curl(&["http://nm/instances"]).trim(), "[]");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instance namespaces left: {left:?}");
    drop(engine);
}
