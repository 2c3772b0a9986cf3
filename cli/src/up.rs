//! `canopy up`: a whole Canopy on this machine. It starts the real daemons as child processes
//! (each in its own process group, so a terminal's Ctrl-C reaches only `canopy up`):
//!
//! 1. `root-orchestrator` (embedded store) — waits for `/health`, reads `cluster-token`;
//! 2. `cluster-orchestrator` (embedded store and MQTT broker) — waits for `/health`, reads
//!    `node-token`;
//! 3. N × `node-engine` (`--remove-on-exit`, namespace `<prefix>-workerI`, API port of its own);
//!
//! then logs in as `Admin`, waits until the root sees the cluster with N active workers, saves
//! the login for the CLI and prints what to do next. `<data-dir>/up.json` lists every child
//! (pid, command line, log file). On SIGINT/SIGTERM the engines stop first (removing their
//! instances), then the cluster, then the root. A child that dies is reported, not restarted.

use crate::client::Client;
use anyhow::{Context, Result, anyhow, bail};
use canopy_api::ClusterInfo;
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Args)]
pub struct UpArgs {
    /// Node engines to start.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Where the daemons keep their state and logs (one directory each).
    #[arg(long, env = "CANOPY_UP_DIR", default_value = "/var/lib/canopy/up")]
    pub data_dir: PathBuf,
    /// Address every listener binds (the API, the cluster link, the broker, ...).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// First of a block of ports: API, cluster link, root metrics, cluster API, MQTT, then one
    /// per worker from +10. Default: Oakestra's ports (10000, 50052, 10009, 10100, 10003,
    /// 10110...).
    #[arg(long)]
    pub port_base: Option<u16>,
    /// containerd namespaces are `<this>-worker<N>`; must start with `canopy`.
    #[arg(long, default_value = "canopy")]
    pub containerd_namespace: String,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// What the workers offer.
    #[arg(long, default_value = "container,wasm")]
    pub runtimes: String,
    /// Where the daemon binaries are; default: next to `canopy`, else on PATH.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Log filter for the daemons.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Benchmark mode: also start this many virtual workers (one `node-engine
    /// --bench-virtual-workers` process) that speak the real protocol but run nothing.
    #[arg(long, default_value_t = 0)]
    pub virtual_workers: u32,
    /// Extra arguments for every node engine (e.g. `--insecure-registry=HOST:PORT`).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// Extra arguments for the cluster orchestrator.
    #[arg(long = "cluster-arg", allow_hyphen_values = true)]
    pub cluster_args: Vec<String>,
    /// Extra arguments for the root orchestrator.
    #[arg(long = "root-arg", allow_hyphen_values = true)]
    pub root_args: Vec<String>,
}

/// The ports of one `canopy up`.
struct Ports {
    api: u16,
    grpc: u16,
    root_metrics: u16,
    cluster_api: u16,
    mqtt: u16,
    first_node: u16,
}

impl Ports {
    fn new(base: Option<u16>) -> Result<Ports> {
        Ok(match base {
            None => Ports {
                api: 10000,
                grpc: 50052,
                root_metrics: 10009,
                cluster_api: 10100,
                mqtt: 10003,
                first_node: 10110,
            },
            Some(b) => {
                if b.checked_add(10 + 1000).is_none() {
                    bail!("--port-base {b} leaves no room for the ports after it");
                }
                Ports {
                    api: b,
                    grpc: b + 1,
                    root_metrics: b + 2,
                    cluster_api: b + 3,
                    mqtt: b + 4,
                    first_node: b + 10,
                }
            }
        })
    }
}

/// One child as recorded in `up.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    /// `root`, `cluster` or `workerN`.
    pub name: String,
    pub pid: u32,
    /// Program and arguments, to start it again by hand.
    pub command: Vec<String>,
    pub log: PathBuf,
    /// Its health URL.
    pub health: String,
    /// containerd namespace (workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// `<data-dir>/up.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpState {
    pub api: String,
    pub root_metrics: String,
    pub cluster_api: String,
    pub pid: u32,
    pub components: Vec<Component>,
}

struct Running {
    info: Component,
    child: Child,
    exited: bool,
}

