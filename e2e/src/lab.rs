//! A multi-host lab for the overlay: every worker is a network namespace with its own net
//! manager and node engine, joined to the others by a LAN (a bridge in a namespace of its
//! own, `172.31.77.0/24`: the workers are `.N`); the root and the clusters run in the LAN's
//! namespace on `.254`. The test reaches the root's API through a forwarder on this host's
//! loopback whose far ends are sockets made inside the LAN's namespace, so the host gets no
//! route or address of the lab. Names of namespaces, links, nftables tables and containerd
//! namespaces carry the lab's prefix; the lab removes them all on drop, and
//! [`Lab::leftovers`] says whether anything is left.
//!
//! Traffic stays inside: every lab address exists only in the lab's namespaces.

use crate::{ADMIN_PASSWORD, bin_dir, ctr, free_port, signal};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The control plane's address on the lab LAN (where root and clusters listen).
pub const HOST: Ipv4Addr = Ipv4Addr::new(172, 31, 77, 254);

/// A TCP connection to `addr` made inside the network namespace at `netns` (the socket stays
/// there; only this process's thread that made it entered the namespace).
fn connect_in(netns: &Path, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns)?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::other)?;
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .join()
    .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}

/// Serves `127.0.0.1:<port>` on this host, each connection joined to `target` inside
/// `netns`; returns the port.
async fn forward(netns: PathBuf, target: std::net::SocketAddr) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let netns = netns.clone();
            tokio::spawn(async move {
                let Ok(Ok(far)) =
                    tokio::task::spawn_blocking(move || connect_in(&netns, target)).await
                else {
                    return;
                };
                if far.set_nonblocking(true).is_err() {
                    return;
                }
                if let Ok(mut far) = tokio::net::TcpStream::from_std(far) {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut far).await;
                }
            });
        }
    });
    port
}

