//! A rolling update on the overlay (issue 15): while a three-instance web service is updated
//! instance by instance, a client on the overlay calling its rr_ip in a loop sees no failed
//! request — new instances join the service's addresses when they run, old ones leave them
//! before they are stopped (the cluster's drain time) — and sees the answer change from the
//! old revision to the new one. (One overlay stack per test binary: they share the root's
//! worker subnets.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_e2e::{Stack, container, demo_image, sla};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn web(image: &Path, version: &str) -> Value {
    let mut s = container(
        "web",
        image,
        &[
            "sh",
            "-c",
            &format!("echo {version} > /www/v.html && exec httpd -f -p 80 -h /www"),
        ],
    );
    s["addresses"] = json!({"rr_ip": "10.30.66.66"});
    s
}

fn file(dir: &Path, name: &str, services: Vec<Value>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec(&sla("ro", services)).unwrap()).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_of_the_rr_ip_sees_no_failed_request_during_a_rolling_update() {
    let work = tempfile::tempdir().unwrap();
    let image = demo_image(work.path());
    let stack = Stack::up_overlay_with_env(2, &[], &[("CANOPY_ROLLOUT_MIN_READY_SECS", "2")]).await;
    let dir = stack.dir.path();
    let client = container(
        "client",
        &image,
        &[
            "sh",
            "-c",
            "while true; do timeout 3 wget -q -O - http://10.30.66.66/v.html || echo FAIL; sleep 0.1; done",
        ],
    );
    let v1 = file(dir, "v1.json", vec![web(&image, "v1"), client.clone()]);
    stack.cli_ok(&["apply", &v1, "--wait"]).await;
    stack.cli_ok(&["scale", "ro.web", "3"]).await;
    let services = stack.get("/api/services").await;
    let web_id = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service_name"] == "web")
        .unwrap()["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.wait_all(&web_id, 3, "RUNNING").await;
    // The client gets answers before the update.
    let mut before = String::new();
    for _ in 0..100 {
        before = stack.cli_ok(&["logs", "ro.client"]).await;
        if before.lines().filter(|l| *l == "v1").count() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        before.contains("v1\n"),
        "the client reaches the service: {before}"
    );

    let v2 = file(dir, "v2.json", vec![web(&image, "v2"), client]);
    let out = stack.cli_ok(&["apply", &v2, "--wait"]).await;
    assert!(out.contains("rollout complete (revision 1)"), "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = stack.cli_ok(&["logs", "ro.client"]).await;
    let lines: Vec<&str> = log.lines().collect();
    let failed = lines.iter().filter(|l| l.contains("FAIL")).count();
    let first_v2 = lines.iter().position(|l| *l == "v2").expect("v2 answers");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed:\n{log}\n{}",
        lines.len(),
        stack.daemon_logs()
    );
    assert!(
        lines.last() == Some(&"v2"),
        "only the new revision answers at the end"
    );
    assert!(
        lines[..first_v2].iter().all(|l| *l == "v1"),
        "v1 until the update"
    );
    assert!(
        lines.len() > 40,
        "the client kept calling: {} requests",
        lines.len()
    );
    drop(stack);
}
