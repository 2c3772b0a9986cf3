//! Settings of the root orchestrator: defaults, a TOML file (`--config`), environment, flags
//! (`canopy_daemon::config`; later layers win).

use canopy_core::autoscale::ResolvedWindows;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = crate::COMPONENT,
    version,
    about = "Canopy root orchestrator: Oakestra-compatible REST API, auth, root scheduler, cluster link server, service IPs."
)]
pub struct Config {
    /// REST API (Oakestra's port 10000).
    #[arg(long, env = "CANOPY_API_ADDR", default_value = "0.0.0.0:10000")]
    pub api_addr: SocketAddr,
    /// Cluster link, gRPC (Oakestra's port 50052).
    #[arg(long, env = "CANOPY_GRPC_ADDR", default_value = "0.0.0.0:50052")]
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics`, without authentication: keep it on loopback or a private network.
    #[arg(long, env = "CANOPY_METRICS_ADDR", default_value = "127.0.0.1:10009")]
    pub metrics_addr: SocketAddr,
    /// State directory: the embedded store (unless --mongodb-uri), `admin-password`,
    /// `cluster-token`.
    #[arg(long, env = "CANOPY_DATA_DIR", default_value = "/var/lib/canopy/root")]
    pub data_dir: PathBuf,
    /// Keep the state in MongoDB instead of the embedded store.
    #[arg(long, env = "CANOPY_MONGODB_URI")]
    pub mongodb_uri: Option<String>,
    #[arg(long, env = "CANOPY_MONGODB_DATABASE", default_value = "canopy_root")]
    pub mongodb_database: String,
    /// Seconds without a report after which a cluster is inactive and its instances move.
    #[arg(long, env = "CANOPY_CLUSTER_GRACE_SECS", default_value_t = 30.0)]
    pub cluster_grace_secs: f64,
    /// Lifetime of access tokens, seconds.
    #[arg(long, env = "CANOPY_ACCESS_TOKEN_SECS", default_value_t = 600)]
    pub access_token_secs: u64,
    /// Lifetime of refresh tokens, seconds.
    #[arg(long, env = "CANOPY_REFRESH_TOKEN_SECS", default_value_t = 7 * 24 * 3600)]
    pub refresh_token_secs: u64,
    /// Password of the initial `Admin` user (first start only); generated and written to
    /// `<data-dir>/admin-password` when unset.
    #[arg(long, env = "CANOPY_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Token clusters present to join; read from (or generated into) `<data-dir>/cluster-token`
    /// when unset.
    #[arg(long, env = "CANOPY_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "CANOPY_LOG", default_value = "info")]
    pub log: String,
    /// How many changes the event stream (`GET /api/events`) keeps, so a client reconnecting
    /// with `Last-Event-ID` misses nothing.
    #[arg(long, env = "CANOPY_EVENTS_KEPT", default_value_t = 10_000)]
    pub events_kept: usize,
    /// Most bytes of log one request (`GET /api/service/<id>/instance/<n>/logs`) streams; a
    /// longer log ends with a note that it goes on.
    #[arg(long, env = "CANOPY_MAX_LOG_BYTES", default_value_t = 64 << 20)]
    pub max_log_bytes: u64,
    /// A rolling update's new instance must be ready within this many seconds of being
    /// added, or the update rolls back.
    #[arg(long, env = "CANOPY_ROLLOUT_DEADLINE_SECS", default_value_t = 120.0)]
    pub rollout_deadline_secs: f64,
    /// A new instance is ready once it has been RUNNING this many seconds.
    #[arg(long, env = "CANOPY_ROLLOUT_MIN_READY_SECS", default_value_t = 5.0)]
    pub rollout_min_ready_secs: f64,
    /// Largest request body the API reads, bytes (a larger one is refused with 413).
    #[arg(long, env = "CANOPY_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Default quota of a user without one of their own: applications (0: no limit). Admins
    /// of the root organisation have no default quota. `PUT /api/user/<name>/quota` sets one.
    #[arg(long, env = "CANOPY_QUOTA_APPLICATIONS", default_value_t = 100)]
    pub quota_applications: u64,
    /// Default quota: services (0: no limit).
    #[arg(long, env = "CANOPY_QUOTA_SERVICES", default_value_t = 500)]
    pub quota_services: u64,
    /// Default quota: instances of all services together (0: no limit).
    #[arg(long, env = "CANOPY_QUOTA_INSTANCES", default_value_t = 1000)]
    pub quota_instances: u64,
    /// Default quota: vCPUs asked for by all instances together (0: no limit).
    #[arg(long, env = "CANOPY_QUOTA_VCPUS", default_value_t = 0)]
    pub quota_vcpus: u64,
    /// Default quota: memory asked for by all instances together, MiB (0: no limit).
    #[arg(long, env = "CANOPY_QUOTA_MEMORY_MB", default_value_t = 0)]
    pub quota_memory_mb: u64,
    /// Autoscaling (SLA `autoscale`): seconds a service's use must stay above its target
    /// before an instance is added, unless its SLA sets `up_window_secs`.
    #[arg(long, env = "CANOPY_AUTOSCALE_UP_SECS", default_value_t = ResolvedWindows::default().up.as_secs())]
    pub autoscale_up_secs: u64,
    /// Autoscaling: seconds one instance fewer must have been enough before one is removed,
    /// unless the SLA sets `down_window_secs`.
    #[arg(long, env = "CANOPY_AUTOSCALE_DOWN_SECS", default_value_t = ResolvedWindows::default().down.as_secs())]
    pub autoscale_down_secs: u64,
    /// Autoscaling: seconds after a change (or a refused one) before the next, unless the SLA
    /// sets `cooldown_secs`.
    #[arg(long, env = "CANOPY_AUTOSCALE_COOLDOWN_SECS", default_value_t = ResolvedWindows::default().cooldown.as_secs())]
    pub autoscale_cooldown_secs: u64,
}

impl Config {
    pub fn store(&self) -> canopy_store::StoreConfig {
        canopy_store::StoreConfig::choose(
            self.mongodb_uri.as_deref(),
            &self.mongodb_database,
            &self.data_dir,
        )
    }

    /// The `--quota-*` flags as a quota (0: no limit).
    pub fn default_quota(&self) -> canopy_api::Quota {
        let limit = |n: u64| (n > 0).then_some(n);
        canopy_api::Quota {
            applications: limit(self.quota_applications),
            services: limit(self.quota_services),
            instances: limit(self.quota_instances),
            vcpus: limit(self.quota_vcpus),
            memory_mb: limit(self.quota_memory_mb),
        }
    }

    /// The `--autoscale-*-secs` flags: the windows of services whose SLA sets none.
    pub fn autoscale_windows(&self) -> ResolvedWindows {
        ResolvedWindows {
            up: Duration::from_secs(self.autoscale_up_secs),
            down: Duration::from_secs(self.autoscale_down_secs),
            cooldown: Duration::from_secs(self.autoscale_cooldown_secs),
        }
    }

    pub fn cluster_grace(&self) -> Duration {
        Duration::from_secs_f64(self.cluster_grace_secs.clamp(0.1, 86_400.0))
    }

    /// Defaults for a test: everything on loopback port 0 under `data_dir`.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Config {
        let mut c = Config::parse_from([crate::COMPONENT]);
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        c.api_addr = any;
        c.grpc_addr = any;
        c.metrics_addr = any;
        c.data_dir = data_dir.into();
        c.mongodb_uri = None;
        c.admin_password = None;
        c.cluster_token = None;
        c
    }
}
