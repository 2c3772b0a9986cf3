//! Test harness for the node engine, against real components: containerd (the machine's,
//! in a containerd namespace of the test's own), Debian's `docker-registry` and Mosquitto on
//! loopback ports, and test images built by `scripts/busybox-image.sh`.
//!
//! The cluster side is a stand-in that speaks the real worker protocol: an HTTP
//! `/api/node/register` answering with the broker's address, and an MQTT client on that
//! broker that publishes deploy/delete messages and collects what the worker reports. (The
//! real cluster with a real engine is exercised by the end-to-end suite.)
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod net;

use canopy_proto::worker::{DeleteMessage, DeployMessage, JobStatus, ResourcesReport, topics};
use node_engine::config::Config;
use node_engine::server::Node;
use node_engine::uplink::LinkState;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

pub const NODE_TOKEN: &str = "node-token-for-tests";
pub const NODE_ID: &str = "testnode01";
pub const SOCKET: &str = "/run/containerd/containerd.sock";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kernel command line of a Linux micro-VM test guest, ending with its `/init`'s `end`
/// (`end=poweroff` or `end=httpd`). The TSC's calibration against the PIT fails under
/// emulation on a busy host; the last two parameters skip it.
pub fn linux_boot_args(end: &'static str) -> [&'static str; 6] {
    [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "tsc_early_khz=2000000",
        "no_timer_check",
        end,
    ]
}

/// The Linux micro-VM image (`scripts/unikernel-image.sh linux OUT MARKER`) written to `out`;
/// the Debian kernel package is cached in the build's tmp dir.
pub fn linux_microvm_at(out: &Path, marker: &str) -> String {
    build_linux_microvm(out, marker, None)
}

/// [`linux_microvm_at`] with `files` as the image's `files/` (`FILES_DIR`: Debian's generic
/// kernel, which has 9p, and /init mounting the share).
pub fn linux_microvm_with_files_at(out: &Path, marker: &str, files: &Path) -> String {
    build_linux_microvm(out, marker, Some(files))
}

fn build_linux_microvm(out: &Path, marker: &str, files: Option<&Path>) -> String {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debian-kernel");
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("scripts/unikernel-image.sh"))
        .arg("linux")
        .arg(out)
        .arg(marker)
        .arg(&cache);
    if let Some(files) = files {
        cmd.env("FILES_DIR", files);
    }
    let run = cmd.output().unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out.display().to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16, what: &str) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on {port}");
}

/// Fails clearly when containerd is not there (scripts/test.sh starts it).
pub fn require_containerd() {
    assert!(
        Path::new(SOCKET).exists(),
        "containerd is not running at {SOCKET}: run the tests through scripts/test.sh, which starts it"
    );
}

/// The test images, built once per test binary: `(dir with oci.tar, docker.tar, layout/)`.
pub fn images() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under the build's tmp dir, one per test process; those of finished processes go.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("busybox-images-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("busybox-images-{}", std::process::id()));
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/busybox-image.sh"))
            .arg("build")
            .arg(&dir)
            .arg("canopy.test/busybox:1")
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "building the test image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

pub fn oci_archive() -> String {
    format!("oci-archive:{}", images().join("oci.tar").display())
}

pub fn docker_archive() -> String {
    format!("docker-archive:{}", images().join("docker.tar").display())
}

/// A child process stopped (SIGKILL) on drop, by its PID.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a quiet server process and waits until it listens on `port`.
async fn serve(cmd: &mut Command, port: u16) -> Proc {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (a Debian package) is installed: {e}"));
    let proc = Proc(child);
    wait_listening(port, &program).await;
    proc
}

/// The real `node-engine` binary with its stderr appended to `<data_dir>/engine.log`, short
/// report interval and stop grace, and `extra` arguments.
pub fn spawn_engine_binary(
    cluster_addr: &str,
    data_dir: &Path,
    api_port: u16,
    extra: &[&str],
) -> Proc {
    let mut cmd = spawn_command(cluster_addr, data_dir, api_port);
    // On the host's network unless the test gives the engine a net manager.
    if !extra.contains(&"--net-manager-socket") {
        cmd.arg("--no-overlay");
    }
    Proc(cmd.args(extra).spawn().unwrap())
}

