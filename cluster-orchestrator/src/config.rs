//! Settings of the cluster orchestrator: defaults, a TOML file (`--config`), environment, flags
//! (`canopy_daemon::config`; later layers win).

use canopy_core::link::ClusterLocation;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = crate::COMPONENT,
    version,
    about = "Canopy cluster orchestrator: root link, MQTT broker and worker protocol, cluster scheduler, failure handling."
)]
pub struct Config {
    /// The root's cluster link, HOST:PORT (its --grpc-addr, default port 50052).
    #[arg(long, env = "CANOPY_ROOT_ADDR")]
    pub root_addr: String,
    /// The root's cluster join token.
    #[arg(long, env = "CANOPY_CLUSTER_TOKEN", hide_env_values = true)]
    pub join_token: String,
    /// The cluster's name at the root; the same name keeps the same identity.
    #[arg(long, env = "CANOPY_CLUSTER_NAME")]
    pub name: String,
    /// Where the cluster is: LAT,LON[,RADIUS_KM].
    #[arg(long, env = "CANOPY_CLUSTER_LOCATION", value_parser = ClusterLocation::parse)]
    pub location: Option<ClusterLocation>,
    /// Node registration, status and /metrics (Oakestra's port 10100).
    #[arg(long, env = "CANOPY_API_ADDR", default_value = "0.0.0.0:10100")]
    pub api_addr: SocketAddr,
    /// The embedded MQTT broker's listener (Oakestra's port 10003).
    #[arg(long, env = "CANOPY_MQTT_ADDR", default_value = "0.0.0.0:10003")]
    pub mqtt_addr: SocketAddr,
    /// Use this external broker instead, mqtt://USER:PASSWORD@HOST:PORT (Mosquitto with the
    /// dynamic-security plugin; USER must be a dynsec admin).
    #[arg(long, env = "CANOPY_MQTT_URL", hide_env_values = true)]
    pub mqtt_url: Option<String>,
    /// Broker host workers are told to use; empty: the address they registered with.
    #[arg(long, env = "CANOPY_MQTT_ADVERTISE", default_value = "")]
    pub mqtt_advertise: String,
    /// State directory: the embedded store (unless --mongodb-uri) and `node-token`.
    #[arg(
        long,
        env = "CANOPY_DATA_DIR",
        default_value = "/var/lib/canopy/cluster"
    )]
    pub data_dir: PathBuf,
    #[arg(long, env = "CANOPY_MONGODB_URI")]
    pub mongodb_uri: Option<String>,
    #[arg(
        long,
        env = "CANOPY_MONGODB_DATABASE",
        default_value = "canopy_cluster"
    )]
    pub mongodb_database: String,
    /// Token workers present to register; read from (or generated into) `<data-dir>/node-token`
    /// when unset.
    #[arg(long, env = "CANOPY_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,
    /// A worker silent this long is lost: the backstop to its last will, which the broker
    /// publishes after 1.5 of the worker's keep-alives (1.5 s by default). Keep it well above
    /// the workers' report refresh (30 s by default): an idle worker sends nothing else.
    #[arg(long, env = "CANOPY_WORKER_TIMEOUT_SECS", default_value_t = 75.0)]
    pub worker_timeout_secs: f64,
    /// A RUNNING instance on the overlay that is undeployed leaves its service's addresses at
    /// once, and is stopped on its worker this many seconds later (requests on their way to
    /// it are answered; 0: at once).
    #[arg(long, env = "CANOPY_DRAIN_SECS", default_value_t = 2.0)]
    pub drain_secs: f64,
    /// How often the cluster reports its resources to the root.
    #[arg(long, env = "CANOPY_REPORT_INTERVAL_SECS", default_value_t = 2.0)]
    pub report_interval_secs: f64,
    /// Where the node engines handed to new workers are (`node-engine` for this machine's
    /// architecture, `node-engine-<arch>` for others); default: this binary's directory.
    #[arg(long, env = "CANOPY_INSTALL_DIR")]
    pub install_dir: Option<PathBuf>,
    #[arg(long, env = "CANOPY_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    pub fn store(&self) -> canopy_store::StoreConfig {
        canopy_store::StoreConfig::choose(
            self.mongodb_uri.as_deref(),
            &self.mongodb_database,
            &self.data_dir,
        )
    }

    /// `--install-dir`, or the directory of the running executable.
    pub fn install_dir(&self) -> PathBuf {
        self.install_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }

    pub fn worker_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.worker_timeout_secs.clamp(0.2, 3600.0))
    }

    pub fn report_interval(&self) -> Duration {
        Duration::from_secs_f64(self.report_interval_secs.clamp(0.1, 60.0))
    }
}

/// An external broker URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, String> {
        let rest = url
            .strip_prefix("mqtt://")
            .ok_or("--mqtt-url must start with mqtt://")?;
        let (auth, hostport) = rest
            .rsplit_once('@')
            .ok_or("--mqtt-url must carry USER:PASSWORD@ (anonymous access is not used)")?;
        let (username, password) = auth
            .split_once(':')
            .ok_or("--mqtt-url credentials must be USER:PASSWORD")?;
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or("--mqtt-url must name HOST:PORT")?;
        let port = port
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("--mqtt-url port {port:?} is not a port number"))?;
        if host.is_empty() || username.is_empty() {
            return Err("--mqtt-url needs a host and a user".into());
        }
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let u = BrokerUrl::parse("mqtt://admin:s3:cr@t@127.0.0.1:1883").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.username.as_str(),
                u.password.as_str()
            ),
            ("127.0.0.1", 1883, "admin", "s3:cr@t")
        );
        for bad in [
            "tcp://a:b@h:1",
            "mqtt://h:1",
            "mqtt://a:b@h",
            "mqtt://a:b@h:x",
            "mqtt://:b@h:1",
        ] {
            assert!(BrokerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
