//! Declarative apply and rolling updates (issue 15) through the CLI, with the real binaries
//! and containerd:
//!
//! - `canopy apply` of a changed file rolls the service from image A to image B instance by
//!   instance (a new instance runs before an old one goes), keeping the rr_ip; `canopy diff`
//!   and a second apply of the same file change nothing;
//! - an update to an image whose process exits at once rolls back to A by itself: every
//!   instance RUNNING on A afterwards, and `canopy rollout status` says why;
//! - a service added to the file is created; `--prune` deletes one the file no longer has.
#![allow(clippy::unwrap_used)]

use canopy_e2e::{Stack, container, ctr, demo_image, sla};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The demo image under another name: image B.
fn image_b(a: &Path) -> PathBuf {
    let b = a.with_file_name("oci-b.tar");
    if !b.exists() {
        std::fs::copy(a, &b).unwrap();
    }
    b
}

fn write(dir: &Path, name: &str, doc: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    p.display().to_string()
}

fn web(image: &Path, say: &str) -> Value {
    container(
        "web",
        image,
        &["sh", "-c", &format!("echo {say}; sleep 3600")],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_rolls_a_changed_service_instance_by_instance_and_rolls_back_a_broken_one() {
    let a = demo_image(&work());
    let b = image_b(&a);
    let stack = Stack::up_with_env(
        1,
        &[],
        &[
            ("CANOPY_ROLLOUT_MIN_READY_SECS", "2"),
            ("CANOPY_ROLLOUT_DEADLINE_SECS", "60"),
        ],
    )
    .await;
    let dir = stack.dir.path();
    let file_a = write(dir, "a.json", &sla("roll", vec![web(&a, "A")]));
    let out = stack.cli_ok(&["apply", &file_a, "--wait"]).await;
    assert!(out.contains("instance 0 requested"), "{out}");
    stack.cli_ok(&["scale", "roll.web", "2"]).await;
    let services = stack.get("/api/services").await;
    let id = services[0]["microserviceID"].as_str().unwrap().to_owned();
    let rr_ip = services[0]["RR_ip"].clone();
    stack.wait_all(&id, 2, "RUNNING").await;

    // The same file again: nothing to do.
    let out = stack.cli(&["diff", &file_a]).await;
    assert!(out.ok && out.stdout.contains("no changes"), "{out:?}");

    // A broken image: the first new instance exits at once, and the update rolls back to A
    // by itself, every instance RUNNING on A.
    let broken = container("web", &a, &["sh", "-c", "echo broken; exit 3"]);
    let file_c = write(dir, "c.json", &sla("roll", vec![broken]));
    let out = stack.cli(&["apply", &file_c, "--wait"]).await;
    assert!(!out.ok, "{out:?}");
    assert!(out.stderr.contains("rolled back to revision 0"), "{out:?}");
    let out = stack.cli(&["rollout", "status", "roll.web"]).await;
    assert!(!out.ok && out.stderr.contains("rolled back"), "{out:?}");
    let list = stack.wait_all(&id, 2, "RUNNING").await;
    assert!(list.iter().all(|i| i["revision"] == 0), "{list:?}");
    let svc = stack.get(&format!("/api/service/{id}")).await;
    assert!(
        svc["code"].as_str().unwrap().ends_with("/oci.tar"),
        "A again: {svc}"
    );
    let mut tasks = 0;
    for _ in 0..100 {
        tasks = ctr::tasks(&stack.namespace(1)).len();
        if tasks == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(tasks, 2, "no container is left of the broken revision");

    let logs = stack.cli_ok(&["logs", "roll.web"]).await;
    assert_eq!(logs.trim(), "A", "{logs}");

    // Image B: a rolling update, instance by instance.
    let file_b = write(dir, "b.json", &sla("roll", vec![web(&b, "B")]));
    let out = stack.cli(&["diff", &file_b]).await;
    assert!(
        !out.ok,
        "diff exits 1 when apply would change something: {out:?}"
    );
    assert!(
        out.stdout.contains("~ service roll.web: cmd, code"),
        "{out:?}"
    );
    let out = stack.cli_ok(&["apply", &file_b, "--wait"]).await;
    assert!(
        out.contains("updated (cmd, code): rolling to revision 2"),
        "{out}"
    );
    assert!(out.contains("rollout complete (revision 2)"), "{out}");
    let list = stack.wait_all(&id, 2, "RUNNING").await;
    assert!(list.iter().all(|i| i["revision"] == 2), "{list:?}");
    let svc = stack.get(&format!("/api/service/{id}")).await;
    assert_eq!(svc["RR_ip"], rr_ip, "the rr_ip stays");
    assert!(
        svc["code"].as_str().unwrap().ends_with("oci-b.tar"),
        "{svc}"
    );
    // One at a time: each old instance went only after a new one was added (and ran).
    let events = stack.get(&format!("/api/service/{id}/events")).await;
    let events = events.as_array().unwrap();
    // This update's steps: after its "update" event.
    let since = events.iter().rposition(|e| e["what"] == "update").unwrap();
    let steps: Vec<String> = events[since..]
        .iter()
        .filter(|e| e["what"] == "rollout")
        .map(|e| {
            e["outcome"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    let kinds: Vec<&str> = steps
        .iter()
        .map(|s| {
            if s.contains("added") {
                "add"
            } else if s.contains("removed") {
                "remove"
            } else {
                "end"
            }
        })
        .collect();
    assert_eq!(
        kinds,
        ["add", "remove", "add", "remove", "end"],
        "{steps:?}"
    );
    // The containers are B's: their output says so.
    let logs = stack.cli_ok(&["logs", "roll.web"]).await;
    assert_eq!(logs.trim(), "B", "{logs}");
    let out = stack.cli_ok(&["apply", &file_b]).await;
    assert!(out.contains("service roll.web: unchanged"), "{out}");
    let out = stack.cli_ok(&["describe", "service", "roll.web"]).await;
    assert!(
        out.contains("revision 2 (update complete: 2 of 2 updated, 0 old)"),
        "{out}"
    );

    // A new service in the file is added; --prune deletes the one the file lost.
    let extra = container("extra", &a, &["sh", "-c", "sleep 3600"]);
    let file_d = write(dir, "d.json", &sla("roll", vec![web(&b, "B"), extra]));
    let out = stack.cli_ok(&["apply", &file_d, "--wait"]).await;
    assert!(
        out.contains("service roll.extra") && out.contains("(added)"),
        "{out}"
    );
    let out = stack.cli_ok(&["apply", &file_b]).await;
    assert!(
        out.contains("roll.extra: not in the file, left alone"),
        "{out}"
    );
    let out = stack.cli_ok(&["apply", &file_b, "--prune"]).await;
    assert!(out.contains("roll.extra: deleted"), "{out}");
    assert_eq!(
        stack.get("/api/services").await.as_array().unwrap().len(),
        1
    );
    drop(stack);
}
