//! `canopy up`: a whole Canopy on this machine. It starts the real daemons as child processes
//! (each in its own process group, so a terminal's Ctrl-C reaches only `canopy up`):
//!
//! 1. `root-orchestrator` (embedded store) — waits for `/health`, reads `cluster-token`;
//! 2. `cluster-orchestrator` (embedded store and MQTT broker; `--clusters N` starts N of them)
//!    — waits for each `/health`, reads each `node-token`;
//! 3. N × `net-manager` (`--same-host`: every worker has its own bridge and nftables table in
//!    this machine's network namespace, so their instances reach each other by service IPs
//!    and names; not with `--no-overlay`);
//! 4. N × `node-engine` (`--remove-on-exit`, namespace `<prefix>-workerI`, API port of its own;
//!    containers, wasm and — where QEMU is installed — unikernels);
//!
//! then logs in as `Admin`, waits until the root sees every cluster and N active workers, saves
//! the login for the CLI and prints what to do next. `<data-dir>/up.json` lists every child
//! (pid, command line, log file). On SIGINT/SIGTERM the engines stop first (removing their
//! instances), then the net managers (removing their networks), then the clusters, then the
//! root. A child that dies is reported, not restarted.
//!
//! [`plan`] decides everything from the arguments (ports, directories, command lines, health
//! URLs, token files) without I/O; [`run`] starts, waits for and stops the children.

mod plan;
mod run;

use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;

pub use run::run;

#[derive(Args)]
pub struct UpArgs {
    /// Node engines to start (spread over the clusters in turn: worker I joins cluster
    /// `(I - 1) % clusters + 1`).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// Cluster orchestrators to start (`cluster`, `cluster2`, ...; each with its own store,
    /// broker and data directory), at most 20.
    #[arg(long, default_value_t = 1)]
    pub clusters: u32,
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
    /// What the workers offer. `unikernel` is offered only where QEMU is installed: without
    /// it the engines skip it (and say so in their logs) and the rest runs as before.
    #[arg(long, default_value = "container,wasm,unikernel")]
    pub runtimes: String,
    /// Where the daemon binaries are; default: next to `canopy`, else on PATH.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Log filter for the daemons.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Benchmark mode: also start this many virtual workers in every cluster (one `node-engine
    /// --bench-virtual-workers` process per cluster) that speak the real protocol but run
    /// nothing.
    #[arg(long, default_value_t = 0)]
    pub virtual_workers: u32,
    /// Keep containers on the host's network: no net managers, no service IPs or names.
    #[arg(long)]
    pub no_overlay: bool,
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
