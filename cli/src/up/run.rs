//! Carrying out a [`Plan`]: the children are started tier by tier, each tier once the one
//! before answers its health URL (and wrote the token the next reads), then `up.json` is
//! written, the CLI logged in, and the children watched until a signal stops them in order.

use super::UpArgs;
use super::plan::{self, BinDir, ChildPlan, DAEMONS, Plan, Ports};
use crate::client::Client;
use anyhow::{Context, Result, anyhow, bail};
use canopy_api::ClusterInfo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One child as recorded in `up.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    /// `root`, `cluster`/`clusterK`, `workerN`, `net-workerN` or `virtual`/`virtualK`.
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
    plan::validate(&args)?;
    if plan::needs_containerd(&args) && !args.containerd_socket.exists() {
        bail!(
            "containerd does not answer at {} (start it, e.g. `systemctl start containerd`, or run `containerd &`)",
            args.containerd_socket.display()
        );
    }
    let ports = Ports::new(args.port_base)?;
    let bins = find_bins(args.bin_dir.as_deref())?;
    let dir = absolute(&args.data_dir)?;
    std::fs::create_dir_all(dir.join("logs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let plan = plan::plan(&args, &ports, &dir, &bins);
    let api = &plan.api;

    let mut kids: Vec<Running> = Vec::new();
    let started = async {
        // 1. the root, 2. the clusters: each must answer before the next starts
        for tier in std::iter::once(&plan.root).chain(&plan.clusters) {
            kids.push(spawn(tier).await?);
            wait_healthy(kids.last_mut()).await?;
        }
        let tiers = kids.len();
        // 3. the net managers, then the workers, all at once
        for net in &plan.nets {
            kids.push(spawn(net).await?);
        }
        for k in kids.iter_mut().skip(tiers) {
            wait_healthy(Some(k)).await?;
        }
        for engine in &plan.engines {
            kids.push(spawn(engine).await?);
        }
        for k in kids.iter_mut().skip(tiers) {
            wait_healthy(Some(k)).await?;
        }
        write_state(&plan, &kids)?;

        // 4. log in and wait for the whole chain
        let password = admin_password(&plan.admin_password)?;
        let mut client = Client::new(Some(api))?;
        client.login("Admin", &password).await.context(
            "cannot log in as Admin (was CANOPY_ADMIN_PASSWORD changed after the first start?)",
        )?;
        wait_clusters(&mut client, plan.clusters.len(), plan.workers, &mut kids).await?;
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
        "Canopy is up: 1 root, {} cluster(s), {} worker(s).",
        args.clusters, args.workers
    );
    println!();
    println!("  API          {api}   (OpenAPI: {api}/api/docs)");
    println!("  user         Admin");
    println!("  password     {password}");
    println!("  logs         {}/logs/", dir.display());
    println!("  containerd   namespaces {}", ns.join(", "));
    if args.workers > 0 && plan::offers(&args, "unikernel") {
        match crate::doctor::qemu_binary() {
            Some(b) if crate::doctor::on_path(b) => println!("  unikernels   {b}"),
            Some(b) => println!("  unikernels   not offered: {b} is not installed"),
            None => println!("  unikernels   not offered: no QEMU for this architecture"),
        }
    }
    println!();
    println!("The canopy CLI is logged in to it. Next:");
    println!("  canopy apply SLA.json --wait      (examples/quickstart.json is the demo)");
    println!("  canopy get services      canopy get instances      canopy get nodes");
    println!("  canopy logs SERVICE --follow      canopy scale SERVICE 3");
    if args.no_overlay {
        println!("Containers use the host's network: a published port is reachable on 127.0.0.1.");
    } else {
        println!(
            "Containers are on the overlay: services reach each other by service IP and by name"
        );
        println!("(app.appns.svc.svcns); a published port is reachable on 127.0.0.1.");
    }
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

/// The given directory, else the one `canopy` is in if the daemons are there, else PATH.
fn find_bins(given: Option<&Path>) -> Result<BinDir> {
    let dir = match given {
        Some(d) => Some(d.to_owned()),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| d.join("root-orchestrator").exists()),
    };
    let bins = BinDir(dir);
    for b in DAEMONS {
        let p = bins.path(b);
        if bins.0.is_some() && !Path::new(&p).exists() {
            bail!("{p} is missing: build it (cargo build --release --workspace)");
        }
    }
    Ok(bins)
}

/// Starts one daemon in its own process group, output appended to its log, its token (read
/// now) in its environment.
async fn spawn(plan: &ChildPlan) -> Result<Running> {
    let token = match &plan.token {
        Some(t) => Some((t.var, read_secret(&t.file)?)),
        None => None,
    };
    step(&plan.step);
    let command = plan.command.clone();
    let log = plan.log.clone();
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
    cmd.envs(token);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", command[0]))?;
    let pid = child.id().unwrap_or(0);
    Ok(Running {
        info: Component {
            name: plan.name.clone(),
            pid,
            command,
            log,
            health: plan.health.clone(),
            namespace: plan.namespace.clone(),
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
        if healthy(&http, &kid.info.health).await {
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

/// Whether `health` answers: an HTTP URL, or `unix:PATH` (a daemon's API on a unix socket).
async fn healthy(http: &reqwest::Client, health: &str) -> bool {
    let answer = match health.strip_prefix("unix:") {
        Some(path) => match reqwest::Client::builder()
            .unix_socket(path)
            .timeout(Duration::from_secs(2))
            .build()
        {
            Ok(c) => c.get("http://localhost/health").send().await,
            Err(_) => return false,
        },
        None => http.get(health).send().await,
    };
    answer.is_ok_and(|r| r.status().is_success())
}

/// Waits until the root lists `want_clusters` active clusters with `workers` active nodes.
async fn wait_clusters(
    client: &mut Client,
    want_clusters: usize,
    workers: u32,
    kids: &mut [Running],
) -> Result<()> {
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
        let now = format!(
            "waiting: {active}/{want_clusters} cluster(s) active, {nodes}/{workers} worker(s) ready"
        );
        if now != last {
            println!("    {now}");
            last = now;
        }
        if active >= want_clusters && nodes >= u64::from(workers) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the clusters and their workers were not all ready after 120 s: see the logs");
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

/// The order children stop in: workers (0), net managers (1), clusters (2), the root (3).
fn stop_rank(name: &str) -> u8 {
    if name == "root" {
        3
    } else if name.starts_with("cluster") {
        2
    } else if name.starts_with("net-") {
        1
    } else {
        0
    }
}

/// Stops the workers, then their net managers, then the clusters, then the root: SIGTERM,
/// then SIGKILL after a grace.
async fn stop_all(kids: &mut [Running]) {
    for (rank, grace) in [(0, 30), (1, 15), (2, 15), (3, 15)] {
        let idx: Vec<usize> = (0..kids.len())
            .filter(|&i| stop_rank(&kids[i].info.name) == rank)
            .collect();
        stop_group(kids, &idx, Duration::from_secs(grace)).await;
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

fn write_state(plan: &Plan, kids: &[Running]) -> Result<()> {
    let state = UpState {
        api: plan.api.clone(),
        root_metrics: plan.root_metrics.clone(),
        cluster_api: plan.cluster_api.clone(),
        pid: std::process::id(),
        components: kids.iter().map(|k| k.info.clone()).collect(),
    };
    let text = serde_json::to_string_pretty(&state)?;
    std::fs::write(plan.dir.join("up.json"), text)?;
    Ok(())
}

fn read_secret(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// `CANOPY_ADMIN_PASSWORD`, else the password the root generated on its first start.
fn admin_password(generated: &Path) -> Result<String> {
    if let Ok(p) = std::env::var("CANOPY_ADMIN_PASSWORD")
        && !p.is_empty()
    {
        return Ok(p);
    }
    read_secret(generated).context(
        "no admin password: set CANOPY_ADMIN_PASSWORD (the root was first started with one)",
    )
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
