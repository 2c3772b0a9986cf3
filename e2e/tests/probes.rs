//! Health probes (issue 15) with the real binaries and containerd, busybox `httpd` in the
//! demo image, containers on the host's network (no overlay), so probes go to 127.0.0.1:
//!
//! - liveness: an instance whose HTTP server stops answering (httpd killed after a few
//!   seconds, the container kept alive by `sleep`) is reported `FAILED` by its liveness
//!   probe and restarted by the cluster;
//! - exec: a command in the container decides readiness and liveness;
//! - readiness: a rolling update to a spec whose readiness probe never passes rolls back
//!   after the deadline (its new instance RUNNING but never ready), one whose probe passes
//!   completes.
#![allow(clippy::unwrap_used)]

use canopy_e2e::{Stack, container, demo_image, free_port, sla};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn write(dir: &Path, name: &str, doc: &Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_liveness_probe_restarts_the_instance() {
    let image = demo_image(&work());
    let stack = Stack::up(1).await;
    let port = free_port();
    let mut svc = container(
        "live",
        &image,
        &[
            "sh",
            "-c",
            &format!("httpd -f -p {port} -h /www & sleep 6; kill $!; sleep 3600"),
        ],
    );
    svc["liveness_probe"] = json!({
        "http": {"path": "/", "port": port},
        "period_secs": 1,
        "timeout_secs": 1,
        "failure_threshold": 2,
    });
    let id = stack.deploy(&sla("probes", vec![svc])).await[0].clone();
    stack.wait_all(&id, 1, "RUNNING").await;
    let started = Instant::now();

    // Watch the instance: RUNNING, then FAILED by the probe, then RUNNING again.
    let want =
        format!("liveness probe failed 2 times: GET http://127.0.0.1:{port}/ → connection refused");
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut failed_at = None;
    loop {
        let list = stack.instances(&id).await;
        let i = &list[0];
        let now = (
            i["status"].as_str().unwrap().to_owned(),
            i["status_detail"].as_str().unwrap_or_default().to_owned(),
        );
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.0 == "FAILED" && failed_at.is_none() {
            assert_eq!(now.1, want, "{seen:?}");
            failed_at = Some(started.elapsed());
        }
        if failed_at.is_some() && now.0 == "RUNNING" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no restart by the liveness probe: {seen:?}\n{}",
            stack.daemon_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed_at = failed_at.unwrap();
    // httpd stops after 6 s; two failed tries a second apart: FAILED some 7-9 s in.
    assert!(
        failed_at >= Duration::from_secs(5) && failed_at < Duration::from_secs(20),
        "{failed_at:?} {seen:?}"
    );
    // The restarted copy answers again (its own httpd for 6 s).
    let http = reqwest::Client::new();
    let mut answered = false;
    for _ in 0..30 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            && r.status().is_success()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the restarted instance serves: {seen:?}");
    drop(stack);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_gates_a_rolling_update() {
    let image = demo_image(&work());
    let stack = Stack::up_with_env(
        1,
        &[],
        &[
            ("CANOPY_ROLLOUT_MIN_READY_SECS", "1"),
            ("CANOPY_ROLLOUT_DEADLINE_SECS", "12"),
        ],
    )
    .await;
    let dir = stack.dir.path();
    let v1 = container("web", &image, &["sh", "-c", "echo v1; sleep 3600"]);
    let file = write(dir, "v1.json", &sla("ready", vec![v1]));
    stack.cli_ok(&["apply", &file, "--wait"]).await;
    let id = stack.get("/api/services").await[0]["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    let list = stack.wait_all(&id, 1, "RUNNING").await;
    assert_eq!(list[0]["ready"], true, "no probe: ready");

    // v2's readiness probe asks a port nobody listens on: its instance runs but is never
    // ready, and the update rolls back after the deadline.
    let closed = free_port();
    let mut v2 = container("web", &image, &["sh", "-c", "echo v2; sleep 3600"]);
    v2["readiness_probe"] = json!({"tcp": {"port": closed}, "period_secs": 1});
    let file = write(dir, "v2.json", &sla("ready", vec![v2]));
    let started = Instant::now();
    // Meanwhile: the new instance is RUNNING and not ready.
    let args = ["apply", &file, "--wait"];
    let (out, _) = tokio::join!(
        stack.cli(&args),
        stack.wait_instances(
            &id,
            "a new instance RUNNING, not ready",
            Duration::from_secs(30),
            |l| {
                l.iter()
                    .any(|i| i["revision"] == 1 && i["status"] == "RUNNING" && i["ready"] == false)
            }
        )
    );
    assert!(!out.ok, "{out:?}");
    assert!(out.stderr.contains("rolled back"), "{out:?}");
    assert!(
        out.stderr.contains("readiness probe not passing"),
        "{out:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(12),
        "not before the deadline: {:?}",
        started.elapsed()
    );
    let list = stack.wait_all(&id, 1, "RUNNING").await;
    assert_eq!(list[0]["revision"], 0, "v1 kept: {list:?}");

    // v3's probe passes (httpd answers on its port): the update completes.
    let port = free_port();
    let mut v3 = container(
        "web",
        &image,
        &["httpd", "-f", "-p", &port.to_string(), "-h", "/www"],
    );
    v3["readiness_probe"] =
        json!({"http": {"path": "/index.html", "port": port}, "period_secs": 1});
    let file = write(dir, "v3.json", &sla("ready", vec![v3]));
    let out = stack.cli_ok(&["apply", &file, "--wait"]).await;
    assert!(out.contains("rollout complete"), "{out}");
    let list = stack.wait_all(&id, 1, "RUNNING").await;
    assert!(
        list[0]["revision"].as_u64().unwrap() >= 2 && list[0]["ready"] == true,
        "{list:?}"
    );
    drop(stack);
}

/// Exec probes run a command inside the container: readiness flips when the file the command
/// tests appears; liveness fails (and the instance is restarted) when another appears.
#[tokio::test(flavor = "multi_thread")]
async fn exec_probes_run_a_command_in_the_container() {
    let image = demo_image(&work());
    let stack = Stack::up(1).await;
    let mut svc = container(
        "cmd",
        &image,
        &[
            "sh",
            "-c",
            "sleep 4; touch /tmp/ready; sleep 6; touch /tmp/broken; sleep 3600",
        ],
    );
    svc["readiness_probe"] = json!({"exec": ["sh", "-c", "test -f /tmp/ready"], "period_secs": 1});
    svc["liveness_probe"] = json!({
        "exec": ["sh", "-c", "test ! -f /tmp/broken"],
        "period_secs": 1,
        "failure_threshold": 2,
    });
    let id = stack.deploy(&sla("execp", vec![svc])).await[0].clone();
    stack.wait_all(&id, 1, "RUNNING").await;
    let started = Instant::now();
    let mut seen: Vec<(String, bool, String)> = Vec::new();
    loop {
        let i = stack.instances(&id).await[0].clone();
        let now = (
            i["status"].as_str().unwrap().to_owned(),
            i["ready"].as_bool().unwrap_or(true),
            i["status_detail"].as_str().unwrap_or_default().to_owned(),
        );
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.0 == "FAILED" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{seen:?}\n{}",
            stack.daemon_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not ready until the file exists, then ready, then failed by the liveness command.
    let running: Vec<bool> = seen
        .iter()
        .filter(|s| s.0 == "RUNNING")
        .map(|s| s.1)
        .collect();
    assert_eq!(running.first(), Some(&false), "{seen:?}");
    assert!(
        running.contains(&true),
        "ready once /tmp/ready exists: {seen:?}"
    );
    let failed = &seen.last().unwrap().2;
    assert!(
        failed.contains("liveness probe failed 2 times")
            && failed.contains("exec sh -c test ! -f /tmp/broken → exit status 1"),
        "{seen:?}"
    );
    drop(stack);
}
