//! The real `cluster-orchestrator` binary is killed with SIGKILL and started again, with each
//! store backend: its workers, services and instances are still there, healthy instances are
//! not started again, and work continues.
#![allow(clippy::unwrap_used)]

mod common;

use common::root::{TestRoot, sla};
use common::{NODE_TOKEN, TestWorker, free_port};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Daemon {
    args: Vec<String>,
    api: String,
    child: Option<Child>,
}

impl Daemon {
    async fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_cluster-orchestrator"))
            .args(&self.args)
            .env("CANOPY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("{}/health", self.api)).await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("cluster-orchestrator exited early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cluster-orchestrator did not become healthy");
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn connected(api: &str) -> bool {
    let s: serde_json::Value = reqwest::get(format!("{api}/api/cluster/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    s["connected_to_root"] == true
}

async fn survives_kill_9(store_args: &[String]) {
    let root = TestRoot::start().await;
    let admin = root.admin().await;
    let dir = tempfile::tempdir().unwrap();
    let (api_port, mqtt_port) = (free_port(), free_port());
    let api = format!("http://127.0.0.1:{api_port}");
    let mut args: Vec<String> = [
        "--root-addr",
        &root.grpc.to_string(),
        "--join-token",
        &root.cluster_token,
        "--name",
        "edge1",
        "--api-addr",
        &format!("127.0.0.1:{api_port}"),
        "--mqtt-addr",
        &format!("127.0.0.1:{mqtt_port}"),
        "--data-dir",
        &dir.path().display().to_string(),
        "--node-token",
        NODE_TOKEN,
        "--report-interval-secs",
        "0.2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend_from_slice(store_args);
    let mut cluster = Daemon {
        args,
        api: api.clone(),
        child: None,
    };
    cluster.start().await;

    let (status, body) = common::register(&api, "worker-a", NODE_TOKEN).await;
    assert!(status.is_success(), "{body}");
    let answer: canopy_proto::worker::RegistrationAnswer = serde_json::from_value(body).unwrap();
    let mut w = TestWorker::connect(mqtt_port, "worker-a", answer.clone()).await;
    let app = admin.create_app(sla("shop", "web")).await.remove(0);
    let sid = admin.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    admin.wait_active_clusters(1).await;
    admin.scale_up(&sid).await;
    let d = w.deploy(Duration::from_secs(10)).await;
    w.job_status(&d.job_name, 0, "RUNNING").await;
    admin.wait_instance(&sid, 0, "RUNNING").await;

    cluster.kill9();
    cluster.start().await;
    // The worker's MQTT session comes back by itself (same credentials, restored by the
    // cluster); the healthy instance is neither deployed again nor deleted.
    for _ in 0..200 {
        if connected(&api).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connected(&api).await, "the cluster reconnects to the root");
    w.resources(&d.job_name, 0).await;
    assert!(
        w.try_deploy(Duration::from_secs(2)).await.is_none(),
        "healthy instance restarted"
    );
    let inst = admin.wait_instance(&sid, 0, "RUNNING").await;
    assert_eq!(inst["worker_id"], w.id.to_string());

    // Work goes on: another instance lands on the same worker.
    admin.scale_up(&sid).await;
    let d2 = w.deploy(Duration::from_secs(10)).await;
    assert_eq!(d2.instance_number, 1);
    w.job_status(&d2.job_name, 1, "RUNNING").await;
    admin.wait_instance(&sid, 1, "RUNNING").await;
    admin.wait_instance(&sid, 0, "RUNNING").await;
    // The same registration works again after the restart (the name keeps its id).
    let (_, again) = common::register(&api, "worker-a", NODE_TOKEN).await;
    assert_eq!(again["id"], answer.id);
    cluster.kill9();
}

#[tokio::test]
async fn embedded_store_survives_kill_9() {
    survives_kill_9(&[]).await;
}

#[tokio::test]
async fn mongodb_store_survives_kill_9() {
    let uri = std::env::var("CANOPY_TEST_MONGODB_URI").unwrap_or_else(|_| {
        panic!(
            "CANOPY_TEST_MONGODB_URI is not set: run the tests through scripts/test.sh, \
             which starts nx-27017 on loopback, or point it at a MongoDB you own"
        )
    });
    let db = format!("canopy_cluster_restart_{}", std::process::id());
    survives_kill_9(&["--mongodb-uri".into(), uri, "--mongodb-database".into(), db]).await;
}