/// The command [`spawn_engine_binary`] runs, to add arguments or environment to.
pub fn spawn_command(cluster_addr: &str, data_dir: &Path, api_port: u16) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("engine.log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-engine"));
    cmd.args(["--cluster-addr", cluster_addr, "--join-token", NODE_TOKEN])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
        .args(["--report-interval-secs", "0.5", "--stop-grace-secs", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd
}

/// Debian's `docker-registry` on a loopback port.
pub struct Registry {
    pub addr: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let proc = serve(
            Command::new("docker-registry").arg("serve").arg(&conf),
            port,
        )
        .await;
        Registry {
            addr: format!("127.0.0.1:{port}"),
            _proc: proc,
            _dir: dir,
        }
    }

    /// Pushes the test image as `repo:tag` with the script.
    pub fn push(&self, reference: &str) {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/busybox-image.sh"))
            .arg("push")
            .arg(images())
            .arg(&self.addr)
            .arg(reference)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "push failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Mosquitto on a loopback port, accepting any client (the stand-in does not check
/// credentials; the real cluster's broker does, see the cluster's tests).
pub struct Broker {
    pub port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub async fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 100000\npersistence false\nuser root\nlog_dest none\n"),
        )
        .unwrap();
        let proc = serve(Command::new("mosquitto").arg("-c").arg(&conf), port).await;
        Broker {
            port,
            _proc: proc,
            _dir: dir,
        }
    }
}

/// What the cluster stand-in received from the worker.
#[derive(Debug, Clone)]
pub enum Heard {
    Job(JobStatus),
    Resources(ResourcesReport),
    Information(serde_json::Value),
}

/// The cluster stand-in: registration endpoint + an MQTT client on the broker.
pub struct Cluster {
    pub addr: String,
    pub registrations: watch::Receiver<u32>,
    client: AsyncClient,
    heard: mpsc::UnboundedReceiver<Heard>,
    /// Every job status so far, in order.
    pub jobs: Vec<JobStatus>,
    /// How many of `jobs` a `status` wait has already used (each report satisfies one wait).
    claimed: Vec<bool>,
    pub last_resources: Option<ResourcesReport>,
    http: tokio::task::JoinHandle<()>,
    mqtt: tokio::task::JoinHandle<()>,
}

impl Cluster {
    pub async fn start(broker: &Broker) -> Cluster {
        Self::start_on(broker, free_port()).await
    }

