//! The end-to-end harness: a whole Canopy started with the real `canopy up` (root, cluster and
//! node engines as separate processes) on loopback, against the machine's containerd, and
//! driven through the real REST API and the real `canopy` CLI.
//!
//! - [`Stack`]: one `canopy up` in a temporary directory with its own ports, containerd
//!   namespaces (`canopy-e2e-<id>-workerN`) and CLI config; REST helpers; stopped and purged on
//!   drop.
//! - [`ctr`]: what containerd holds in a namespace, through the `ctr` tool.
//! - [`demo_image`]: the busybox image the quickstart uses, built once per run.
//! - [`spans`]: the submit path's span marks read back from the daemons' logs.
//! - [`unikernel`]: tiny kernels for `virtualization: unikernel`, served over HTTP on
//!   loopback, and the QEMU pids a worker records.
//!
//! The daemons are found next to the test executable's directory (`target/<profile>/`): build
//! them first (`cargo build --workspace --bins`; `scripts/test.sh` does).

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub mod lab;
pub mod spans;
pub mod unikernel;

pub const ADMIN_PASSWORD: &str = "e2e-admin-pw";

/// `target/<profile>/`, where cargo puts every workspace binary.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for b in [
        "canopy",
        "root-orchestrator",
        "cluster-orchestrator",
        "net-manager",
        "node-engine",
    ] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            dir.join(b).display()
        );
    }
    dir
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// A block of 20 free loopback ports, below Linux's ephemeral range (32768–60999): a port in
/// that range can be handed to some other socket bound to port 0 between this check and the
/// daemon's bind (seen in CI: the unikernel test's file server took the cluster's MQTT port).
fn port_block() -> u16 {
    const LOW: u16 = 10_000;
    const SPAN: u16 = 22_600; // blocks end by 32,600
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() % 1_130) as u16 * 20;
    loop {
        let step = NEXT.fetch_add(20, Ordering::Relaxed) % SPAN;
        let base = LOW + (seed + step) % SPAN;
        let free = (base..base + 20).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

/// A free loopback port (for a workload on the host network).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The demo image (`busybox` with `httpd` and `/www/index.html`) as an OCI archive, built once
/// with `scripts/busybox-image.sh`. Returns the archive's path.
pub fn demo_image(work: &Path) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = work.join("e2e-demo-image");
    let archive = dir.join("oci.tar");
    if !archive.exists() {
        let status = Command::new("bash")
            .arg(repo().join("scripts/busybox-image.sh"))
            .arg("build")
            .arg(&dir)
            .arg("canopy-e2e/httpd:1")
            .stdout(Stdio::null())
            .status()
            .expect("bash");
        assert!(status.success(), "building the demo image failed");
    }
    archive
}

