//! `canopy up` with its overlay (the default): two workers on this machine, each with its own
//! net manager (`--same-host`: a bridge and an nftables table of its own in this machine's
//! namespace). A client on one worker reaches a server on the other by its service IP and by
//! its job name; the server's published port answers on 127.0.0.1; stopping `canopy up`
//! removes the bridges and tables. (One test in this binary: overlay stacks on one machine
//! share the root's worker subnets, so they do not run side by side.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_e2e::{Stack, container, demo_image, free_port, sla};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

fn links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn canopy_up_gives_its_workers_an_overlay() {
    let work = tempfile::tempdir().unwrap();
    let image = demo_image(work.path());
    // iptables-nft makes `ip filter` on the net managers' first FORWARD insert when there was
    // none; they delete it again when they leave it empty.
    let had_filter = tables().contains("table ip filter");
    let mut stack = Stack::up_overlay(2, &[]).await;
    let tag = {
        let port: u16 = stack.api.rsplit(':').next().unwrap().parse().unwrap();
        format!("{port:04x}")
    };
    assert!(links().contains(&format!("cnp{tag}b1")), "worker1's bridge");

    let host_port = free_port();
    let mut server = container(
        "web",
        &image,
        &[
            "sh",
            "-c",
            "echo served-over-the-overlay > /www/o.html && exec httpd -f -p 80 -h /www",
        ],
    );
    server["addresses"] = json!({"rr_ip": "10.30.55.55"});
    server["port"] = json!(format!("{host_port}:80"));
    server["constraints"] = json!([{"type": "direct", "node": "worker1"}]);
    let mut by_ip = container(
        "byip",
        &image,
        &[
            "sh",
            "-c",
            "while true; do timeout 3 wget -q -O - http://10.30.55.55/o.html || echo FAIL; sleep 0.3; done",
        ],
    );
    by_ip["constraints"] = json!([{"type": "direct", "node": "worker2"}]);
    let mut by_name = container(
        "byname",
        &image,
        &[
            "sh",
            "-c",
            "while true; do timeout 3 wget -q -O - http://upov.e2e.web.e2e/o.html || echo FAIL; sleep 0.3; done",
        ],
    );
    by_name["constraints"] = json!([{"type": "direct", "node": "worker2"}]);
    let ids = stack
        .deploy(&sla("upov", vec![server, by_ip, by_name]))
        .await;
    for id in &ids {
        stack.wait_all(id, 1, "RUNNING").await;
    }

    let log = |svc: &str| {
        std::fs::read_to_string(
            stack
                .dir
                .path()
                .join(format!("up/worker2/logs/upov.e2e.{svc}.e2e.instance.0.log")),
        )
        .unwrap_or_default()
    };
    let start = Instant::now();
    while !(log("byip").contains("served-over-the-overlay")
        && log("byname").contains("served-over-the-overlay"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "by IP:\n{}\nby name:\n{}\n{}",
            log("byip"),
            log("byname"),
            stack.daemon_logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The published port, on this machine's loopback.
    let page = reqwest::get(format!("http://127.0.0.1:{host_port}/o.html"))
        .await
        .expect("the published port answers")
        .text()
        .await
        .unwrap();
    assert!(page.contains("served-over-the-overlay"), "{page}");

    assert!(stack.stop().await, "canopy up stopped cleanly");
    assert!(
        !links().contains(&format!("cnp{tag}")),
        "bridges or veths left:\n{}",
        links()
    );
    assert!(
        !tables().contains(&format!("canopy_{tag}")),
        "tables left: {}",
        tables()
    );
    assert!(
        had_filter || !tables().contains("table ip filter"),
        "the `ip filter` table the net managers' FORWARD rules made is left:\n{}",
        tables()
    );
}
