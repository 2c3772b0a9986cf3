//! Stop, start and restart (issue 15's mF2C operations) through the CLI, with the real
//! binaries and containerd on two workers:
//!
//! - `canopy stop SERVICE --instance 0` ends the instance's container and leaves it `STOPPED`,
//!   with its number and address, while instance 1 keeps running;
//! - it stays stopped when the worker running instance 1 is killed (instance 1 fails over,
//!   instance 0 is not placed anywhere) and when the root is killed and started again;
//! - `canopy start` brings it back `RUNNING` (a running instance is left alone);
//! - `canopy restart --instance 0` replaces its container (another task), same address.
#![allow(clippy::unwrap_used)]

use canopy_e2e::{Stack, container, ctr, demo_image, signal, sla};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `(worker number, task pid)` of instance `n`'s container, wherever it runs.
fn task_of(stack: &Stack, n: u32) -> Option<(u32, u32)> {
    (1..=2).find_map(|w| {
        ctr::tasks(&stack.namespace(w))
            .into_iter()
            .find(|(id, _)| id.ends_with(&format!("instance.{n}")))
            .map(|(_, pid)| (w, pid))
    })
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..300 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out: {what}");
}

fn instance(list: &[Value], n: u32) -> Value {
    list.iter()
        .find(|i| i["instance_number"] == n)
        .cloned()
        .unwrap_or_else(|| panic!("no instance {n} in {list:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_instances_stay_stopped_across_failover_and_restarts_until_started() {
    let image = demo_image(&work());
    let mut stack = Stack::up(2).await;
    let svc = container("svc", &image, &["sh", "-c", "sleep 3600"]);
    let id = stack.deploy(&sla("ops", vec![svc])).await.remove(0);
    stack.wait_all(&id, 1, "RUNNING").await;
    stack.cli_ok(&["scale", "ops.svc", "2"]).await;
    let list = stack.wait_all(&id, 2, "RUNNING").await;
    let address = instance(&list, 0)["instance_ip"].clone();

    // Stop instance 0: its container goes, instance 1 runs on.
    let out = stack.cli_ok(&["stop", "ops.svc", "--instance", "0"]).await;
    assert!(out.contains("instance 0: STOPPED"), "{out}");
    until("instance 0's container is gone", || {
        task_of(&stack, 0).is_none()
    })
    .await;
    let list = stack.instances(&id).await;
    let zero = instance(&list, 0);
    assert_eq!(zero["status"], "STOPPED", "{zero}");
    assert_eq!(zero["instance_ip"], address);
    assert!(
        zero["status_detail"]
            .as_str()
            .unwrap()
            .contains("stopped by Admin"),
        "{zero}"
    );
    assert_eq!(instance(&list, 1)["status"], "RUNNING");
    // Stopping again changes nothing.
    let out = stack.cli_ok(&["stop", "ops.svc", "--instance", "0"]).await;
    assert!(out.contains("instance 0: STOPPED"), "{out}");

    // The worker running instance 1 dies: instance 1 moves, instance 0 stays stopped.
    let (victim, _) = task_of(&stack, 1).expect("instance 1 runs");
    // Read before the kill: the move can be done before the next look.
    let victim_node = instance(&stack.instances(&id).await, 1)["worker_id"].clone();
    let engine = stack.component(&format!("worker{victim}"))["pid"]
        .as_u64()
        .unwrap() as u32;
    signal(engine, Signal::SIGKILL);
    for (_, pid) in ctr::tasks(&stack.namespace(victim)) {
        signal(pid, Signal::SIGKILL);
    }
    stack
        .wait_instances(
            &id,
            "instance 1 on the other worker",
            Duration::from_secs(90),
            |l| {
                let one = instance(l, 1);
                one["status"] == "RUNNING" && one["worker_id"] != victim_node
            },
        )
        .await;
    assert_eq!(
        instance(&stack.instances(&id).await, 0)["status"],
        "STOPPED"
    );
    assert!(
        task_of(&stack, 0).is_none(),
        "instance 0 was not placed again"
    );

    // The root is killed and started again: still stopped.
    stack.kill9_and_restart_root().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let list = stack.instances(&id).await;
    assert_eq!(instance(&list, 0)["status"], "STOPPED", "{list:?}");
    assert!(task_of(&stack, 0).is_none());

    // Start: instance 0 runs again, with its address; instance 1 is left alone.
    let (_, one_pid) = task_of(&stack, 1).expect("instance 1 runs");
    let out = stack.cli_ok(&["start", "ops.svc"]).await;
    assert!(out.contains("instance 1: RUNNING"), "{out}");
    let list = stack.wait_all(&id, 2, "RUNNING").await;
    assert_eq!(instance(&list, 0)["instance_ip"], address);
    until("instance 0's container runs", || {
        task_of(&stack, 0).is_some()
    })
    .await;
    assert_eq!(
        task_of(&stack, 1).map(|t| t.1),
        Some(one_pid),
        "instance 1 untouched"
    );

    // Restart instance 0: a new container (another task), the same address.
    let (_, before) = task_of(&stack, 0).unwrap();
    stack
        .cli_ok(&["restart", "ops.svc", "--instance", "0"])
        .await;
    until("instance 0 restarted", || {
        task_of(&stack, 0).is_some_and(|(_, pid)| pid != before)
    })
    .await;
    let list = stack.wait_all(&id, 2, "RUNNING").await;
    assert_eq!(instance(&list, 0)["instance_ip"], address);

    // Each operation is an event of the service, shown by `canopy describe service`.
    let out = stack.cli_ok(&["describe", "service", "ops.svc"]).await;
    let events: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("events"))
        .skip(2)
        .collect();
    let whats: Vec<&str> = events
        .iter()
        .filter_map(|l| {
            ["create", "scale up", "stop", "start", "restart"]
                .into_iter()
                .find(|w| l.contains(&format!(" {w} ")))
        })
        .collect();
    assert_eq!(
        whats,
        [
            "create", "scale up", "scale up", "stop", "stop", "start", "start", "restart"
        ],
        "{out}"
    );
    assert!(out.contains("requested by Admin"), "{out}");

    // Bad input: an operation that does not exist, an instance that does not.
    let (s, b) = stack
        .call(
            "POST",
            &format!("/api/service/{id}/instance/0/reboot"),
            None,
        )
        .await;
    assert_eq!(s.as_u16(), 404, "{b}");
    assert_eq!(b["field"], "operation", "{b}");
    let (s, _) = stack
        .call("POST", &format!("/api/service/{id}/instance/9/stop"), None)
        .await;
    assert_eq!(s.as_u16(), 404);
}
