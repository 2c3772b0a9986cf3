//! Containers on real containerd: pull from a real registry, import archives, run, report,
//! logs, stop, one-shot completion, bad input, leftovers, metrics.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

const JOB: &str = "app.ns.web.ns";

#[tokio::test(flavor = "multi_thread")]
async fn pulls_from_a_registry_runs_reports_and_stops() {
    require_containerd();
    let ns = Namespace::new("pull");
    let registry = Registry::start().await;
    registry.push("canopy/busybox:1");
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Engine::config(&cluster.addr, dir.path(), &ns);
    config.insecure_registries = vec![registry.addr.clone()];
    let mut engine = Engine::start(config).await;
    engine.wait_connected(SECS_30).await;

    let image = format!("{}/canopy/busybox:1", registry.addr);
    let msg = deploy(
        JOB,
        0,
        "container",
        &image,
        &[
            "sh",
            "-c",
            "echo hello-$GREETING-from-$HOSTNAME; exec sleep 600",
        ],
    );
    cluster.deploy(&msg).await;
    cluster.status(JOB, 0, "CREATING", SECS_30).await;
    let running = cluster.status(JOB, 0, "RUNNING", SECS_60).await;
    assert!(!running.publicip.is_empty());
    assert_eq!(ns.containers(), vec![format!("{JOB}.instance.0")]);
    assert!(ns.task_pid(&format!("{JOB}.instance.0")) > 0);

    // The SLA's environment and Oakestra's hostname reach the process; the log tail comes
    // with the resource report; the full log from the local API.
    cluster
        .logs_contain(JOB, 0, "hello-hi-from-instance-0", SECS_30)
        .await;
    let r = cluster.last_resources.clone().unwrap();
    let s = r.services.iter().find(|s| s.job_name == JOB).unwrap();
    assert_eq!(s.virtualization, "container");
    assert!(s.disk > 0 || s.memory > 0 || s.cpu_percent >= 0.0);
    let (status, body) = engine
        .get(&format!("/instances/{JOB}.instance.0/logs"))
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("hello-hi-from-instance-0"), "{body}");
    let (status, _) = engine.get("/instances/nope.instance.0/logs").await;
    assert_eq!(status, 404);

    // A repeated deploy of the same instance changes nothing.
    let pid = ns.task_pid(&format!("{JOB}.instance.0"));
    cluster.deploy(&msg).await;
    cluster.status(JOB, 0, "RUNNING", SECS_30).await;
    assert_eq!(ns.task_pid(&format!("{JOB}.instance.0")), pid);

    // Metrics: instances by status, operation latencies.
    let (status, metrics) = engine.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("canopy_node_instances{status=\"RUNNING\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("canopy_node_runtime_operation_seconds_count{runtime=\"container\",op=\"start\",result=\"ok\"} 1"), "{metrics}");

    // Delete: stopped (SIGTERM is enough for sleep's parent? `exec sleep` gets it), removed.
    cluster.undeploy(JOB, 0).await;
    assert!(ns.containers().is_empty());
    assert!(
        !ns.snapshots().iter().any(|s| s.ends_with("-snapshot")),
        "{:?}",
        ns.snapshots()
    );
    let (_, list) = engine.get("/instances").await;
    assert_eq!(list, "[]");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_archives_one_shot_completes_and_exit_codes_count() {
    require_containerd();
    let ns = Namespace::new("import");
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = Engine::start(Engine::config(&cluster.addr, dir.path(), &ns)).await;
    engine.wait_connected(SECS_30).await;

    // docker-archive, one-shot, exit 0 → COMPLETED.
    let mut m = deploy(
        JOB,
        1,
        "docker",
        &docker_archive(),
        &["sh", "-c", "echo one-shot-done"],
    );
    m.one_shot = true;
    cluster.deploy(&m).await;
    cluster.status(JOB, 1, "COMPLETED", SECS_60).await;
    let log = engine.logs(JOB, 1).await;
    assert!(log.contains("one-shot-done"), "{log}");
    assert!(
        ns.containers().is_empty(),
        "an ended instance leaves no container"
    );

    // oci-archive, not one-shot, exit 3 → DEAD with the code.
    let m = deploy(JOB, 2, "container", &oci_archive(), &["sh", "-c", "exit 3"]);
    cluster.deploy(&m).await;
    let dead = cluster.status(JOB, 2, "DEAD", SECS_60).await;
    assert_eq!(dead.status_detail, "exited with code 3");

    // A one-shot that fails is DEAD, not COMPLETED.
    let mut m = deploy(JOB, 3, "container", &oci_archive(), &["false"]);
    m.one_shot = true;
    cluster.deploy(&m).await;
    cluster.status(JOB, 3, "DEAD", SECS_60).await;

    // Both archives named the image as the archive says.
    let images = std::process::Command::new("ctr")
        .args(["--address", SOCKET, "-n", &ns.0, "images", "ls", "-q"])
        .output()
        .unwrap();
    let images = String::from_utf8_lossy(&images.stdout).into_owned();
    assert!(images.contains("canopy.test/busybox:1"), "{images}");

    // A deleted ended instance is forgotten.
    cluster.undeploy(JOB, 2).await;
    let (_, list) = engine.get("/instances").await;
    assert!(!list.contains(".instance.2"), "{list}");
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_fails_with_a_reason_and_the_engine_goes_on() {
    require_containerd();
    let ns = Namespace::new("bad");
    let registry = Registry::start().await;
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Engine::config(&cluster.addr, dir.path(), &ns);
    config.runtimes = vec!["container".into()];
    let mut engine = Engine::start(config).await;
    engine.wait_connected(SECS_30).await;

    // Not JSON at all: dropped (nothing to report on), the engine stays up.
    cluster
        .publish_raw(
            canopy_proto::worker::topics::deploy(&node_id()),
            b"{not json".to_vec(),
        )
        .await;
    // A field of the wrong type: FAILED naming the field.
    cluster
        .publish_raw(
            canopy_proto::worker::topics::deploy(&node_id()),
            br#"{"_id":"s1","job_name":"app.ns.web.ns","instance_number":10,"image":"x","virtualization":"container","memory":"lots"}"#.to_vec(),
        )
        .await;
    let f = cluster.status(JOB, 10, "FAILED", SECS_30).await;
    assert!(f.status_detail.contains("memory"), "{}", f.status_detail);

    // Unknown runtime.
    cluster.deploy(&deploy(JOB, 11, "crosvm", "x", &[])).await;
    let f = cluster.status(JOB, 11, "FAILED", SECS_30).await;
    assert!(
        f.status_detail.starts_with("virtualization"),
        "{}",
        f.status_detail
    );
    // A runtime this worker does not offer.
    cluster
        .deploy(&deploy(JOB, 12, "wasm", "/x.wasm", &[]))
        .await;
    let f = cluster.status(JOB, 12, "FAILED", SECS_30).await;
    assert!(
        f.status_detail.contains("does not run wasm"),
        "{}",
        f.status_detail
    );
    // An image the registry does not have.
    let missing = format!("{}/canopy/nothing:1", registry.addr);
    cluster
        .deploy(&deploy(JOB, 13, "container", &missing, &["true"]))
        .await;
    let f = cluster.status(JOB, 13, "FAILED", SECS_60).await;
    assert!(f.status_detail.contains("not found"), "{}", f.status_detail);
    // An archive that is not there, and one that is not a tarball.
    cluster
        .deploy(&deploy(
            JOB,
            14,
            "container",
            "docker-archive:/nonexistent/x.tar",
            &["true"],
        ))
        .await;
    let f = cluster.status(JOB, 14, "FAILED", SECS_30).await;
    assert!(
        f.status_detail.contains("no archive at /nonexistent/x.tar"),
        "{}",
        f.status_detail
    );
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").unwrap();
    cluster
        .deploy(&deploy(
            JOB,
            15,
            "container",
            &format!("oci-archive:{}", junk.display()),
            &["true"],
        ))
        .await;
    let f = cluster.status(JOB, 15, "FAILED", SECS_30).await;
    assert!(f.status_detail.starts_with("code:"), "{}", f.status_detail);
    // A bad port string.
    let mut m = deploy(JOB, 16, "container", &oci_archive(), &["true"]);
    m.port = "80:99999".into();
    cluster.deploy(&m).await;
    let f = cluster.status(JOB, 16, "FAILED", SECS_30).await;
    assert!(f.status_detail.starts_with("port"), "{}", f.status_detail);
    // A command that does not exist in the image.
    cluster
        .deploy(&deploy(
            JOB,
            17,
            "container",
            &oci_archive(),
            &["/no/such/binary"],
        ))
        .await;
    let f = cluster.status(JOB, 17, "FAILED", SECS_60).await;
    assert!(!f.status_detail.is_empty());

    // After all that, a good deploy runs.
    cluster.deploy(&sleeper(JOB, 18)).await;
    cluster.status(JOB, 18, "RUNNING", SECS_60).await;
    assert_eq!(ns.containers(), vec![format!("{JOB}.instance.18")]);
    cluster.undeploy(JOB, 18).await;
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_in_the_namespace_are_removed_at_start() {
    require_containerd();
    let ns = Namespace::new("leftover");
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();

    // Something else left a container in the engine's namespace (Oakestra #443, #432).
    let stray = std::process::Command::new("ctr")
        .args([
            "--address",
            SOCKET,
            "-n",
            &ns.0,
            "images",
            "import",
            "--all-platforms",
        ])
        .arg(images().join("oci.tar"))
        .output()
        .unwrap();
    assert!(
        stray.status.success(),
        "{}",
        String::from_utf8_lossy(&stray.stderr)
    );
    ns.run_stray("stray", None);
    assert_eq!(ns.containers(), vec!["stray".to_string()]);

    let mut engine = Engine::start(Engine::config(&cluster.addr, dir.path(), &ns)).await;
    assert!(ns.containers().is_empty(), "{:?}", ns.containers());
    engine.wait_connected(SECS_30).await;
    cluster.deploy(&sleeper(JOB, 0)).await;
    cluster.status(JOB, 0, "RUNNING", SECS_60).await;
    cluster.undeploy(JOB, 0).await;
    engine.stop().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// While the engine runs, a workload of the engine's making that no instance names (what the
/// in-flight delete bug left behind) is found by the periodic check, logged, removed and
/// counted; a tracked instance and a container an operator runs beside the engine are left
/// alone.
#[tokio::test(flavor = "multi_thread")]
async fn the_running_engine_removes_workloads_nothing_tracks() {
    require_containerd();
    let ns = Namespace::new("untracked");
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Engine::config(&cluster.addr, dir.path(), &ns);
    config.untracked_check_secs = 0.3;
    let mut engine = Engine::start(config).await;
    engine.wait_connected(SECS_30).await;
    cluster.deploy(&sleeper(JOB, 0)).await;
    cluster.status(JOB, 0, "RUNNING", SECS_60).await;

    // Two containers appear behind the engine's back: one labelled as the engine labels its
    // instances (an orphan), one of the operator's own.
    // Created in one call: `ctr run` would make it in two steps, and the check may remove it
    // between them.
    ns.create_stray("orphan", Some("canopy.instance=orphan"));
    ns.run_stray("operators", Some("purpose=debugging"));
    let start = std::time::Instant::now();
    while ns.containers().contains(&"orphan".to_owned()) {
        assert!(start.elapsed() < SECS_30, "the orphan was never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut left = ns.containers();
    left.sort();
    assert_eq!(
        left,
        vec![format!("{JOB}.instance.0"), "operators".to_owned()]
    );
    let (_, metrics) = engine.get("/metrics").await;
    assert!(
        metrics.contains(r#"canopy_node_untracked_workloads_removed_total{runtime="container"} 1"#),
        "{metrics}"
    );
    cluster.undeploy(JOB, 0).await;
    engine.stop().await;
}
