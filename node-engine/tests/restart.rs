//! The real `node-engine` binary killed with SIGKILL and started again (re-attach, no
//! duplicate, dead ones restarted), and started after a "reboot" with no cluster reachable
//! (persisted instances come back by themselves, then reconcile when the cluster answers).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const JOB: &str = "app.ns.svc.ns";

fn spawn_engine(cluster_addr: &str, data_dir: &Path, ns: &Namespace, api_port: u16) -> Proc {
    spawn_engine_binary(
        cluster_addr,
        data_dir,
        api_port,
        &["--name", "restart-worker", "--containerd-namespace", &ns.0],
    )
}

async fn wait_health(api_port: u16) {
    for _ in 0..300 {
        if reqwest::get(format!("http://127.0.0.1:{api_port}/health"))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("engine API did not come up");
}

async fn instances(api_port: u16) -> Vec<serde_json::Value> {
    reqwest::get(format!("http://127.0.0.1:{api_port}/instances"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_local_status(api_port: u16, name: &str, status: &str) {
    for _ in 0..600 {
        if instances(api_port)
            .await
            .iter()
            .any(|i| i["name"] == name && i["status"] == status)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{name} never {status} locally: {:?}",
        instances(api_port).await
    );
}

fn sigterm(p: &Proc) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

async fn wait_exit(p: &mut Proc) {
    for _ in 0..300 {
        if p.0.try_wait().unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("engine did not exit");
}

fn spin_module(dir: &Path) -> String {
    let p = dir.join("spin.wat");
    std::fs::write(
        &p,
        "(module (memory (export \"memory\") 1) (func (export \"_start\") (loop $l (br $l))))",
    )
    .unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_reattaches_running_containers_and_restarts_dead_ones() {
    require_containerd();
    let ns = Namespace::new("kill9");
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let mut engine = spawn_engine(&cluster.addr, dir.path(), &ns, api);
    wait_health(api).await;
    cluster.wait_worker(SECS_30).await;

    for n in [0, 1] {
        cluster.deploy(&sleeper(JOB, n)).await;
    }
    cluster
        .deploy(&deploy(JOB, 2, "wasm", &spin_module(dir.path()), &[]))
        .await;
    for n in [0, 1, 2] {
        cluster.status(JOB, n, "RUNNING", SECS_60).await;
    }
    let (c0, c1) = (format!("{JOB}.instance.0"), format!("{JOB}.instance.1"));
    let (pid0, pid1) = (ns.task_pid(&c0), ns.task_pid(&c1));
    assert!(pid0 > 0 && pid1 > 0);

    // SIGKILL: no clean-up of any kind. Then instance 1's process dies while the engine is down.
    engine.0.kill().unwrap();
    engine.0.wait().unwrap();
    assert_eq!(ns.task_pid(&c0), pid0, "containers outlive the engine");
    ns.kill_task(&c1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ns.task_pid(&c1), 0);

    cluster.forget();
    let _engine = spawn_engine(&cluster.addr, dir.path(), &ns, api);
    let r = cluster.status(JOB, 0, "RUNNING", SECS_60).await;
    assert_eq!(r.status_detail, "re-attached after an engine restart");
    cluster.status(JOB, 1, "RUNNING", SECS_60).await;
    cluster.status(JOB, 2, "RUNNING", SECS_60).await;
    assert_eq!(ns.task_pid(&c0), pid0, "re-attached, not restarted");
    let new1 = ns.task_pid(&c1);
    assert!(new1 > 0 && new1 != pid1, "the dead one was started again");
    let mut containers = ns.containers();
    containers.sort();
    assert_eq!(containers, vec![c0.clone(), c1.clone()], "no duplicates");
    assert!(
        !cluster
            .jobs
            .iter()
            .any(|j| j.instance == 0 && j.status == "CREATING"),
        "instance 0 was not recreated: {:?}",
        cluster.jobs
    );

    // The re-attached container is still supervised: its exit is seen.
    ns.kill_task(&c0);
    let dead = cluster.status(JOB, 0, "DEAD", SECS_30).await;
    assert_eq!(dead.status_detail, "exited with code 137");

    for n in [0, 1, 2] {
        cluster.undeploy(JOB, n).await;
    }
    assert!(ns.containers().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_start_brings_back_persisted_instances_then_reconciles() {
    require_containerd();
    let ns = Namespace::new("offline");
    let broker = Broker::start().await;
    let cluster_port = free_port();
    let cluster = Cluster::start_on(&broker, cluster_port).await;
    let mut cluster = cluster;
    let dir = tempfile::tempdir().unwrap();
    let api = free_port();
    let mut engine = spawn_engine(&cluster.addr, dir.path(), &ns, api);
    wait_health(api).await;
    cluster.wait_worker(SECS_30).await;
    cluster.deploy(&sleeper(JOB, 0)).await;
    cluster
        .deploy(&deploy(JOB, 1, "wasm", &spin_module(dir.path()), &[]))
        .await;
    cluster.status(JOB, 0, "RUNNING", SECS_60).await;
    cluster.status(JOB, 1, "RUNNING", SECS_60).await;

    // "Reboot": the engine stops, every process is gone, and the cluster is unreachable.
    sigterm(&engine);
    wait_exit(&mut engine).await;
    let c0 = format!("{JOB}.instance.0");
    ns.kill_task(&c0);
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ns.task_pid(&c0), 0);

    let cluster_addr = format!("127.0.0.1:{cluster_port}");
    let _engine = spawn_engine(&cluster_addr, dir.path(), &ns, api);
    wait_health(api).await;
    wait_local_status(api, &c0, "RUNNING").await;
    wait_local_status(api, &format!("{JOB}.instance.1"), "RUNNING").await;
    assert!(
        ns.task_pid(&c0) > 0,
        "the container runs again with no cluster"
    );

    // The cluster comes back: the worker registers and reports what it runs.
    let mut cluster = Cluster::start_on(&broker, cluster_port).await;
    cluster.status(JOB, 0, "RUNNING", SECS_60).await;
    cluster.status(JOB, 1, "RUNNING", SECS_60).await;
    assert!(*cluster.registrations.borrow() >= 1);
    for n in [0, 1] {
        cluster.undeploy(JOB, n).await;
    }
    assert!(ns.containers().is_empty());
}
