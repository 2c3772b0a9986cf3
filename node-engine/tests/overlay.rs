//! Containers on the overlay, for real: the node engine with real containerd, and the real
//! `net-manager` binary running inside a worker network namespace this test creates (its
//! bridge, veths and instance namespaces live there and in namespaces it makes). Oakestra's
//! own example on one worker: a client whose command fetches `http://10.30.55.55/` and a
//! server behind that address; the client's log holds the server's page. Traffic goes only
//! to addresses inside these namespaces. The server's published port answers on the
//! worker's 127.0.0.1. The engine configures the net manager with the subnet the (test)
//! cluster answered at registration, and relays the overlay view the cluster publishes on
//! `nodes/<id>/net/view`.
#![allow(clippy::unwrap_used)]

mod common;

use common::net::{NetManager, Netns};
use common::*;
use std::process::Command;

const SERVER: &str = "app.ns.server.ns";
const CLIENT: &str = "app.ns.client.ns";

#[tokio::test(flavor = "multi_thread")]
async fn a_container_reaches_another_through_its_service_address() {
    require_containerd();
    let ns = Namespace::new("overlay");
    let worker = Netns::new("w");
    let dir = tempfile::tempdir().unwrap();
    let net = NetManager::start(&worker, dir.path());
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let mut config = Engine::config(&cluster.addr, &dir.path().join("engine"), &ns);
    config.net_manager_socket = net.socket.clone();
    config.no_overlay = false;
    config.overlay_address = Some("192.0.2.1".parse().unwrap());
    let mut engine = Engine::start(config).await;
    engine.wait_connected(SECS_30).await;

    let mut server = deploy(
        SERVER,
        0,
        "container",
        &oci_archive(),
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    server.port = "8080:80".into();
    cluster.deploy(&server).await;
    cluster.status(SERVER, 0, "RUNNING", SECS_60).await;
    // Its published port answers on the worker's own loopback.
    let page = Command::new("nsenter")
        .arg(format!("--net={}", worker.path().display()))
        .args([
            "busybox", "timeout", "5", "busybox", "wget", "-q", "-O", "-",
        ])
        .arg("http://127.0.0.1:8080/")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("Hello from Canopy"),
        "the published port did not answer"
    );
    let attached: serde_json::Value =
        serde_json::from_str(&net.curl(&["http://nm/instances"])).unwrap();
    let server_ip = attached
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == format!("{SERVER}.instance.0"))
        .and_then(|a| a["address"].as_str())
        .expect("the server is on the overlay")
        .to_owned();
    let view = serde_json::json!({
        "peers": [],
        "services": [{"name": SERVER, "rr_ip": "10.30.55.55", "instances": [
            {"address": server_ip, "underlay": "192.0.2.1", "same_cluster": true}
        ]}]
    });
    net.view_from(&cluster, &view, "10.30.55.55").await;
    let node: serde_json::Value = serde_json::from_str(&net.curl(&["http://nm/node"])).unwrap();
    assert_eq!(
        node["subnet"], "10.18.0.0",
        "configured from the registration answer"
    );

    let mut client = deploy(
        CLIENT,
        0,
        "container",
        &oci_archive(),
        &[
            "sh",
            "-c",
            "for i in $(seq 40); do busybox timeout 2 busybox wget -q -O - http://10.30.55.55/ && exit 0; sleep 0.5; done; exit 1",
        ],
    );
    client.one_shot = true;
    cluster.deploy(&client).await;
    cluster.status(CLIENT, 0, "COMPLETED", SECS_60).await;
    let log = engine.logs(CLIENT, 0).await;
    assert!(log.contains("Hello from Canopy"), "client log: {log}");

    // Deleting the instances removes their networks.
    cluster.undeploy(CLIENT, 0).await;
    cluster.undeploy(SERVER, 0).await;
    assert_eq!(net.curl(&["http://nm/instances"]).trim(), "[]");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "instance namespaces left: {left:?}");
    engine.stop().await;
}
