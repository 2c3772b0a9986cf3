//! End to end, with the real binaries: `canopy up` starts a root, a cluster (embedded store and
//! broker) and node engines on the machine's containerd; the tests drive it through the REST
//! API and the `canopy` CLI.
#![allow(clippy::unwrap_used)]

use canopy_e2e::{Stack, container, ctr, demo_image, free_port, signal, sla};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The next list `canopy get --watch` prints (its lines up to the blank line after it).
async fn next_list(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Vec<String> {
    let mut rows = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a list within 30 s")
            .unwrap()
            .expect("canopy get --watch runs on");
        if line.is_empty() {
            return rows;
        }
        rows.push(line);
    }
}

fn sleeper(name: &str, image: &std::path::Path) -> Value {
    container(
        name,
        image,
        &["sh", "-c", "echo started $HOSTNAME; sleep 3600"],
    )
}

/// One worker: an SLA posted through the API runs on containerd and serves its page; the CLI
/// lists, shows logs and scales 1 → 3 → 1; a one-shot completes; an invalid SLA is refused
/// naming the field; deleting the service leaves no container, snapshot or address; Ctrl-C
/// leaves nothing in the namespace.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_runs_scales_completes_and_leaves_nothing_behind() {
    let image = demo_image(&work());
    let mut stack = Stack::up(1).await;
    let ns = stack.namespace(1);
    let snapshots_before = ctr::snapshots(&ns).len();
    let addresses_before = stack.root_metric("canopy_root_service_addresses").await;

    // SLA → RUNNING on real containerd, page reachable on the host network.
    let port = free_port();
    let port_s = port.to_string();
    let web = container(
        "web",
        &image,
        &["httpd", "-f", "-v", "-p", &port_s, "-h", "/www"],
    );
    let ids = stack.deploy(&sla("site", vec![web])).await;
    let web_id = ids[0].clone();
    let running = stack.wait_all(&web_id, 1, "RUNNING").await;
    assert!(
        running[0]["worker_id"]
            .as_str()
            .is_some_and(|w| !w.is_empty())
    );
    assert_eq!(ctr::containers(&ns).len(), 1);
    assert_eq!(ctr::tasks(&ns).len(), 1);
    let page = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Hello from Canopy"), "{page}");

    // The CLI sees it; logs come through the root.
    let services = stack.cli_ok(&["get", "services"]).await;
    assert!(
        services.contains("site") && services.contains("RUNNING") && services.contains("1/1"),
        "{services}"
    );
    let nodes = stack.cli_ok(&["get", "nodes"]).await;
    assert!(
        nodes.contains("worker1") && nodes.contains("true"),
        "{nodes}"
    );
    let nodes_json: Value =
        serde_json::from_str(&stack.cli_ok(&["get", "nodes", "-o", "json"]).await).unwrap();
    assert_eq!(nodes_json.as_array().unwrap().len(), 1);
    let clusters = stack.cli_ok(&["get", "clusters"]).await;
    assert!(clusters.contains("local"), "{clusters}");
    // Quotas: the admin changes one limit of a user with the CLI (the others keep the root's
    // default), and removes it again.
    let (s, b) = stack
        .call(
            "POST",
            "/api/auth/register",
            Some(&json!({"name": "dora", "password": "pw-of-dora", "email": "dora@example.org", "roles": ["Application_Provider"]})),
        )
        .await;
    assert!(s.is_success(), "{s} {b}");
    let row = |out: &str, what: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_default();
        line.split_whitespace().map(str::to_owned).collect()
    };
    let out = stack.cli_ok(&["quota", "dora", "--services", "3"]).await;
    assert!(out.contains("set for this user"), "{out}");
    assert_eq!(row(&out, "services"), ["services", "0", "3"], "{out}");
    assert_eq!(row(&out, "instances"), ["instances", "0", "1000"], "{out}");
    let out = stack.cli_ok(&["quota", "dora", "--default"]).await;
    assert!(out.contains("the root's default"), "{out}");
    assert_eq!(row(&out, "services"), ["services", "0", "500"], "{out}");
    // A refused access token (as an expired one is) is refreshed with the saved refresh
    // token, and the new one is saved.
    let config_path = stack.dir.path().join("cli.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["logins"][&stack.api]["token"] = json!("expired");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let apps = stack.cli_ok(&["get", "apps"]).await;
    assert!(apps.contains("site"), "{apps}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let token = config["logins"][&stack.api]["token"].as_str().unwrap();
    assert!(token != "expired" && token.len() > 20, "{config}");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = stack.cli_ok(&["logs", "site.web"]).await;
        if logs.contains("response:200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(logs.contains("response:200"), "logs: {logs:?}");

    // `canopy events` prints changes as they happen: the scale below shows as instance
    // changes of pool.worker, up to RUNNING.
    let mut events = stack.cli_spawn(&["events", "--kind", "instance"]);
    let mut lines = tokio::io::BufReader::new(events.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Scale 1 → 3 → 1 (a service without a host port: the instances share the host network).
    let sleepy = stack
        .deploy(&sla("pool", vec![sleeper("worker", &image)]))
        .await;
    let sleepy = sleepy[0].clone();
    stack.wait_all(&sleepy, 1, "RUNNING").await;
    stack.cli_ok(&["scale", "pool.worker", "3"]).await;
    stack.wait_all(&sleepy, 3, "RUNNING").await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen
        .iter()
        .filter(|l: &&String| l.contains(" RUNNING"))
        .count()
        < 3
    {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("canopy events printed only {seen:#?}"))
            .unwrap()
            .expect("canopy events runs on");
        assert!(line.contains(&format!("instance {sleepy}#")), "{line}");
        seen.push(line);
    }
    drop(events);
    assert_eq!(ctr::tasks(&ns).len(), 4);
    let instances = stack.cli_ok(&["get", "instances"]).await;
    assert_eq!(instances.matches("pool.worker").count(), 3, "{instances}");
    // `canopy get instances --watch` lists them, and again when they change.
    let mut watch = stack.cli_spawn(&["get", "instances", "--watch"]);
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = next_list(&mut lines).await;
    assert_eq!(
        first.iter().filter(|l| l.contains("pool.worker")).count(),
        3,
        "{first:?}"
    );
    stack.cli_ok(&["scale", "pool.worker", "1"]).await;
    let mut last = Vec::new();
    for _ in 0..20 {
        last = next_list(&mut lines).await;
        if last.iter().filter(|l| l.contains("pool.worker")).count() == 1 {
            break;
        }
    }
    assert_eq!(
        last.iter().filter(|l| l.contains("pool.worker")).count(),
        1,
        "{last:?}"
    );
    drop(watch);
    stack.wait_all(&sleepy, 1, "RUNNING").await;
    for _ in 0..100 {
        if ctr::containers(&ns).len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ctr::containers(&ns).len(), 2);

    // A one-shot ends COMPLETED, and `apply --wait` says so.
    let mut job = container("job", &image, &["sh", "-c", "echo done"]);
    job["one_shot"] = json!(true);
    let file = stack.dir.path().join("job.json");
    std::fs::write(&file, sla("batch", vec![job]).to_string()).unwrap();
    let out = stack
        .cli_ok(&["apply", file.to_str().unwrap(), "--wait", "--timeout", "90"])
        .await;
    assert!(out.contains("COMPLETED"), "{out}");
    let job_id = stack
        .get("/api/services")
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["app_name"] == "batch")
        .map(|s| s["microserviceID"].as_str().unwrap().to_owned())
        .unwrap();
    stack.wait_all(&job_id, 1, "COMPLETED").await;

    // An invalid SLA is refused naming the field (apply checks the file before it compares
    // it with what the root holds; the API's own 422 is tested in the root's tests).
    let mut bad = sla("broken", vec![container("bad", &image, &["true"])]);
    bad["applications"][0]["microservices"][0]["microservice_name"] = json!("not valid!");
    let file = stack.dir.path().join("bad.json");
    std::fs::write(&file, bad.to_string()).unwrap();
    let out = stack.cli(&["apply", file.to_str().unwrap()]).await;
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("applications[0].microservices[0].microservice_name: must match"),
        "{}",
        out.stderr
    );

    // Undeploy: no container, no instance snapshot, no address.
    stack.cli_ok(&["delete", "app", "batch"]).await;
    stack.cli_ok(&["delete", "app", "pool"]).await;
    stack.cli_ok(&["delete", "service", &web_id]).await;
    let mut left = (Vec::new(), Vec::new());
    for _ in 0..150 {
        left = (ctr::containers(&ns), ctr::snapshots(&ns));
        if left.0.is_empty() && left.1.len() == snapshots_before.max(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left.0.is_empty(), "containers left: {:?}", left.0);
    assert!(
        left.1.iter().all(|s| s.starts_with("sha256:")),
        "instance snapshots left: {:?}",
        left.1
    );
    assert_eq!(
        stack.root_metric("canopy_root_service_addresses").await,
        addresses_before
    );
    let services: Value = stack.get("/api/services").await;
    assert_eq!(services.as_array().unwrap().len(), 0, "{services}");

    // Ctrl-C with something running removes it.
    let ids = stack.deploy(&sla("last", vec![sleeper("s", &image)])).await;
    stack.wait_all(&ids[0], 1, "RUNNING").await;
    assert_eq!(ctr::containers(&ns).len(), 1);
    assert!(stack.stop().await, "canopy up failed:\n{}", stack.output());
    assert!(
        ctr::containers(&ns).is_empty(),
        "{:?}",
        ctr::containers(&ns)
    );
    assert!(ctr::tasks(&ns).is_empty());
}

/// Two workers: killing one (its engine and its containers) gets its instances RUNNING on the
/// other.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_workers_instances_run_again_on_the_other() {
    let image = demo_image(&work());
    let stack = Stack::up(2).await;
    let ids = stack
        .deploy(&sla("ha", vec![sleeper("a", &image), sleeper("b", &image)]))
        .await;
    for id in &ids {
        stack.wait_all(id, 1, "RUNNING").await;
    }
    // The worker holding service a's instance dies, with everything on it.
    let victim_node = stack.instances(&ids[0]).await[0]["worker_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let n = stack.worker_of(&victim_node).await;
    let victim = format!("worker{n}");
    let survivor_ns = stack.namespace(3 - n);
    let engine_pid = stack.component(&victim)["pid"].as_u64().unwrap() as u32;
    signal(engine_pid, Signal::SIGKILL);
    for (_, pid) in ctr::tasks(&stack.namespace(n)) {
        signal(pid, Signal::SIGKILL);
    }

    for id in &ids {
        let list = stack
            .wait_instances(
                id,
                "running on the surviving worker",
                Duration::from_secs(90),
                |l| {
                    l.len() == 1
                        && l[0]["status"] == "RUNNING"
                        && l[0]["worker_id"] != victim_node.as_str()
                },
            )
            .await;
        assert_ne!(list[0]["worker_id"], victim_node.as_str());
    }
    assert_eq!(ctr::tasks(&survivor_ns).len(), 2);
    // The dead worker shows as inactive once the cluster has reported again.
    let mut dead = Value::Null;
    for _ in 0..50 {
        let nodes = stack.cli_ok(&["get", "nodes", "-o", "json"]).await;
        let nodes: Value = serde_json::from_str(&nodes).unwrap();
        dead = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == victim_node.as_str())
            .cloned()
            .unwrap();
        if dead["active"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead["active"], false, "{dead}");
    assert_eq!(dead["instances"], 0, "{dead}");
}

/// The root is killed right after a deployment was acknowledged and started again: nothing
/// asked for is lost, and every instance ends RUNNING.
#[tokio::test(flavor = "multi_thread")]
async fn a_root_restart_mid_deployment_loses_nothing() {
    let image = demo_image(&work());
    let mut stack = Stack::up(1).await;
    let ids = stack
        .deploy(&sla(
            "durable",
            vec![sleeper("one", &image), sleeper("two", &image)],
        ))
        .await;
    let (status, _) = stack
        .call("POST", &format!("/api/service/{}/instance", ids[0]), None)
        .await;
    assert!(status.is_success());
    // Killed at once: the cluster is still placing and reporting.
    stack.kill9_and_restart_root().await;

    let apps = stack.get("/api/applications").await;
    assert!(
        apps.as_array()
            .unwrap()
            .iter()
            .any(|a| a["application_name"] == "durable"),
        "{apps}"
    );
    stack.wait_all(&ids[0], 2, "RUNNING").await;
    stack.wait_all(&ids[1], 1, "RUNNING").await;
    assert_eq!(ctr::tasks(&stack.namespace(1)).len(), 3);
    // The CLI's saved login still works against the restarted root.
    let out = stack.cli_ok(&["get", "instances"]).await;
    assert_eq!(out.matches("RUNNING").count(), 3, "{out}");
    assert!(stack.stop().await);
}