    /// Serves registration on `port` (a test can pick the port before the cluster exists).
    pub async fn start_on(broker: &Broker, port: u16) -> Cluster {
        let (reg_tx, registrations) = watch::channel(0u32);
        let mqtt_port = broker.port;
        let app = axum::Router::new().route(
            "/api/node/register",
            axum::routing::post(move |body: axum::Json<serde_json::Value>| {
                let reg_tx = reg_tx.clone();
                async move {
                    if body.get("token").and_then(|t| t.as_str()) != Some(NODE_TOKEN) {
                        return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({"message": "token"})));
                    }
                    reg_tx.send_modify(|n| *n += 1);
                    let mut answer = json!({"id": NODE_ID, "MQTT_BROKER_PORT": mqtt_port.to_string(),
                        "mqtt_host": "127.0.0.1", "mqtt_username": NODE_ID, "mqtt_password": "pw"});
                    // A worker on the overlay gets the first worker subnet.
                    if body.get("overlay_address").is_some() {
                        answer["subnet"] = json!("10.18.0.0");
                    }
                    (axum::http::StatusCode::OK, axum::Json(answer))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let http = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut opts =
            MqttOptions::new(format!("cluster-standin-{port}"), "127.0.0.1", broker.port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut events) = AsyncClient::new(opts, 100);
        events.set_network_options(node_engine::uplink::nodelay());
        let (tx, heard) = mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let sub = client.clone();
        let mqtt = tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.subscribe("nodes/+/#", QoS::AtLeastOnce).await.unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let h = if p.topic.ends_with("/job") {
                            serde_json::from_slice(&p.payload).ok().map(Heard::Job)
                        } else if p.topic.ends_with("/jobs/resources") {
                            serde_json::from_slice(&p.payload)
                                .ok()
                                .map(Heard::Resources)
                        } else if p.topic.ends_with("/information") {
                            serde_json::from_slice(&p.payload)
                                .ok()
                                .map(Heard::Information)
                        } else {
                            None
                        };
                        if let Some(h) = h {
                            let _ = tx.send(h);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("stand-in subscribes")
            .unwrap();
        Cluster {
            addr: format!("127.0.0.1:{port}"),
            registrations,
            client,
            heard,
            jobs: Vec::new(),
            claimed: Vec::new(),
            last_resources: None,
            http,
            mqtt,
        }
    }

    pub async fn deploy(&self, msg: &DeployMessage) {
        self.publish_raw(topics::deploy(&node_id()), serde_json::to_vec(msg).unwrap())
            .await;
    }

    pub async fn delete(&self, job: &str, n: u32) {
        let m = DeleteMessage {
            id: String::new(),
            job_name: job.into(),
            virtualization: String::new(),
            instance_number: n,
        };
        self.publish_raw(topics::delete(&node_id()), serde_json::to_vec(&m).unwrap())
            .await;
    }

    pub async fn publish_raw(&self, topic: String, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Collects what arrived until `pred` holds on one message; panics after `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        what: &str,
        mut pred: impl FnMut(&Heard) -> bool,
    ) -> Heard {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let h = match tokio::time::timeout(left, self.heard.recv()).await {
                Ok(Some(h)) => h,
                _ => panic!(
                    "no {what} within {within:?}; job statuses so far: {:#?}",
                    self.jobs
                ),
            };
            match &h {
                Heard::Job(j) => {
                    self.jobs.push(j.clone());
                    self.claimed.push(false);
                }
                Heard::Resources(r) => self.last_resources = Some(r.clone()),
                Heard::Information(_) => {}
            }
            if pred(&h) {
                return h;
            }
        }
    }

    /// Waits for `job`/`n` to be reported with `status` (a report already received and not
    /// used by an earlier wait counts); returns that report.
    pub async fn status(&mut self, job: &str, n: u32, status: &str, within: Duration) -> JobStatus {
        let is = |j: &JobStatus| j.sname == job && j.instance == n && j.status == status;
        if let Some(i) = (0..self.jobs.len()).find(|&i| !self.claimed[i] && is(&self.jobs[i])) {
            self.claimed[i] = true;
            return self.jobs[i].clone();
        }
        let what = format!("{job}/{n} {status}");
        let found = match self
            .until(within, &what, |h| {
                matches!(h, Heard::Job(j) if j.sname == job && j.instance == n && j.status == status)
            })
            .await
        {
            Heard::Job(j) => j,
            _ => unreachable!(),
        };
        if let Some(c) = self.claimed.last_mut() {
            *c = true;
        }
        found
    }

    /// Waits for the worker's `information` report: it is sent after the worker's
    /// subscriptions on the same connection, so deploys published from now on reach it.
    pub async fn wait_worker(&mut self, within: Duration) {
        self.until(within, "worker information", |h| {
            matches!(h, Heard::Information(_))
        })
        .await;
    }

    /// Deletes `job`/`n` and waits for `UNDEPLOYED`.
    pub async fn undeploy(&mut self, job: &str, n: u32) {
        self.delete(job, n).await;
        self.status(job, n, "UNDEPLOYED", SECS_30).await;
    }

    /// Forgets every report received so far.
    pub fn forget(&mut self) {
        self.jobs.clear();
        self.claimed.clear();
    }

    /// Waits for a resource report on `job`/`n` whose log tail contains `text`.
    pub async fn logs_contain(&mut self, job: &str, n: u32, text: &str, within: Duration) {
        self.until(within, &format!("{job}/{n} logs with {text:?}"), |h| {
            matches!(h, Heard::Resources(r) if r.services.iter().any(|s| s.job_name == job && s.instance == n && s.logs.contains(text)))
        })
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.http.abort();
        self.mqtt.abort();
    }
}

pub fn node_id() -> canopy_core::NodeId {
    canopy_core::NodeId::parse(NODE_ID).unwrap()
}

/// A deploy message with Oakestra's keys.
pub fn deploy(job: &str, n: u32, virtualization: &str, image: &str, cmd: &[&str]) -> DeployMessage {
    serde_json::from_value(json!({
        "_id": "svc0001", "job_name": job, "instance_number": n, "image": image,
        "virtualization": virtualization, "cmd": cmd, "environment": ["GREETING=hi"],
        "memory": 64, "vcpus": 1,
    }))
    .unwrap()
}

/// A container instance of the test image that sleeps.
pub fn sleeper(job: &str, n: u32) -> DeployMessage {
    deploy(job, n, "container", &oci_archive(), &["sleep", "600"])
}

/// A containerd namespace of the test's own, purged (containers, images, content, snapshots,
/// leases, the namespace) on drop.
pub struct Namespace(pub String);

impl Namespace {
    pub fn new(test: &str) -> Namespace {
        Namespace(format!("canopy-test-{test}-{}", std::process::id()))
    }

    fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .args(["--address", SOCKET, "-n", &self.0])
            .args(args)
            .output()
            .expect("ctr runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ids(&self, args: &[&str]) -> Vec<String> {
        self.ctr(args)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn containers(&self) -> Vec<String> {
        self.ids(&["containers", "ls", "-q"])
    }

    /// Runs `sleep 600` from the test image as container `id` behind the engine's back, with
    /// `ctr run` (labelled `label` when given). The image must be in the namespace.
    pub fn run_stray(&self, id: &str, label: Option<&str>) {
        self.stray(&["run", "-d"], id, label);
    }

    /// Creates container `id` (no task) from the test image behind the engine's back, in one
    /// containerd call (so nothing can remove it half made).
    pub fn create_stray(&self, id: &str, label: Option<&str>) {
        self.stray(&["containers", "create"], id, label);
    }

    fn stray(&self, how: &[&str], id: &str, label: Option<&str>) {
        let cwd = tempfile::tempdir().unwrap();
        let mut args = vec!["--address", SOCKET, "-n", &self.0];
        args.extend(how);
        if let Some(l) = label {
            args.extend(["--label", l]);
        }
        args.extend(["canopy.test/busybox:1", id, "sleep", "600"]);
        let run = Command::new("ctr")
            .args(&args)
            .current_dir(cwd.path())
            .output()
            .expect("ctr runs");
        assert!(
            run.status.success(),
            "ctr {how:?} {id}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }

    /// Task pid of a container (0 when it has no running task).
    pub fn task_pid(&self, id: &str) -> u32 {
        self.ctr(&["tasks", "ls"])
            .lines()
            .skip(1)
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id) && f.get(2) == Some(&"RUNNING"))
                    .then(|| f[1].parse().unwrap_or(0))
            })
            .unwrap_or(0)
    }

    pub fn snapshots(&self) -> Vec<String> {
        self.ctr(&["snapshots", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    pub fn kill_task(&self, id: &str) {
        self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
    }

    fn purge(&self) {
        for c in self.containers() {
            self.ctr(&["tasks", "kill", "-s", "SIGKILL", &c]);
            std::thread::sleep(Duration::from_millis(100));
            self.ctr(&["tasks", "rm", "-f", &c]);
            self.ctr(&["containers", "rm", &c]);
        }
        for l in self.ids(&["leases", "ls", "-q"]) {
            self.ctr(&["leases", "rm", &l]);
        }
        for i in self.ids(&["images", "ls", "-q"]) {
            self.ctr(&["images", "rm", "--sync", &i]);
        }
        // Snapshots go child first: repeat until none is left.
        for _ in 0..5 {
            let snaps = self.snapshots();
            if snaps.is_empty() {
                break;
            }
            for s in snaps {
                self.ctr(&["snapshots", "rm", &s]);
            }
        }
        for c in self.ids(&["content", "ls", "-q"]) {
            self.ctr(&["content", "rm", &c]);
        }
        let _ = Command::new("ctr")
            .args(["--address", SOCKET, "namespaces", "rm", &self.0])
            .output();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.purge();
    }
}

/// An engine in this process.
pub struct Engine {
    pub api: String,
    pub link: watch::Receiver<LinkState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Engine {
    pub fn config(cluster_addr: &str, data_dir: &Path, ns: &Namespace) -> Config {
        Config::for_test(cluster_addr, NODE_TOKEN, data_dir.to_owned(), &ns.0)
    }

    pub async fn start(config: Config) -> Engine {
        let node = Node::start(&config).await.expect("engine starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let (link_tx, link) = watch::channel(LinkState::Offline);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            node.serve(listener, Some(link_tx), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Engine {
            api,
            link,
            stop: Some(stop),
            task,
        }
    }

    pub async fn wait_connected(&mut self, within: Duration) {
        tokio::time::timeout(
            within,
            self.link.wait_for(|l| matches!(l, LinkState::Connected(_))),
        )
        .await
        .expect("engine connects to the cluster")
        .unwrap();
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, String) {
        let r = reqwest::get(format!("{}{path}", self.api)).await.unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Instance `n` of `job`'s whole log, through the local API.
    pub async fn logs(&self, job: &str, n: u32) -> String {
        self.get(&format!("/instances/{job}.instance.{n}/logs"))
            .await
            .1
    }
}

pub const SECS_30: Duration = Duration::from_secs(30);
pub const SECS_60: Duration = Duration::from_secs(60);