pub async fn run(args: UpArgs) -> Result<()> {
    if !args.containerd_namespace.starts_with("canopy") {
        bail!("--containerd-namespace must start with \"canopy\"");
    }
    if args.workers > 1000 || args.virtual_workers > 10_000 {
        bail!("--workers must be at most 1000 and --virtual-workers at most 10000");
    }
    if args.workers + args.virtual_workers == 0 {
        bail!("--workers must be at least 1 (or give --virtual-workers)");
    }
    if args.workers > 0
        && args.runtimes.split(',').any(|r| r.trim() == "container")
        && !args.containerd_socket.exists()
    {
        bail!(
            "containerd does not answer at {} (start it, e.g. `systemctl start containerd`, or run `containerd &`)",
            args.containerd_socket.display()
        );
    }
    let ports = Ports::new(args.port_base)?;
    let bins = BinDir::find(args.bin_dir.as_deref())?;
    let dir = absolute(&args.data_dir)?;
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let host = args.listen;
    let local = match host {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        other => other,
    };
    let url = |port: u16| format!("http://{}", SocketAddr::new(local, port));
    let api = url(ports.api);

    let mut kids: Vec<Running> = Vec::new();
    let started = async {
        // 1. the root
        let root_dir = dir.join("root");
        let mut cmd = vec![
            bins.path("root-orchestrator"),
            format!("--data-dir={}", root_dir.display()),
            format!("--api-addr={}", SocketAddr::new(host, ports.api)),
            format!("--grpc-addr={}", SocketAddr::new(host, ports.grpc)),
            format!(
                "--metrics-addr={}",
                SocketAddr::new(local, ports.root_metrics)
            ),
            format!("--log={}", args.log),
        ];
        cmd.extend(args.root_args.iter().cloned());
        step("starting the root orchestrator");
        let root = spawn(&dir, "root", cmd, format!("{api}/health"), None, &[]).await?;
        kids.push(root);
        wait_healthy(kids.last_mut()).await?;
        let cluster_token = read_secret(&root_dir.join("cluster-token"))?;

        // 2. the cluster
        let cluster_dir = dir.join("cluster");
        let cluster_api = url(ports.cluster_api);
        let mut cmd = vec![
            bins.path("cluster-orchestrator"),
            format!("--root-addr={}", SocketAddr::new(local, ports.grpc)),
            "--name=local".to_owned(),
            format!("--data-dir={}", cluster_dir.display()),
            format!("--api-addr={}", SocketAddr::new(host, ports.cluster_api)),
            format!("--mqtt-addr={}", SocketAddr::new(host, ports.mqtt)),
            format!("--log={}", args.log),
        ];
        cmd.extend(args.cluster_args.iter().cloned());
        step("starting the cluster orchestrator (embedded MQTT broker)");
        let cluster = spawn(
            &dir,
            "cluster",
            cmd,
            format!("{cluster_api}/health"),
            None,
            &[("CANOPY_CLUSTER_TOKEN", cluster_token.as_str())],
        )
        .await?;
        kids.push(cluster);
        wait_healthy(kids.last_mut()).await?;
        let node_token = read_secret(&cluster_dir.join("node-token"))?;

        // 3. the workers
        for i in 1..=args.workers {
            let name = format!("worker{i}");
            let ns = format!("{}-{name}", args.containerd_namespace);
            let port = ports.first_node + (i as u16 - 1);
            let mut cmd = vec![
                bins.path("node-engine"),
                format!(
                    "--cluster-addr={}",
                    SocketAddr::new(local, ports.cluster_api)
                ),
                format!("--name={name}"),
                format!("--data-dir={}", dir.join(&name).display()),
                format!("--api-addr={}", SocketAddr::new(local, port)),
                format!("--containerd-socket={}", args.containerd_socket.display()),
                format!("--containerd-namespace={ns}"),
                format!("--runtimes={}", args.runtimes),
                "--remove-on-exit".to_owned(),
                format!("--log={}", args.log),
            ];
            cmd.extend(args.node_args.iter().cloned());
            step(&format!(
                "starting node engine {name} (containerd namespace {ns})"
            ));
            let kid = spawn(
                &dir,
                &name,
                cmd,
                format!("{}/health", url(port)),
                Some(ns),
                &[("CANOPY_NODE_TOKEN", node_token.as_str())],
            )
            .await?;
            kids.push(kid);
        }
        if args.virtual_workers > 0 {
            let port = ports.first_node + args.workers as u16;
            let mut cmd = vec![
                bins.path("node-engine"),
                format!(
                    "--cluster-addr={}",
                    SocketAddr::new(local, ports.cluster_api)
                ),
                "--name=virtual".to_owned(),
                format!("--data-dir={}", dir.join("virtual").display()),
                format!("--api-addr={}", SocketAddr::new(local, port)),
                format!("--bench-virtual-workers={}", args.virtual_workers),
                format!("--log={}", args.log),
            ];
            cmd.extend(args.node_args.iter().cloned());
            step(&format!(
                "starting {} virtual workers (benchmark mode: no workloads run)",
                args.virtual_workers
            ));
            let kid = spawn(
                &dir,
                "virtual",
                cmd,
                format!("{}/health", url(port)),
                None,
                &[("CANOPY_NODE_TOKEN", node_token.as_str())],
            )
            .await?;
            kids.push(kid);
        }
        for k in kids.iter_mut().skip(2) {
            wait_healthy(Some(k)).await?;
        }
        write_state(&dir, &api, &ports, local, &kids)?;

        // 4. log in and wait for the whole chain
        let password = admin_password(&root_dir)?;
        let mut client = Client::new(Some(&api))?;
        client.login("Admin", &password).await.context(
            "cannot log in as Admin (was CANOPY_ADMIN_PASSWORD changed after the first start?)",
        )?;
        wait_cluster(&mut client, args.workers + args.virtual_workers, &mut kids).await?;
        Ok::<String, anyhow::Error>(password)
    };
    let password = tokio::select! {
        r = started => r,
        () = canopy_daemon::shutdown_signal() => Err(anyhow!("interrupted")),
    };
    let password = match password {
        Ok(p) => p,
        Err(e) => {
            stop_all(&mut kids).await;
            return Err(e);
        }
    };
    let ns: Vec<&str> = kids
        .iter()
        .filter_map(|k| k.info.namespace.as_deref())
        .collect();
    println!();
    println!(
        "Canopy is up: 1 root, 1 cluster, {} worker(s).",
        args.workers
    );
    println!();
    println!("  API          {api}   (OpenAPI: {api}/api/docs)");
    println!("  user         Admin");
    println!("  password     {password}");
    println!("  logs         {}/logs/", dir.display());
    println!("  containerd   namespaces {}", ns.join(", "));
    println!();
    println!("The canopy CLI is logged in to it. Next:");
    println!("  canopy apply SLA.json --wait      (examples/quickstart.json is the demo)");
    println!("  canopy get services      canopy get instances      canopy get nodes");
    println!("  canopy logs SERVICE --follow      canopy scale SERVICE 3");
    println!("Containers use the host's network: a published port is reachable on 127.0.0.1.");
    println!("Press Ctrl-C to stop everything (instances are removed).");

    // 5. run until asked to stop
    let mut signal = std::pin::pin!(canopy_daemon::shutdown_signal());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = &mut signal => break,
            _ = tick.tick() => reap(&mut kids),
        }
    }
    println!();
    step("stopping");
    stop_all(&mut kids).await;
    step("stopped");
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// Where the daemon binaries are.
struct BinDir(Option<PathBuf>);

