//! Test harness: a real root (in process, helpers shared with the root's own tests), a real
//! cluster (in process) with the embedded broker or an external Mosquitto, and test workers
//! that register over HTTP and speak MQTT with their issued credentials.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../root-orchestrator/tests/common/mod.rs"]
pub mod root;

use canopy_core::NodeId;
use canopy_proto::worker::{DeleteMessage, DeployMessage, RegistrationAnswer, topics};
use clap::Parser;
use cluster_orchestrator::config::Config;
use cluster_orchestrator::control::Cluster;
use cluster_orchestrator::server::Server;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub const NODE_TOKEN: &str = "node-join-token-for-tests";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Which broker the cluster uses.
pub enum BrokerKind {
    Embedded,
    Mosquitto,
}

/// A Mosquitto with the dynamic-security plugin on a loopback port, stopped on drop.
pub struct Mosquitto {
    pub port: u16,
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let dynsec = dir.path().join("dynsec.json");
        let admin_pw = "mosquitto-admin-pw";
        let out = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec)
            .args(["canopy-admin", admin_pw])
            .output()
            .expect("mosquitto_ctrl (Debian package mosquitto) is installed");
        assert!(
            out.status.success(),
            "dynsec init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plugin = [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib",
        ]
        .iter()
        .map(|d| std::path::Path::new(d).join("mosquitto_dynamic_security.so"))
        .find(|p| p.exists())
        .expect("mosquitto_dynamic_security.so is installed");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\nper_listener_settings false\n\
                 plugin {}\nplugin_opt_config_file {}\npersistence false\nuser root\n\
                 log_dest stderr\nlog_type error\n",
                plugin.display(),
                dynsec.display()
            ),
        )
        .unwrap();
        // Its only startup line is a warning about running as root; errors show as test failures.
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Mosquitto {
                    port,
                    url: format!("mqtt://canopy-admin:{admin_pw}@127.0.0.1:{port}"),
                    child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto did not listen on {port}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster joined to `root` on the broker `kind`, with the Mosquitto it uses (if any) and its
/// data directory; both must outlive it.
pub async fn cluster_on(
    kind: &BrokerKind,
    root: &root::TestRoot,
) -> (TestCluster, Option<Mosquitto>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestCluster::config(root.grpc, &root.cluster_token, dir.path());
    let mosquitto = match kind {
        BrokerKind::Embedded => None,
        BrokerKind::Mosquitto => {
            let m = Mosquitto::start().await;
            config.mqtt_url = Some(m.url.clone());
            Some(m)
        }
    };
    (TestCluster::start(config).await, mosquitto, dir)
}

/// A cluster orchestrator in process, stopped on drop.
pub struct TestCluster {
    pub api: String,
    pub mqtt_port: u16,
    pub cluster: Arc<Cluster>,
    pub config: Config,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestCluster {
    pub fn config(root_grpc: SocketAddr, join_token: &str, data_dir: &std::path::Path) -> Config {
        let mut c = Config::parse_from([
            "cluster-orchestrator",
            "--root-addr",
            &root_grpc.to_string(),
            "--join-token",
            join_token,
            "--name",
            "edge1",
        ]);
        c.api_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        c.mqtt_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        c.data_dir = data_dir.to_owned();
        c.node_token = Some(NODE_TOKEN.into());
        c.report_interval_secs = 0.2;
        c
    }

    pub async fn start(config: Config) -> TestCluster {
        let server = Server::open(&config).await.expect("cluster starts");
        let listener = tokio::net::TcpListener::bind(config.api_addr)
            .await
            .unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let cluster = server.cluster.clone();
        let mqtt_port = match &config.mqtt_url {
            Some(url) => {
                cluster_orchestrator::config::BrokerUrl::parse(url)
                    .unwrap()
                    .port
            }
            None => config.mqtt_addr.port(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        TestCluster {
            api,
            mqtt_port,
            cluster,
            config,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Waits until `n` workers are active.
    pub async fn wait_workers(&self, n: usize) {
        for _ in 0..200 {
            if self
                .cluster
                .workers()
                .await
                .iter()
                .filter(|w| w.active)
                .count()
                == n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{n} workers never became active");
    }

    /// Waits until the cluster is connected to the root.
    pub async fn wait_root(&self, connected: bool) {
        for _ in 0..400 {
            let s: serde_json::Value = reqwest::get(format!("{}/api/cluster/status", self.api))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if s["connected_to_root"] == connected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("root link never became connected={connected}");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Registers a worker over HTTP.
pub async fn register(
    api: &str,
    host: &str,
    token: &str,
) -> (reqwest::StatusCode, serde_json::Value) {
    let body = json!({
        "host": host, "ip": "127.0.0.1", "port": "3000", "architecture": "amd64",
        "vcpus": 4, "memory": 4096, "cpu_percent": 5.0, "memory_percent": 10.0,
        "virtualization": ["docker", "wasm"], "token": token,
        "system_info": {"kernel_version": "6.1"}
    });
    let r = reqwest::Client::new()
        .post(format!("{api}/api/node/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A worker that registers over HTTP and speaks the MQTT worker protocol; it runs nothing.
pub struct TestWorker {
    pub id: NodeId,
    pub name: String,
    pub answer: RegistrationAnswer,
    pub client: AsyncClient,
    deploys: mpsc::UnboundedReceiver<DeployMessage>,
    deletes: mpsc::UnboundedReceiver<DeleteMessage>,
    task: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl TestWorker {
    pub async fn join(cluster: &TestCluster, host: &str) -> TestWorker {
        let (status, body) = register(&cluster.api, host, NODE_TOKEN).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        let answer: RegistrationAnswer = serde_json::from_value(body).unwrap();
        Self::connect(cluster.mqtt_port, host, answer).await
    }

    /// Connects with credentials from an earlier registration.
    pub async fn connect(mqtt_port: u16, host: &str, answer: RegistrationAnswer) -> TestWorker {
        let id = NodeId::parse(answer.id.clone()).unwrap();
        let mut opts = MqttOptions::new(format!("{id}-ne"), "127.0.0.1", mqtt_port);
        opts.set_credentials(answer.mqtt_username.clone(), answer.mqtt_password.clone())
            .set_keep_alive(Duration::from_secs(5))
            .set_last_will(LastWill::new(
                topics::will(&id),
                json!({"node_id": id.to_string(), "connected": false}).to_string(),
                QoS::AtLeastOnce,
                false,
            ));
        let (client, mut events) = AsyncClient::new(opts, 100);
        let (dtx, deploys) = mpsc::unbounded_channel();
        let (xtx, deletes) = mpsc::unbounded_channel();
        let (ready_tx, ready) = oneshot::channel();
        let sub = client.clone();
        let node = id.clone();
        let task = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.subscribe(topics::deploy(&node), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                        sub.subscribe(topics::delete(&node), QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic.ends_with("/control/deploy") {
                            let _ = dtx.send(serde_json::from_slice(&p.payload).unwrap());
                        } else if p.topic.ends_with("/control/delete") {
                            let _ = xtx.send(serde_json::from_slice(&p.payload).unwrap());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(Err(e.to_string()));
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("MQTT connect within 10 s")
            .unwrap()
            .expect("worker connects with its credentials");
        let hb = client.clone();
        let node = id.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                let info = json!({"ip": "127.0.0.1", "cpu_percent": 5.0, "vcpus": 4,
                                  "memory_percent": 10.0, "memory": 4000});
                if hb
                    .publish(
                        topics::information(&node),
                        QoS::AtLeastOnce,
                        false,
                        info.to_string(),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        TestWorker {
            id,
            name: host.to_owned(),
            answer,
            client,
            deploys,
            deletes,
            task,
            heartbeat,
        }
    }

    pub async fn deploy(&mut self, within: Duration) -> DeployMessage {
        tokio::time::timeout(within, self.deploys.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no deploy within {within:?}", self.name))
            .unwrap()
    }

    pub async fn try_deploy(&mut self, within: Duration) -> Option<DeployMessage> {
        tokio::time::timeout(within, self.deploys.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn delete(&mut self, within: Duration) -> DeleteMessage {
        tokio::time::timeout(within, self.deletes.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no delete within {within:?}", self.name))
            .unwrap()
    }

    pub async fn job_status(&self, job: &str, n: u32, status: &str) {
        let m = json!({"sname": job, "instance": n, "status": status, "status_detail": "", "publicip": "127.0.0.1"});
        self.client
            .publish(
                topics::job(&self.id),
                QoS::AtLeastOnce,
                false,
                m.to_string(),
            )
            .await
            .unwrap();
    }

    pub async fn resources(&self, job: &str, n: u32) {
        let m = json!({"services": [{"job_name": job, "instance": n.to_string(), "cpu_percent": "1.0",
                                     "memory_percent": "2.0", "disk": "0", "logs": "hello", "virtualization": "docker"}]});
        self.client
            .publish(
                topics::resources(&self.id),
                QoS::AtLeastOnce,
                false,
                m.to_string(),
            )
            .await
            .unwrap();
    }

    pub async fn publish_raw(&self, topic: String, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
    }

    /// The worker's connection dies (no DISCONNECT: the broker publishes its last will).
    pub fn kill(self) {
        self.heartbeat.abort();
        self.task.abort();
    }
}