/// The prefix of everything one lab makes: short (link names have 15 characters).
pub fn prefix() -> String {
    format!("cnet{}", std::process::id() % 100_000)
}

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("the command runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One cluster orchestrator of the lab.
pub struct LabCluster {
    pub name: String,
    /// Its API (registration) on the lab LAN.
    pub api: String,
    child: Child,
    pub dir: PathBuf,
}

/// One worker: its namespace, LAN address, and the daemons in it (started with `nsenter
/// --net`, not `ip netns exec`: the instance namespaces the net manager pins must be visible
/// in this host's mount namespace, where containerd opens them).
pub struct LabWorker {
    pub name: String,
    pub netns: String,
    pub lan: Ipv4Addr,
    pub cluster: usize,
    pub dir: PathBuf,
    pub containerd_namespace: String,
    net_manager: Option<Child>,
    engine: Option<Child>,
}

impl LabWorker {
    /// Where the engine writes the log of instance `<job>.instance.<n>`.
    pub fn log_path(&self, instance: &str) -> PathBuf {
        self.dir.join("engine/logs").join(format!("{instance}.log"))
    }

    pub fn log(&self, instance: &str) -> String {
        std::fs::read_to_string(self.log_path(instance)).unwrap_or_default()
    }

    /// Kills both daemons of the worker at once (SIGKILL), as a lost machine would stop.
    pub fn kill(&mut self) {
        for c in [self.engine.take(), self.net_manager.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Lab {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    pub api: String,
    root: Option<Child>,
    grpc: u16,
    pub clusters: Vec<LabCluster>,
    pub workers: Vec<LabWorker>,
    http: reqwest::Client,
    token: String,
}

impl Lab {
    /// The LAN, the root, `clusters` clusters, and workers: `workers[i]` is the cluster index
    /// worker `w{i+1}` joins. `engine_args[i]` are extra node-engine arguments of that worker.
    pub async fn start(clusters: usize, workers: &[usize], engine_args: &[&[&str]]) -> Lab {
        let p = prefix();
        let dir = tempfile::Builder::new()
            .prefix("canopy-lab-")
            .tempdir()
            .expect("a temp dir");
        // The LAN: a bridge in its own namespace, holding the control plane's address.
        let lan = format!("{p}-lan");
        let _ = run(Command::new("ip").args(["netns", "del", &lan]));
        must(&["ip", "netns", "add", &lan]);
        must(&["ip", "-n", &lan, "link", "set", "lo", "up"]);
        must(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
        must(&[
            "ip",
            "-n",
            &lan,
            "addr",
            "add",
            &format!("{HOST}/24"),
            "dev",
            "br0",
        ]);
        must(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
        let lan_path = PathBuf::from(format!("/run/netns/{lan}"));

        let bins = bin_dir();
        let logs = dir.path().to_owned();
        let log = |name: &str| {
            let f = std::fs::File::create(logs.join(format!("{name}.log"))).expect("a log");
            (f.try_clone().expect("a log"), f)
        };
        let (api_port, grpc, metrics) = (free_port(), free_port(), free_port());
        let (o, e) = log("root");
        let root = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{lan}"))
            .arg(bins.join("root-orchestrator"))
            .arg(format!("--api-addr={HOST}:{api_port}"))
            .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
            .arg(format!("--data-dir={}", dir.path().join("root").display()))
            .env("CANOPY_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("CANOPY_CLUSTER_TOKEN", "lab-cluster-token")
            .stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .spawn()
            .expect("the root starts");
        let local = forward(lan_path, std::net::SocketAddr::from((HOST, api_port))).await;
        let mut lab = Lab {
            prefix: p.clone(),
            api: format!("http://127.0.0.1:{local}"),
            root: Some(root),
            grpc,
            clusters: Vec::new(),
            workers: Vec::new(),
            http: reqwest::Client::new(),
            token: String::new(),
            dir,
        };
        lab.token = lab.login().await;
        for c in 0..clusters {
            let name = format!("c{}", c + 1);
            let (api, mqtt) = (free_port(), free_port());
            let cdir = lab.dir.path().join(&name);
            let (o, e) = log(&name);
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{lan}"))
                .arg(bins.join("cluster-orchestrator"))
                .arg(format!("--root-addr=127.0.0.1:{}", lab.grpc))
                .arg(format!("--name={name}"))
                .arg(format!("--api-addr={HOST}:{api}"))
                .arg(format!("--mqtt-addr={HOST}:{mqtt}"))
                .arg(format!("--data-dir={}", cdir.display()))
                .env("CANOPY_CLUSTER_TOKEN", "lab-cluster-token")
                .env("CANOPY_NODE_TOKEN", "lab-node-token")
                .stdin(Stdio::null())
                .stdout(o)
                .stderr(e)
                .spawn()
                .expect("a cluster starts");
            lab.clusters.push(LabCluster {
                name,
                api: format!("{HOST}:{api}"),
                child,
                dir: cdir,
            });
        }
        for (i, &cluster) in workers.iter().enumerate() {
            let n = i + 1;
            let name = format!("w{n}");
            let netns = format!("{p}-{name}");
            let lan_ip = Ipv4Addr::new(172, 31, 77, n as u8);
            let _ = run(Command::new("ip").args(["netns", "del", &netns]));
            must(&["ip", "netns", "add", &netns]);
            must(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
            let (nic, far) = (format!("{p}n{n}"), format!("{p}l{n}"));
            must(&[
                "ip", "-n", &lan, "link", "add", &far, "type", "veth", "peer", "name", &nic,
                "netns", &netns,
            ]);
            must(&["ip", "-n", &lan, "link", "set", &far, "master", "br0", "up"]);
            must(&[
                "ip",
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{lan_ip}/24"),
                "dev",
                &nic,
            ]);
            must(&["ip", "-n", &netns, "link", "set", &nic, "up"]);
            let wdir = lab.dir.path().join(&name);
            let socket = wdir.join("net.sock");
            let (o, e) = log(&format!("{name}-net"));
            let net_manager = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg(bins.join("net-manager"))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--data-dir={}", wdir.join("net").display()))
                .arg(format!("--bridge={p}b{n}"))
                .arg(format!("--tunnel={p}x{n}"))
                .arg(format!("--nft-table={p}_w{n}"))
                .arg(format!("--netns-dir={}", wdir.join("netns").display()))
                .arg("--probe-interval-secs=1")
                .arg("--remove-on-exit")
                .stdin(Stdio::null())
                .stdout(o)
                .stderr(e)
                .spawn()
                .expect("a net manager starts");
            let containerd_namespace = format!("canopy-{p}-{name}");
            let (o, e) = log(&format!("{name}-engine"));
            let engine = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg(bins.join("node-engine"))
                .arg(format!("--cluster-addr={}", lab.clusters[cluster].api))
                .arg(format!("--name={name}"))
                .arg(format!("--data-dir={}", wdir.join("engine").display()))
                .arg("--api-addr=127.0.0.1:10110")
                .arg(format!("--containerd-namespace={containerd_namespace}"))
                .arg("--runtimes=container")
                .arg(format!("--net-manager-socket={}", socket.display()))
                .arg("--report-interval-secs=0.5")
                .arg("--remove-on-exit")
                .args(engine_args.get(i).copied().unwrap_or_default())
                .env("CANOPY_NODE_TOKEN", "lab-node-token")
                .stdin(Stdio::null())
                .stdout(o)
                .stderr(e)
                .spawn()
                .expect("a node engine starts");
            lab.workers.push(LabWorker {
                name,
                netns,
                lan: lan_ip,
                cluster,
                dir: wdir,
                containerd_namespace,
                net_manager: Some(net_manager),
                engine: Some(engine),
            });
        }
        lab.wait_nodes(workers.len()).await;
        lab
    }

    async fn login(&self) -> String {
        let start = Instant::now();
        loop {
            let r = self
                .http
                .post(format!("{}/api/auth/login", self.api))
                .json(&json!({"username": "Admin", "password": ADMIN_PASSWORD}))
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(v) = r.json::<Value>().await
                && let Some(t) = v["token"].as_str()
            {
                return t.to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the root did not come up:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every daemon's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries {
            if p.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("--- {} ---\n", p.display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// A REST call with the Admin's token.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        crate::api_call(&self.http, &self.api, &self.token, method, path, body).await
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call("GET", path, None).await;
        assert!(status.is_success(), "GET {path}: {status} {v}");
        v
    }

    /// Waits until the root lists `n` active workers.
    pub async fn wait_nodes(&self, n: usize) {
        let start = Instant::now();
        loop {
            let nodes = self.get("/api/nodes").await;
            let active = nodes
                .as_array()
                .map_or(0, |l| l.iter().filter(|n| n["active"] == true).count());
            if active >= n {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "only {active} of {n} workers came up: {nodes}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Posts an SLA; returns the service ids of its first application.
    pub async fn create(&self, sla: &Value) -> Vec<String> {
        let (status, apps) = self.call("POST", "/api/application", Some(sla)).await;
        crate::created_services(sla, status, &apps)
    }

    /// Adds one instance to service `id`.
    pub async fn scale_up(&self, id: &str) {
        let (status, v) = self
            .call("POST", &format!("/api/service/{id}/instance"), None)
            .await;
        assert!(status.is_success(), "scale up {id}: {status} {v}");
    }

    /// The instances of service `id` as the root lists them.
    pub async fn instances(&self, id: &str) -> Vec<Value> {
        let s = self.get(&format!("/api/service/{id}")).await;
        s["instance_list"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `n` instances of `id` are RUNNING; returns them.
    pub async fn wait_running(&self, id: &str, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let list = self.instances(id).await;
            let running: Vec<Value> = list
                .iter()
                .filter(|i| i["status"] == "RUNNING")
                .cloned()
                .collect();
            if running.len() >= n {
                return running;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{id}: {} of {n} instances RUNNING: {list:?}\n{}",
                running.len(),
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The worker (by name `wN`) an instance listed by the root runs on.
    pub async fn worker_of(&self, instance: &Value) -> String {
        let node = instance["worker_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let nodes = self.get("/api/nodes").await;
        nodes
            .as_array()
            .and_then(|l| l.iter().find(|n| n["node_id"] == node.as_str()))
            .and_then(|n| n["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    }

    /// Cuts worker `name` off the LAN: its end of the link on the LAN bridge goes down, so
    /// every packet to and from it is dropped and nothing is closed (no FIN, no RST), as when
    /// a machine loses its network or power.
    pub fn cut(&self, name: &str) {
        self.set_link(name, "down");
    }

    /// Undoes [`Lab::cut`].
    pub fn mend(&self, name: &str) {
        self.set_link(name, "up");
    }

    fn set_link(&self, name: &str, state: &str) {
        let n = name.trim_start_matches('w');
        let (lan, far) = (
            format!("{}-lan", self.prefix),
            format!("{}l{n}", self.prefix),
        );
        must(&["ip", "-n", &lan, "link", "set", &far, state]);
    }

    pub fn worker(&self, name: &str) -> &LabWorker {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .expect("a lab worker")
    }

    pub fn worker_mut(&mut self, name: &str) -> &mut LabWorker {
        self.workers
            .iter_mut()
            .find(|w| w.name == name)
            .expect("a lab worker")
    }

    /// Everything with the lab's prefix still on this machine: namespaces, host links,
    /// containerd containers.
    pub fn leftovers(prefix: &str) -> Vec<String> {
        let mut left = Vec::new();
        let out = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for l in out(&["ip", "netns", "list"]).lines() {
            if l.starts_with(prefix) {
                left.push(format!("netns {l}"));
            }
        }
        for l in out(&["ip", "-o", "link", "show"]).lines() {
            if l.contains(prefix) {
                left.push(format!("link {l}"));
            }
        }
        if out(&["nft", "list", "tables"]).contains(prefix) {
            left.push("an nftables table".into());
        }
        for ns in out(&["ctr", "namespaces", "ls", "-q"]).lines() {
            if ns.contains(prefix) && !ctr::containers(ns).is_empty() {
                left.push(format!("containers in {ns}"));
            }
        }
        left
    }

    /// Stops everything in order (workers first, with their clean-up), then removes the
    /// lab's namespaces and links.
    pub fn stop(&mut self) {
        for w in &mut self.workers {
            for c in [w.engine.take(), w.net_manager.take()]
                .into_iter()
                .flatten()
            {
                let mut c = c;
                signal(c.id(), nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            ctr::purge(&w.containerd_namespace);
            // Instance namespaces a killed net manager could not remove.
            if let Ok(entries) = std::fs::read_dir(w.dir.join("netns")) {
                for e in entries.flatten() {
                    let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
            let _ = run(Command::new("ip").args(["netns", "del", &w.netns]));
        }
        for c in &mut self.clusters {
            signal(c.child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = c.child.wait();
        }
        if let Some(mut r) = self.root.take() {
            signal(r.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = r.wait();
        }
        let _ = run(Command::new("ip").args(["netns", "del", &format!("{}-lan", self.prefix)]));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The demo image's path as the SLA's `code`.
pub fn code(image: &Path) -> String {
    format!("oci-archive:{}", image.display())
}
