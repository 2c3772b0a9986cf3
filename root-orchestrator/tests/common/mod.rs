//! Test helpers: a root on loopback (in process), an HTTP client that logs in, and a test
//! cluster that speaks the real gRPC cluster link.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use canopy_core::link::{
    ClusterReport, Command, CommandAck, InstanceReport, Registration, ResourceAggregate,
};
use canopy_core::{InstanceNumber, InstanceStatus, Resources, ServiceId, Virtualization};
use canopy_proto::pb::cluster_link_client::ClusterLinkClient;
use canopy_proto::pb::{self, cluster_message, root_message};
use reqwest::{Method, StatusCode};
use root_orchestrator::config::Config;
use root_orchestrator::server::{Listeners, Server};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub const ADMIN_PASSWORD: &str = "admin-test-pw";

/// A root orchestrator serving on loopback ports, stopped on drop.
pub struct TestRoot {
    pub api: String,
    pub grpc: SocketAddr,
    pub metrics: String,
    pub cluster_token: String,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestRoot {
    pub async fn start() -> TestRoot {
        Self::start_with(|_| {}).await
    }

    /// Starts a root in a fresh data directory; `tweak` adjusts the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestRoot {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_test(dir.path());
        config.admin_password = Some(ADMIN_PASSWORD.into());
        config.cluster_grace_secs = 30.0;
        tweak(&mut config);
        let mut root = Self::start_config(config).await;
        root._dir = Some(dir);
        root
    }

    pub async fn start_config(config: Config) -> TestRoot {
        let server = Server::open(&config).await.expect("root starts");
        let listeners = Listeners::bind(&config).await.unwrap();
        let api = format!("http://{}", listeners.api.local_addr().unwrap());
        let grpc = listeners.grpc.local_addr().unwrap();
        let metrics = format!("http://{}", listeners.metrics.local_addr().unwrap());
        let cluster_token = server.cluster_token.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listeners, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestRoot {
            api,
            grpc,
            metrics,
            cluster_token,
            config,
            stop: Some(stop),
            task: Some(task),
            _dir: None,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(10), &mut t)
                .await
                .is_err()
        {
            t.abort();
            panic!("the root did not stop within 10 s");
        }
    }

