//! Settings of the node engine: defaults, a TOML file (`--config`), environment, flags
//! (`canopy_daemon::config`; later layers win).

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = crate::COMPONENT,
    version,
    about = "Canopy node engine: joins a cluster, runs containers (containerd), wasm modules (wasmtime) and unikernels (QEMU), reports, recovers."
)]
pub struct Config {
    /// The cluster's node registration address, HOST:PORT (its --api-addr, port 10100).
    #[arg(long, env = "CANOPY_CLUSTER_ADDR")]
    pub cluster_addr: String,
    /// The cluster's node join token.
    #[arg(long, env = "CANOPY_NODE_TOKEN", hide_env_values = true)]
    pub join_token: String,
    /// This worker's name at the cluster (default: the host name); the same name keeps the
    /// same node id.
    #[arg(long, env = "CANOPY_NODE_NAME")]
    pub name: Option<String>,
    /// State directory: the instances this worker runs, their logs, scratch space.
    #[arg(long, env = "CANOPY_DATA_DIR", default_value = "/var/lib/canopy/node")]
    pub data_dir: PathBuf,
    /// Local HTTP: /metrics, /health, /instances and instance logs.
    #[arg(long, env = "CANOPY_API_ADDR", default_value = "127.0.0.1:10110")]
    pub api_addr: SocketAddr,
    /// Runtimes to offer: container, wasm, unikernel (comma-separated). `unikernel` (QEMU) is
    /// advertised only when QEMU is installed; without it such deploys fail saying so.
    #[arg(
        long,
        env = "CANOPY_RUNTIMES",
        value_delimiter = ',',
        default_value = "container,wasm,unikernel"
    )]
    pub runtimes: Vec<String>,
    /// How unikernels execute: `auto` uses KVM when /dev/kvm opens and a probe guest boots
    /// faster under it than under software emulation (TCG), else TCG.
    #[arg(
        long,
        env = "CANOPY_UNIKERNEL_ACCEL",
        value_enum,
        default_value = "auto"
    )]
    pub unikernel_accel: crate::runtime::qemu::command::AccelMode,
    #[arg(
        long,
        env = "CANOPY_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,
    /// The containerd namespace this engine owns (everything else in it is removed at start).
    #[arg(long, env = "CANOPY_CONTAINERD_NAMESPACE", default_value = "canopy")]
    pub containerd_namespace: String,
    /// A registry reached over plain HTTP, HOST:PORT (repeatable; loopback always is).
    #[arg(
        long = "insecure-registry",
        env = "CANOPY_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// How often node information and instance resources are sampled; a sample is sent only
    /// when it differs noticeably from the last one sent (or at the refresh below).
    #[arg(long, env = "CANOPY_REPORT_INTERVAL_SECS", default_value_t = 2.0)]
    pub report_interval_secs: f64,
    /// Reports are sent at least this often, changed or not.
    #[arg(long, env = "CANOPY_REPORT_REFRESH_SECS", default_value_t = 30.0)]
    pub report_refresh_secs: f64,
    /// The MQTT keep-alive: with no other traffic the engine pings the broker this often, and
    /// the broker gives the worker up (its last will tells the cluster) after 1.5 times this
    /// much silence, e.g. when the worker's link is cut.
    #[arg(long, env = "CANOPY_KEEPALIVE_SECS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=3600))]
    pub keepalive_secs: u16,
    /// Grace between SIGTERM and SIGKILL when an instance is stopped.
    #[arg(long, env = "CANOPY_STOP_GRACE_SECS", default_value_t = 10.0)]
    pub stop_grace_secs: f64,
    /// Remove every instance when the engine stops (for all-in-one set-ups such as
    /// `canopy up`); by default instances keep running across an engine restart.
    #[arg(long, env = "CANOPY_REMOVE_ON_EXIT")]
    pub remove_on_exit: bool,
    /// The worker's net manager (its unix socket): each container gets its own network
    /// namespace on the overlay, reaches services by their service IPs and names.
    #[arg(
        long,
        env = "CANOPY_NET_SOCKET",
        default_value = "/run/canopy/net-manager.sock"
    )]
    pub net_manager_socket: PathBuf,
    /// Keep containers on the host's network (no net manager, no overlay).
    #[arg(long, env = "CANOPY_NO_OVERLAY")]
    pub no_overlay: bool,
    /// The LAN address the overlay tunnel runs over (other workers send to it); default: the
    /// address this worker reaches the cluster from.
    #[arg(long, env = "CANOPY_OVERLAY_ADDRESS")]
    pub overlay_address: Option<std::net::Ipv4Addr>,
    /// Offer the cluster at most this much memory (MB), keeping the rest for the host;
    /// default: all that is available.
    #[arg(long, env = "CANOPY_OFFER_MEMORY_MB")]
    pub offer_memory_mb: Option<u64>,
    /// How often the engine looks for workloads in its namespace that no instance names (a
    /// bug); each is logged as an error, removed and counted in /metrics.
    #[arg(long, env = "CANOPY_UNTRACKED_CHECK_SECS", default_value_t = 30.0)]
    pub untracked_check_secs: f64,
    /// Benchmark mode: run this many virtual workers (`<name>-v<N>`, state under
    /// `<data-dir>/v<N>`) that speak the real worker protocol but start no workloads: every
    /// instance "runs" at once. For load tests of clusters; never for real work.
    #[arg(long, default_value_t = 0)]
    pub bench_virtual_workers: u32,
    #[arg(long, env = "CANOPY_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    pub fn report_interval(&self) -> Duration {
        Duration::from_secs_f64(self.report_interval_secs.clamp(0.1, 3600.0))
    }

    pub fn report_refresh(&self) -> Duration {
        Duration::from_secs_f64(self.report_refresh_secs.clamp(0.1, 86_400.0))
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keepalive_secs.max(1)))
    }

    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs_f64(self.stop_grace_secs.clamp(0.0, 3600.0))
    }

    pub fn untracked_check_interval(&self) -> Duration {
        Duration::from_secs_f64(self.untracked_check_secs.clamp(0.1, 86_400.0))
    }

    /// The net manager's socket, unless `--no-overlay`.
    pub fn overlay_socket(&self) -> Option<&std::path::Path> {
        (!self.no_overlay).then_some(self.net_manager_socket.as_path())
    }

    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("logs")
    }

    /// A configuration for tests: everything local, short intervals.
    pub fn for_test(
        cluster_addr: &str,
        join_token: &str,
        data_dir: PathBuf,
        namespace: &str,
    ) -> Config {
        Config {
            cluster_addr: cluster_addr.to_owned(),
            join_token: join_token.to_owned(),
            name: Some("test-worker".into()),
            data_dir,
            api_addr: "127.0.0.1:0".parse().expect("a socket address"),
            runtimes: vec!["container".into(), "wasm".into()],
            unikernel_accel: crate::runtime::qemu::command::AccelMode::Auto,
            containerd_socket: "/run/containerd/containerd.sock".into(),
            containerd_namespace: namespace.to_owned(),
            insecure_registries: Vec::new(),
            report_interval_secs: 0.5,
            report_refresh_secs: 30.0,
            keepalive_secs: 1,
            stop_grace_secs: 2.0,
            remove_on_exit: false,
            untracked_check_secs: 30.0,
            net_manager_socket: PathBuf::from("/run/canopy/net-manager.sock"),
            no_overlay: true,
            overlay_address: None,
            offer_memory_mb: None,
            bench_virtual_workers: 0,
            log: "info".into(),
        }
    }
}
