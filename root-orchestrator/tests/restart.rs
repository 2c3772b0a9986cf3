//! The real `root-orchestrator` binary is killed with SIGKILL and started again, with each store
//! backend: every acknowledged user, organisation, application, service, instance and cluster
//! registration is still there, issued tokens still work, unacknowledged commands are re-sent,
//! and running instances are not deployed again.
#![allow(clippy::unwrap_used)]

mod common;

use canopy_core::InstanceStatus;
use common::{Api, TestCluster, capacity, sla};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CLUSTER_TOKEN: &str = "restart-test-cluster-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon {
    args: Vec<String>,
    api: String,
    grpc: SocketAddr,
    child: Option<Child>,
}

impl Daemon {
    fn new(data_dir: &std::path::Path, extra: &[String]) -> Daemon {
        let (api, grpc, metrics) = (free_port(), free_port(), free_port());
        let mut args = vec![
            "--api-addr".into(),
            format!("127.0.0.1:{api}"),
            "--grpc-addr".into(),
            format!("127.0.0.1:{grpc}"),
            "--metrics-addr".into(),
            format!("127.0.0.1:{metrics}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend_from_slice(extra);
        Daemon {
            args,
            api: format!("http://127.0.0.1:{api}"),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            child: None,
        }
    }

    async fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_root-orchestrator"))
            .args(&self.args)
            .env("CANOPY_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .env("CANOPY_CLUSTER_TOKEN", CLUSTER_TOKEN)
            .env("CANOPY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{}/health", self.api)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("root-orchestrator exited early: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("root-orchestrator did not become healthy");
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn api(&self, token: Option<String>) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.api.clone(),
            token,
        }
    }

    async fn login(&self, user: &str, password: &str) -> Api {
        let (s, b) = self
            .api(None)
            .call(
                Method::POST,
                "/api/auth/login",
                Some(json!({"username": user, "password": password})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        self.api(Some(b["token"].as_str().unwrap().to_owned()))
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

async fn survives_kill_9(extra: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let mut root = Daemon::new(dir.path(), extra);
    root.start().await;

    let admin = root.login("Admin", common::ADMIN_PASSWORD).await;
    let (s, _) = admin
        .call(
            Method::POST,
            "/api/auth/register",
            Some(
                json!({"name": "alice", "password": "alice-pw", "roles": ["Application_Provider"]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = admin
        .call(
            Method::POST,
            "/api/organization",
            Some(json!({"name": "edge"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let quota = json!({"services": 3, "instances": 9, "memory_mb": 4096});
    let (s, _) = admin
        .call(Method::PUT, "/api/user/alice/quota", Some(quota.clone()))
        .await;
    assert_eq!(s, StatusCode::OK);
    let alice = root.login("alice", "alice-pw").await;
    let app = alice.create_app(sla("shop", "web")).await.remove(0);
    let sid = alice.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut cluster = TestCluster::join(root.grpc, CLUSTER_TOKEN, "c1", capacity(8, 8192)).await;
    alice.wait_active_clusters(1).await;
    alice.scale_up(&sid).await;
    let deploy0 = cluster.command().await;
    cluster.ack(deploy0.id, Ok(())).await;
    cluster.report(&sid, 0, InstanceStatus::Running).await;
    alice.wait_instance(&sid, 0, "RUNNING").await;
    // Instance 1 is placed but its deploy is not acknowledged before the crash.
    alice.scale_up(&sid).await;
    let deploy1 = cluster.command().await;
    let before = alice.ok(&format!("/api/service/{sid}")).await;

    root.kill9();
    cluster.kill();
    root.start().await;

    // Tokens issued before the crash still work; everything acknowledged is there.
    let after = alice.ok(&format!("/api/service/{sid}")).await;
    assert_eq!(after["instance_list"], before["instance_list"]);
    assert_eq!(after["RR_ip"], before["RR_ip"]);
    assert_eq!(
        alice
            .ok("/api/applications")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let users = admin.ok("/api/users").await;
    assert_eq!(users.as_array().unwrap().len(), 2);
    assert_eq!(
        alice.event_whats(&sid).await,
        ["create", "scale up", "scale up"]
    );
    let q = alice.ok("/api/user/alice/quota").await;
    assert_eq!((&q["quota"], &q["default"]), (&quota, &json!(false)), "{q}");
    let orgs = admin.ok("/api/organization").await;
    assert!(orgs.as_array().unwrap().iter().any(|o| o["name"] == "edge"));
    let clusters = admin.ok("/api/clusters").await;
    assert_eq!(clusters[0]["cluster_name"], "c1");

    // The cluster comes back under its identity: only the unacknowledged deploy is sent again.
    let id = clusters[0]["_id"]["$oid"].as_str().unwrap().to_owned();
    let (again, token) = TestCluster::register(root.grpc, CLUSTER_TOKEN, "c1", Some(&id))
        .await
        .unwrap();
    assert_eq!(again, id);
    let mut cluster = TestCluster::session(root.grpc, id, token, capacity(8, 8192)).await;
    assert_eq!(cluster.command().await, deploy1);
    cluster.ack(deploy1.id, Ok(())).await;
    cluster.no_command(Duration::from_millis(700)).await;
    cluster.report(&sid, 1, InstanceStatus::Running).await;
    alice.wait_instance(&sid, 1, "RUNNING").await;
    alice.wait_instance(&sid, 0, "RUNNING").await;

    // New instances get addresses that do not collide with the ones from before the crash.
    alice.scale_up(&sid).await;
    let svc = alice.ok(&format!("/api/service/{sid}")).await;
    let ips: std::collections::BTreeSet<&str> = svc["instance_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_ip"].as_str().unwrap())
        .chain([svc["RR_ip"].as_str().unwrap()])
        .collect();
    assert_eq!(ips.len(), 4, "{svc}");
    root.kill9();
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
    let db = format!("canopy_root_restart_{}", std::process::id());
    survives_kill_9(&["--mongodb-uri".into(), uri, "--mongodb-database".into(), db]).await;
}