    /// An HTTP client without a token.
    pub fn anonymous(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.api.clone(),
            token: None,
        }
    }

    pub async fn login(&self, user: &str, password: &str) -> Api {
        let mut api = self.anonymous();
        let (status, body) = api
            .call(
                Method::POST,
                "/api/auth/login",
                Some(json!({"username": user, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {user}: {body}");
        api.token = Some(body["token"].as_str().unwrap().to_owned());
        api
    }

    pub async fn admin(&self) -> Api {
        self.login("Admin", ADMIN_PASSWORD).await
    }

    /// Creates a user (through the admin) and logs in as them.
    pub async fn user(&self, name: &str) -> Api {
        let admin = self.admin().await;
        let (status, body) = admin
            .call(
                Method::POST,
                "/api/auth/register",
                Some(json!({"name": name, "password": "pw-of-user", "email": format!("{name}@example.org"), "roles": ["Application_Provider"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.login(name, "pw-of-user").await
    }
}

/// `user`'s application `app` with one service whose instance 0 runs on a test cluster `c1`
/// (deployed, acknowledged, reported RUNNING): the cluster and the service id.
pub async fn running_instance(root: &TestRoot, user: &Api, app: &str) -> (TestCluster, String) {
    let app = user.create_app(sla(app, "web")).await.remove(0);
    let id = user.service_of(&app).await["microserviceID"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cluster =
        TestCluster::join(root.grpc, &root.cluster_token, "c1", capacity(8, 8000)).await;
    user.wait_active_clusters(1).await;
    user.scale_up(&id).await;
    let deploy = cluster.command().await;
    assert!(matches!(
        deploy.action,
        canopy_core::link::CommandAction::Deploy { .. }
    ));
    cluster.ack(deploy.id, Ok(())).await;
    cluster.report(&id, 0, InstanceStatus::Running).await;
    user.wait_instance(&id, 0, "RUNNING").await;
    (cluster, id)
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A REST client, with a bearer token once logged in.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn raw(&self, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    /// GET that must answer 200.
    pub async fn ok(&self, path: &str) -> Value {
        let (s, b) = self.get(path).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {b}");
        b
    }

    /// Posts an SLA and returns the created applications' ids, in SLA order (by name).
    pub async fn create_app(&self, sla: Value) -> Vec<Value> {
        let (s, b) = self
            .call(Method::POST, "/api/application/", Some(sla))
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b.as_array().unwrap().clone()
    }

    /// The one service of the application named `app`.
    /// The `what` of each event of a service, oldest first.
    pub async fn event_whats(&self, service_id: &str) -> Vec<String> {
        let events = self.ok(&format!("/api/service/{service_id}/events")).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["what"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn service_of(&self, app: &Value) -> Value {
        let id = app["applicationID"].as_str().unwrap();
        let list = self.ok(&format!("/api/services/{id}")).await;
        list[0].clone()
    }

    pub async fn scale_up(&self, service_id: &str) -> u32 {
        let (s, b) = self
            .call(
                Method::POST,
                &format!("/api/service/{service_id}/instance"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["message"], "ok");
        b["instance_number"].as_u64().unwrap() as u32
    }

    /// Waits until `n` clusters are active (up to 10 s).
    pub async fn wait_active_clusters(&self, n: usize) {
        for _ in 0..200 {
            if self
                .ok("/api/clusters/active")
                .await
                .as_array()
                .unwrap()
                .len()
                == n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} clusters never became active");
    }

    /// Waits until instance `n` of the service has `status` (up to 20 s).
    pub async fn wait_instance(&self, service_id: &str, n: u32, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let svc = self.ok(&format!("/api/service/{service_id}")).await;
            let inst = svc["instance_list"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["instance_number"] == n)
                .cloned();
            if let Some(i) = &inst
                && i["status"] == status
            {
                return i.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "instance {n} never became {status}: {inst:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The paths of the problems an error answer lists.
pub fn problem_paths(answer: &Value) -> Vec<String> {
    answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_owned())
        .collect()
}

/// An SLA with one application `app` and one container service `svc`.
pub fn sla(app: &str, svc: &str) -> Value {
    json!({
        "sla_version": "v2.0",
        "customerID": "Admin",
        "applications": [{
            "application_name": app,
            "application_namespace": "test",
            "application_desc": "test application",
            "microservices": [{
                "microservice_name": svc,
                "microservice_namespace": "test",
                "virtualization": "container",
                "cmd": ["httpd", "-f"],
                "memory": 100,
                "vcpus": 1,
                "vgpus": 0,
                "code": "localhost:5000/busybox:latest",
                "port": "8080:80"
            }]
        }]
    })
}

/// A log-stream message the root sent a cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum RootLog {
    Open(canopy_core::logs::LogOpen),
    Credit(canopy_core::logs::LogCredit),
    Close(canopy_core::logs::LogClose),
}

/// A cluster that speaks the real gRPC link: registers, reports resources every 200 ms, and
/// hands received commands to the test.
pub struct TestCluster {
    pub id: String,
    pub session_token: String,
    tx: mpsc::Sender<pb::ClusterMessage>,
    commands: mpsc::UnboundedReceiver<Command>,
    acks: mpsc::UnboundedReceiver<u64>,
    /// Log-stream messages from the root.
    pub logs: mpsc::UnboundedReceiver<RootLog>,
    reporter: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
    seq: u64,
}

pub fn capacity(vcpus: u32, memory_mb: u64) -> ClusterReport {
    ClusterReport {
        total: ResourceAggregate {
            active_nodes: 1,
            free: Resources {
                vcpus,
                memory_mb,
                vgpus: 0,
            },
            cpu_percent: 10.0,
            memory_percent: 20.0,
            virtualizations: [Virtualization::Container, Virtualization::Wasm].into(),
            supported_addons: Default::default(),
            csi_drivers: Default::default(),
        },
        per_architecture: Default::default(),
        ..Default::default()
    }
}

impl TestCluster {
    pub async fn register(
        addr: SocketAddr,
        token: &str,
        name: &str,
        id: Option<&str>,
    ) -> Result<(String, String), tonic::Status> {
        let mut client = ClusterLinkClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let reg = Registration {
            join_token: token.into(),
            cluster_name: name.into(),
            location: None,
            cluster_id: id.map(|i| canopy_core::ClusterId::parse(i).unwrap()),
            version: "test".into(),
        };
        let r = client
            .register(pb::RegisterRequest::from(&reg))
            .await?
            .into_inner();
        Ok((r.cluster_id, r.session_token))
    }

    /// Registers and opens a session reporting `report` every 200 ms.
    pub async fn join(
        addr: SocketAddr,
        token: &str,
        name: &str,
        report: ClusterReport,
    ) -> TestCluster {
        let (id, session_token) = Self::register(addr, token, name, None).await.unwrap();
        Self::session(addr, id, session_token, report).await
    }

    pub async fn session(
        addr: SocketAddr,
        id: String,
        session_token: String,
        report: ClusterReport,
    ) -> TestCluster {
        let mut client = ClusterLinkClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel::<pb::ClusterMessage>(64);
        tx.send(pb::ClusterMessage {
            body: Some(cluster_message::Body::Hello(pb::Hello {
                cluster_id: id.clone(),
                session_token: session_token.clone(),
            })),
        })
        .await
        .unwrap();
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        let Some(root_message::Body::Welcome(welcome)) = first.body else {
            panic!("expected welcome, got {first:?}");
        };
        let (cmd_tx, commands) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (log_tx, logs) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                match m.body {
                    Some(root_message::Body::Command(c)) => {
                        let _ = cmd_tx.send(Command::try_from(c).unwrap());
                    }
                    Some(root_message::Body::StatusAck(a)) => {
                        let _ = ack_tx.send(a.seq);
                    }
                    Some(root_message::Body::LogOpen(o)) => {
                        let _ = log_tx.send(RootLog::Open(o.try_into().unwrap()));
                    }
                    Some(root_message::Body::LogCredit(c)) => {
                        let _ = log_tx.send(RootLog::Credit(c.into()));
                    }
                    Some(root_message::Body::LogClose(c)) => {
                        let _ = log_tx.send(RootLog::Close(c.into()));
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        let rtx = tx.clone();
        let reporter = tokio::spawn(async move {
            let wire = pb::ClusterReport::from(&report);
            loop {
                let m = pb::ClusterMessage {
                    body: Some(cluster_message::Body::Report(wire.clone())),
                };
                if rtx.send(m).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        TestCluster {
            id,
            session_token,
            tx,
            commands,
            acks,
            logs,
            reporter,
            reader,
            seq: welcome.last_acked_seq,
        }
    }

    /// The next command from the root (fails after 10 s).
    pub async fn command(&mut self) -> Command {
        tokio::time::timeout(Duration::from_secs(10), self.commands.recv())
            .await
            .expect("a command within 10 s")
            .expect("session open")
    }

    /// No command arrives within `wait`.
    pub async fn no_command(&mut self, wait: Duration) {
        if let Ok(Some(c)) = tokio::time::timeout(wait, self.commands.recv()).await {
            panic!("unexpected command {c:?}");
        }
    }

    pub async fn ack(&self, id: u64, result: Result<(), String>) {
        let m = pb::ClusterMessage {
            body: Some(cluster_message::Body::Ack(pb::CommandAck::from(
                &CommandAck { id, result },
            ))),
        };
        self.tx.send(m).await.unwrap();
    }

    /// Reports an instance status and waits for the root's acknowledgement.
    pub async fn report(&mut self, service: &str, n: u32, status: InstanceStatus) {
        self.seq += 1;
        let r = InstanceReport {
            seq: self.seq,
            service_id: ServiceId::parse(service).unwrap(),
            instance: InstanceNumber(n),
            status,
            detail: String::new(),
            node_id: Some(canopy_core::NodeId::parse("worker-1").unwrap()),
            cpu_percent: 1.5,
            memory_mb: 12,
            ns_ip: None,
            ready: true,
        };
        let m = pb::ClusterMessage {
            body: Some(cluster_message::Body::Instance(pb::InstanceReport::from(
                &r,
            ))),
        };
        self.tx.send(m).await.unwrap();
        let acked = tokio::time::timeout(Duration::from_secs(10), self.acks.recv())
            .await
            .expect("status ack within 10 s")
            .unwrap();
        assert_eq!(acked, self.seq);
    }

    /// The next log-stream message from the root (fails after 10 s).
    pub async fn log_message(&mut self) -> RootLog {
        tokio::time::timeout(Duration::from_secs(10), self.logs.recv())
            .await
            .expect("a log message within 10 s")
            .expect("session open")
    }

    /// Sends a log chunk up, as a worker's answer relayed.
    pub async fn log_chunk(&self, chunk: &canopy_core::logs::LogChunk) {
        let m = pb::ClusterMessage {
            body: Some(cluster_message::Body::LogChunk(pb::LogChunk::from(chunk))),
        };
        self.tx.send(m).await.unwrap();
    }

    /// From now on answers every log open with `text` and the end, as a worker holding that
    /// whole log would; the cluster goes on reporting until the root stops.
    pub fn answer_logs(mut self, text: &'static str) {
        tokio::spawn(async move {
            while let Some(m) = self.logs.recv().await {
                if let RootLog::Open(o) = m {
                    let s = o.stream;
                    let chunk = |seq, data: &str, end| canopy_core::logs::LogChunk {
                        stream: s,
                        seq,
                        data: data.as_bytes().to_vec(),
                        end,
                        error: None,
                    };
                    for c in [
                        chunk(0, "", false),
                        chunk(1, text, false),
                        chunk(2, "", true),
                    ] {
                        self.log_chunk(&c).await;
                    }
                }
            }
        });
    }

    /// Stops reporting and closes the session (the cluster "dies").
    pub fn kill(self) {
        self.reporter.abort();
        self.reader.abort();
    }
}