impl BinDir {
    fn find(given: Option<&Path>) -> Result<BinDir> {
        let dir = match given {
            Some(d) => Some(d.to_owned()),
            None => std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|d| d.join("root-orchestrator").exists()),
        };
        let bins = BinDir(dir);
        for b in ["root-orchestrator", "cluster-orchestrator", "node-engine"] {
            let p = bins.path(b);
            if bins.0.is_some() && !Path::new(&p).exists() {
                bail!("{p} is missing: build it (cargo build --release --workspace)");
            }
        }
        Ok(bins)
    }

    fn path(&self, name: &str) -> String {
        match &self.0 {
            Some(d) => d.join(name).display().to_string(),
            None => name.to_owned(),
        }
    }
}

/// Starts one daemon in its own process group, output appended to `logs/<name>.log`.
async fn spawn(
    dir: &Path,
    name: &str,
    command: Vec<String>,
    health: String,
    namespace: Option<String>,
    env: &[(&str, &str)],
) -> Result<Running> {
    let log = dir.join("logs").join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .kill_on_drop(false);
    // Settings for the daemons come from the flags above, not from this shell.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && k.starts_with("CANOPY_")
            && !matches!(k, "CANOPY_ADMIN_PASSWORD" | "CANOPY_LOG")
        {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", command[0]))?;
    let pid = child.id().unwrap_or(0);
    Ok(Running {
        info: Component {
            name: name.to_owned(),
            pid,
            command,
            log,
            health,
            namespace,
        },
        child,
        exited: false,
    })
}

/// Waits until a child answers its health URL; fails with its log's end if it exits first.
async fn wait_healthy(kid: Option<&mut Running>) -> Result<()> {
    let Some(kid) = kid else { return Ok(()) };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let start = Instant::now();
    loop {
        if let Some(status) = kid.child.try_wait()? {
            kid.exited = true;
            bail!(
                "{} exited ({status}) while starting; the end of {}:\n{}",
                kid.info.name,
                kid.info.log.display(),
                log_tail(&kid.info.log, 15)
            );
        }
        if let Ok(r) = http.get(&kid.info.health).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "{} did not answer {} within 60 s; see {}",
                kid.info.name,
                kid.info.health,
                kid.info.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the root lists an active cluster with `workers` active nodes.
async fn wait_cluster(client: &mut Client, workers: u32, kids: &mut [Running]) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        reap(kids);
        if let Some(k) = kids.iter().find(|k| k.exited) {
            bail!(
                "{} exited; the end of {}:\n{}",
                k.info.name,
                k.info.log.display(),
                log_tail(&k.info.log, 15)
            );
        }
        let clusters: Vec<ClusterInfo> = client.get("/api/clusters").await?;
        let (active, nodes) = clusters
            .iter()
            .filter(|c| c.active)
            .fold((0, 0), |(a, n), c| {
                (a + 1, n + u64::from(c.total.active_nodes))
            });
        let now =
            format!("waiting: {active}/1 cluster(s) active, {nodes}/{workers} worker(s) ready");
        if now != last {
            println!("    {now}");
            last = now;
        }
        if active >= 1 && nodes >= u64::from(workers) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the cluster and its workers were not all ready after 120 s: see the logs");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Notices children that exited by themselves.
fn reap(kids: &mut [Running]) {
    for k in kids.iter_mut().filter(|k| !k.exited) {
        if let Ok(Some(status)) = k.child.try_wait() {
            k.exited = true;
            eprintln!(
                "!! {} (pid {}) exited: {status}; see {}",
                k.info.name,
                k.info.pid,
                k.info.log.display()
            );
        }
    }
}

/// Stops the workers, then the cluster, then the root: SIGTERM, then SIGKILL after a grace.
async fn stop_all(kids: &mut [Running]) {
    let workers: Vec<usize> = (0..kids.len())
        .filter(|&i| !matches!(kids[i].info.name.as_str(), "cluster" | "root"))
        .collect();
    stop_group(kids, &workers, Duration::from_secs(30)).await;
    for name in ["cluster", "root"] {
        let idx: Vec<usize> = (0..kids.len())
            .filter(|&i| kids[i].info.name == name)
            .collect();
        stop_group(kids, &idx, Duration::from_secs(15)).await;
    }
}

async fn stop_group(kids: &mut [Running], idx: &[usize], grace: Duration) {
    for &i in idx {
        let k = &kids[i];
        if !k.exited
            && let Ok(pid) = i32::try_from(k.info.pid)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for &i in idx {
        let k = &mut kids[i];
        if k.exited {
            continue;
        }
        match tokio::time::timeout(grace, k.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "!! {} did not stop within {grace:?}: killing it",
                    k.info.name
                );
                let _ = k.child.kill().await;
            }
        }
        k.exited = true;
        println!("    {} stopped", k.info.name);
    }
}

fn write_state(
    dir: &Path,
    api: &str,
    ports: &Ports,
    local: IpAddr,
    kids: &[Running],
) -> Result<()> {
    let state = UpState {
        api: api.to_owned(),
        root_metrics: format!(
            "http://{}/metrics",
            SocketAddr::new(local, ports.root_metrics)
        ),
        cluster_api: format!("http://{}", SocketAddr::new(local, ports.cluster_api)),
        pid: std::process::id(),
        components: kids.iter().map(|k| k.info.clone()).collect(),
    };
    let text = serde_json::to_string_pretty(&state)?;
    std::fs::write(dir.join("up.json"), text)?;
    Ok(())
}

fn read_secret(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// `CANOPY_ADMIN_PASSWORD`, else the password the root generated on its first start.
fn admin_password(root_dir: &Path) -> Result<String> {
    if let Ok(p) = std::env::var("CANOPY_ADMIN_PASSWORD")
        && !p.is_empty()
    {
        return Ok(p);
    }
    read_secret(&root_dir.join("admin-password")).context(
        "no admin password: set CANOPY_ADMIN_PASSWORD (the root was first started with one)",
    )
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