/// A REST call to the root at `api` with bearer `token`: status and JSON answer.
pub async fn api_call(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut req = http
        .request(method, format!("{api}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.expect("the API answers");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The service ids of `sla`'s first application in the answer to `POST /api/application`.
pub fn created_services(sla: &Value, status: StatusCode, apps: &Value) -> Vec<String> {
    assert!(
        status.is_success(),
        "POST /api/application: {status} {apps}"
    );
    let name = sla["applications"][0]["application_name"].clone();
    let app = apps
        .as_array()
        .and_then(|l| l.iter().find(|a| a["application_name"] == name).cloned())
        .expect("the new application is listed");
    app["microservices"]
        .as_array()
        .expect("service ids")
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// One SLA with one application `app` holding the given microservices.
pub fn sla(app: &str, services: Vec<Value>) -> Value {
    json!({
        "sla_version": "v2.0",
        "customerID": "Admin",
        "applications": [{
            "application_name": app,
            "application_namespace": "e2e",
            "application_desc": "end-to-end test",
            "microservices": services,
        }]
    })
}

/// A container microservice running `cmd` from the demo image (32 MB, no vcpu reservation).
pub fn container(name: &str, image: &Path, cmd: &[&str]) -> Value {
    json!({
        "microservice_name": name,
        "microservice_namespace": "e2e",
        "virtualization": "container",
        "code": format!("oci-archive:{}", image.display()),
        "cmd": cmd,
        "memory": 32,
        // No CPU reservation: several instances share a 2-core test machine.
        "vcpus": 0,
    })
}

/// The output of one `canopy` run.
#[derive(Debug)]
pub struct CliOut {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// One `canopy up` and what it started.
pub struct Stack {
    pub dir: tempfile::TempDir,
    up: Option<Child>,
    /// Everything `canopy up` printed so far.
    pub up_output: std::sync::Arc<std::sync::Mutex<String>>,
    pub api: String,
    pub namespace_prefix: String,
    pub workers: u32,
    http: reqwest::Client,
    token: String,
    /// Processes the test started itself (a restarted root), stopped on drop.
    pub extra: Vec<Child>,
}

impl Stack {
    /// Runs `canopy up --workers N` and waits until it says it is up.
    pub async fn up(workers: u32) -> Stack {
        Self::up_with(workers, &[]).await
    }

    /// `canopy up --workers N --no-overlay ARGS`: containers on the host's network (the
    /// suite's stacks run side by side; overlay stacks would share this host's worker
    /// subnets).
    pub async fn up_with(workers: u32, extra_args: &[&str]) -> Stack {
        Self::up_with_env(workers, extra_args, &[]).await
    }

    /// [`Stack::up_with`] with `canopy up` (and so every daemon) given these environment
    /// variables, e.g. a `PATH` without QEMU.
    pub async fn up_with_env(workers: u32, extra_args: &[&str], env: &[(&str, &str)]) -> Stack {
        let mut args = vec!["--no-overlay"];
        args.extend_from_slice(extra_args);
        Self::start(workers, &args, env).await
    }

    /// `canopy up --workers N ARGS` with its overlay (one such stack at a time per machine).
    pub async fn up_overlay(workers: u32, extra_args: &[&str]) -> Stack {
        Self::start(workers, extra_args, &[]).await
    }

    /// [`Stack::up_overlay`] with these environment variables for every daemon.
    pub async fn up_overlay_with_env(
        workers: u32,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Stack {
        Self::start(workers, extra_args, env).await
    }

    async fn start(workers: u32, extra_args: &[&str], env: &[(&str, &str)]) -> Stack {
        let bins = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("canopy-e2e-")
            .tempdir()
            .expect("a temp dir");
        let id = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
            .trim_start_matches("canopy-e2e-")
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        let namespace_prefix = format!("canopy-e2e-{id}");
        let base = port_block();
        let mut cmd = Command::new(bins.join("canopy"));
        cmd.arg("up")
            .arg(format!("--workers={workers}"))
            .arg(format!("--data-dir={}", dir.path().join("up").display()))
            .arg(format!("--port-base={base}"))
            .arg(format!("--containerd-namespace={namespace_prefix}"))
            .args(extra_args)
            .env("CANOPY_CONFIG", dir.path().join("cli.json"))
            .env("CANOPY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("CANOPY_API")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("canopy up starts");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<bool>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            let tx = ready_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.starts_with("Canopy is up") {
                        let _ = tx.send(true);
                    }
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
                let _ = tx.send(false);
            });
        }
        drop(ready_tx);
        let mut stack = Stack {
            dir,
            up: Some(child),
            up_output: output,
            api: format!("http://127.0.0.1:{base}"),
            namespace_prefix,
            workers,
            http: reqwest::Client::new(),
            token: String::new(),
            extra: Vec::new(),
        };
        let ready = tokio::task::spawn_blocking(move || {
            ready_rx
                .recv_timeout(Duration::from_secs(180))
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        assert!(
            ready,
            "canopy up did not come up:\n{}\n{}",
            stack.output(),
            stack.daemon_logs()
        );
        stack.token = stack.login().await;
        stack
    }

    pub fn output(&self) -> String {
        self.up_output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last lines of every daemon's log, for failure messages.
    pub fn daemon_logs(&self) -> String {
        let mut out = String::new();
        let logs = self.dir.path().join("up/logs");
        for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", entry.path().display()));
            for l in &lines[lines.len().saturating_sub(30)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// `<data-dir>/up.json`.
    pub fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.path().join("up/up.json")).expect("up.json");
        serde_json::from_str(&text).expect("up.json is JSON")
    }

    /// The `up.json` entry of component `name` (`root`, `cluster`, `worker1`, ...).
    pub fn component(&self, name: &str) -> Value {
        self.state()["components"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no component {name} in up.json"))
    }

    pub fn namespace(&self, worker: u32) -> String {
        format!("{}-worker{worker}", self.namespace_prefix)
    }

    async fn login(&self) -> String {
        let r = self
            .http
            .post(format!("{}/api/auth/login", self.api))
            .json(&json!({"username": "Admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("login request");
        let v: Value = r.json().await.expect("login answer");
        v["token"].as_str().expect("a token").to_owned()
    }

    /// Runs `canopy ARGS` with this stack's CLI config.
    /// `canopy ARGS`, logged in as this stack's Admin (its own config file), no stdin.
    fn cli_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin_dir().join("canopy"));
        cmd.args(args)
            .env("CANOPY_CONFIG", self.dir.path().join("cli.json"))
            .env_remove("CANOPY_API")
            .stdin(Stdio::null());
        cmd
    }

    pub async fn cli(&self, args: &[&str]) -> CliOut {
        let out = self.cli_command(args).output().await.expect("canopy runs");
        CliOut {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `canopy ARGS`, which must succeed.
    /// Starts `canopy ARGS` (logged in like [`Stack::cli`]) with its stdout piped, for
    /// commands that run until stopped (`canopy events`); killed on drop.
    pub fn cli_spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.cli_command(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("canopy runs")
    }

    pub async fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args).await;
        assert!(
            out.ok,
            "canopy {args:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    /// A REST call with the Admin's token: status and JSON answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        api_call(&self.http, &self.api, &self.token, method, path, body).await
    }

    /// `--port-base`: the root's API port, the first of the block `canopy up` lays out.
    fn port_base(&self) -> u16 {
        self.api
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the API has a port")
    }

    /// The cluster's API, HOST:PORT (`--port-base` + 3): node registration, the installer.
    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port_base() + 3)
    }

    /// The cluster's embedded MQTT broker's port on loopback (`--port-base` + 4).
    pub fn mqtt_port(&self) -> u16 {
        self.port_base() + 4
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None).await;
        assert!(status.is_success(), "GET {path}: {status} {v}");
        v
    }

    /// GET `path`'s body as it arrived, not parsed (to time the API, not the client's JSON).
    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let r = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the API answers");
        let status = r.status();
        assert!(status.is_success(), "GET {path}: {status}");
        // Into one buffer of the announced size, as it arrives (not gathered, then copied).
        let mut r = r;
        let mut body = Vec::with_capacity(r.content_length().unwrap_or(0) as usize);
        while let Some(chunk) = r.chunk().await.expect("a body") {
            body.extend_from_slice(&chunk);
        }
        body
    }

    /// Posts an SLA (no instance yet); returns the ids of its first application's services.
    pub async fn create(&self, sla: &Value) -> Vec<String> {
        let (status, apps) = self.call("POST", "/api/application", Some(sla)).await;
        created_services(sla, status, &apps)
    }

    /// Posts an SLA and one instance of each of its services; returns the service ids.
    pub async fn deploy(&self, sla: &Value) -> Vec<String> {
        let ids = self.create(sla).await;
        for id in &ids {
            let (status, v) = self
                .call("POST", &format!("/api/service/{id}/instance"), None)
                .await;
            assert!(status.is_success(), "scale up {id}: {status} {v}");
        }
        ids
    }

    /// The number N of `workerN`, the worker with node id `node` (from `GET /api/nodes`).
    pub async fn worker_of(&self, node: &str) -> u32 {
        let nodes = self.get("/api/nodes").await;
        nodes
            .as_array()
            .and_then(|l| l.iter().find(|n| n["node_id"] == node))
            .and_then(|n| n["name"].as_str())
            .and_then(|name| name.trim_start_matches("worker").parse().ok())
            .unwrap_or_else(|| panic!("no worker with node id {node} in {nodes}"))
    }

    /// Starts component `name` again by hand with its command line from `up.json` (after the
    /// test killed it), output appended to its log; the process is kept in `extra`. Returns
    /// its pid.
    pub fn restart(&mut self, name: &str, env: &[(&str, &str)]) -> u32 {
        let comp = self.component(name);
        let cmd: Vec<String> = comp["command"]
            .as_array()
            .expect("a command")
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(comp["log"].as_str().unwrap_or_default())
            .expect("its log");
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .envs(env.iter().copied())
            .stdout(log.try_clone().expect("a log handle"))
            .stderr(log)
            .spawn()
            .expect("it starts");
        let pid = child.id();
        self.extra.push(child);
        pid
    }

    /// Kills the root with SIGKILL, starts it again ([`Stack::restart`]) and waits until its
    /// API answers.
    pub async fn kill9_and_restart_root(&mut self) {
        let root = self.component("root");
        signal(
            root["pid"].as_u64().expect("the root's pid") as u32,
            nix::sys::signal::Signal::SIGKILL,
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.restart("root", &[]);
        for _ in 0..100 {
            if reqwest::get(format!("{}/health", self.api)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the restarted root does not answer on {}", self.api);
    }

    /// The cluster's node join token (for restarting a worker by hand).
    pub fn node_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up/cluster/node-token"))
            .expect("the node token")
            .trim()
            .to_owned()
    }

    pub async fn instances(&self, service: &str) -> Vec<Value> {
        self.get(&format!("/api/service/{service}")).await["instance_list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls the service until `done` holds for its instance list; panics with the last list
    /// and the daemons' logs after `timeout`.
    pub async fn wait_instances(
        &self,
        service: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let list = self.instances(service).await;
            if done(&list) {
                return list;
            }
            if start.elapsed() > timeout {
                panic!(
                    "{what}: not reached after {timeout:?}; instances: {}\n{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default(),
                    self.daemon_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the service has exactly `n` instances, all with `status`.
    pub async fn wait_all(&self, service: &str, n: usize, status: &str) -> Vec<Value> {
        self.wait_instances(
            service,
            &format!("{n} instance(s) {status}"),
            Duration::from_secs(90),
            |l| l.len() == n && l.iter().all(|i| i["status"] == status),
        )
        .await
    }

    /// A gauge from the root's `/metrics`.
    pub async fn root_metric(&self, name: &str) -> f64 {
        let url = self.state()["root_metrics"]
            .as_str()
            .expect("root_metrics")
            .to_owned();
        let text = self
            .http
            .get(url)
            .send()
            .await
            .expect("root metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Sends SIGTERM to `canopy up` (what Ctrl-C does) and waits for it; returns whether it
    /// exited successfully.
    pub async fn stop(&mut self) -> bool {
        let Some(mut child) = self.up.take() else {
            return false;
        };
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        tokio::task::spawn_blocking(move || child.wait().map(|s| s.success()).unwrap_or(false))
            .await
            .unwrap_or(false)
    }
}

/// Sends `sig` to a process this test started (directly or through `canopy up`).
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut child) = self.up.take() {
            signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
        for mut c in self.extra.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for w in 1..=self.workers {
            ctr::purge(&self.namespace(w));
        }
    }
}

/// What containerd holds, through `ctr` (the tool an operator would use to check).
pub mod ctr {
    use std::process::Command;

    fn run(ns: &str, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("-n")
            .arg(ns)
            .args(args)
            .output()
            .expect("ctr runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn names(ns: &str, args: &[&str]) -> Vec<String> {
        run(ns, args)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn containers(ns: &str) -> Vec<String> {
        names(ns, &["containers", "ls", "-q"])
    }

    /// Snapshot keys (the image's committed layers included).
    pub fn snapshots(ns: &str) -> Vec<String> {
        run(ns, &["snapshots", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// `(container id, pid)` of every task.
    pub fn tasks(ns: &str) -> Vec<(String, u32)> {
        run(ns, &["tasks", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let id = f.next()?.to_owned();
                let pid = f.next()?.parse().ok()?;
                Some((id, pid))
            })
            .collect()
    }

    /// Wall time (ms) of `runs` bare `ctr run -d --net-host IMAGE ... sleep 600`, each removed
    /// after: the baseline the engines' start latency is compared with.
    pub fn run_baseline(ns: &str, image: &str, runs: u32) -> Vec<f64> {
        let mut out = Vec::new();
        for i in 0..runs {
            let id = format!("bench-ctr-{i}");
            let t = std::time::Instant::now();
            let r = Command::new("ctr")
                .args([
                    "-n",
                    ns,
                    "run",
                    "-d",
                    "--net-host",
                    image,
                    &id,
                    "sleep",
                    "600",
                ])
                .output()
                .expect("ctr runs");
            out.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(
                r.status.success(),
                "ctr run: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let _ = run(ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
            for _ in 0..100 {
                let gone = Command::new("ctr")
                    .args(["-n", ns, "tasks", "rm", &id])
                    .status()
                    .is_ok_and(|s| s.success());
                if gone {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = run(ns, &["containers", "rm", &id]);
        }
        out
    }

    /// Removes everything in the namespace and the namespace itself.
    pub fn purge(ns: &str) {
        for (id, _) in tasks(ns) {
            let _ = run(ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = run(ns, &["tasks", "delete", "-f", &id]);
        }
        for c in containers(ns) {
            let _ = run(ns, &["containers", "delete", &c]);
        }
        for i in names(ns, &["images", "ls", "-q"]) {
            let _ = run(ns, &["images", "rm", &i]);
        }
        // Children before parents: retry while any go.
        for _ in 0..10 {
            let snaps = snapshots(ns);
            if snaps.is_empty() {
                break;
            }
            for s in snaps {
                let _ = run(ns, &["snapshots", "rm", &s]);
            }
        }
        for c in names(ns, &["content", "ls", "-q"]) {
            let _ = run(ns, &["content", "rm", &c]);
        }
        for l in names(ns, &["leases", "ls", "-q"]) {
            let _ = run(ns, &["leases", "rm", &l]);
        }
        let _ = Command::new("ctr")
            .args(["namespaces", "remove", ns])
            .output();
    }
}

/// Percentiles of a set of measurements.
pub mod stats {
    #[derive(Debug, Clone, Copy)]
    pub struct Summary {
        pub p50: f64,
        pub p90: f64,
        pub p99: f64,
        pub min: f64,
        pub max: f64,
    }

    /// Nearest-rank percentile of sorted values.
    pub fn percentile(sorted: &[f64], p: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)]
    }

    pub fn summarize(mut v: Vec<f64>) -> Summary {
        v.sort_by(f64::total_cmp);
        Summary {
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    impl Summary {
        pub fn json(&self) -> serde_json::Value {
            serde_json::json!({"p50": self.p50, "p90": self.p90, "p99": self.p99, "max": self.max})
        }
    }
}
