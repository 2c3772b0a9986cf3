//! A delete in flight is never abandoned (issue: a node engine stopped while a delete was
//! under way left its container running, untracked). The workload is busybox `httpd -f` as
//! PID 1, which ignores SIGTERM, so every stop takes the engine's whole 10 s grace.
#![allow(clippy::unwrap_used)]

use canopy_e2e::{Stack, container, ctr, demo_image, free_port, signal, sla};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A web server that ignores SIGTERM, pinned to `worker`.
fn stubborn_web(image: &std::path::Path, worker: &str) -> Value {
    let port = free_port().to_string();
    let mut web = container("web", image, &["httpd", "-f", "-p", &port, "-h", "/www"]);
    web["constraints"] = json!([{"type": "direct", "node": worker}]);
    web
}

/// Deletes the application of `service` and waits until `worker`'s engine has begun stopping
/// the workload (its log says so).
async fn delete_and_wait_for_the_stop(stack: &Stack, service: &str, worker: &str) {
    let app = stack.get(&format!("/api/service/{service}")).await["applicationID"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, v) = stack
        .call("DELETE", &format!("/api/application/{app}"), None)
        .await;
    assert!(status.is_success(), "DELETE application: {status} {v}");
    let log = stack.component(worker)["log"].as_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stopping the workload") {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{worker} never began the stop:\n{}",
            stack.daemon_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_empty(ns: &str, within: Duration, what: &str) {
    let start = Instant::now();
    while !(ctr::tasks(ns).is_empty() && ctr::containers(ns).is_empty()) {
        assert!(
            start.elapsed() < within,
            "{what}: still in {ns}: tasks {:?}, containers {:?}",
            ctr::tasks(ns),
            ctr::containers(ns)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Exactly the report: two workers, the service on worker2, the application deleted, and
/// `canopy up` stopped (Ctrl-C) while worker2 is still inside the stop's grace. Nothing is
/// left in worker2's namespace.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_up_during_a_delete_leaves_no_container() {
    let image = demo_image(&work());
    let mut stack = Stack::up(2).await;
    let ns = stack.namespace(2);
    let ids = stack
        .deploy(&sla("inflight", vec![stubborn_web(&image, "worker2")]))
        .await;
    stack.wait_all(&ids[0], 1, "RUNNING").await;
    assert_eq!(ctr::tasks(&ns).len(), 1);

    delete_and_wait_for_the_stop(&stack, &ids[0], "worker2").await;
    // Still inside the grace: the container runs while the engine is told to stop.
    assert_eq!(ctr::tasks(&ns).len(), 1, "the stop ended too early to test");
    assert!(stack.stop().await, "canopy up did not stop cleanly");
    assert!(
        ctr::tasks(&ns).is_empty(),
        "tasks left: {:?}",
        ctr::tasks(&ns)
    );
    assert!(
        ctr::containers(&ns).is_empty(),
        "containers left: {:?}",
        ctr::containers(&ns)
    );
}

/// The engine is killed (-9) in the middle of a delete, with the container still running.
/// Started again, it re-attaches to the container, reports it, and the cluster's renewed
/// delete removes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_cut_short_by_kill_9_is_finished_after_a_restart() {
    let image = demo_image(&work());
    let mut stack = Stack::up(1).await;
    let ns = stack.namespace(1);
    let ids = stack
        .deploy(&sla("cutshort", vec![stubborn_web(&image, "worker1")]))
        .await;
    stack.wait_all(&ids[0], 1, "RUNNING").await;

    delete_and_wait_for_the_stop(&stack, &ids[0], "worker1").await;
    let engine_pid = stack.component("worker1")["pid"].as_u64().unwrap() as u32;
    signal(engine_pid, Signal::SIGKILL);
    assert_eq!(
        ctr::tasks(&ns).len(),
        1,
        "the delete finished before the engine was killed"
    );

    let token = stack.node_token();
    stack.restart("worker1", &[("CANOPY_NODE_TOKEN", token.as_str())]);
    wait_empty(&ns, Duration::from_secs(60), "after the restart").await;
}
