//! Command line and environment of the net manager.

use clap::Parser;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(
    name = crate::COMPONENT,
    version,
    about = "Canopy net manager: puts a worker's instances on the overlay (bridge, veth, service-IP translation with nftables)."
)]
pub struct Config {
    /// The local API's unix socket (the node engine talks to it).
    #[arg(
        long,
        env = "CANOPY_NET_SOCKET",
        default_value = "/run/canopy/net-manager.sock"
    )]
    pub socket: PathBuf,
    /// State directory: the node configuration, the instances attached, the view.
    #[arg(
        long,
        env = "CANOPY_NET_DATA_DIR",
        default_value = "/var/lib/canopy/net"
    )]
    pub data_dir: PathBuf,
    /// This worker's /26 subnet (its network address, e.g. 10.18.0.64): configures the node
    /// at start as `PUT /node` does (otherwise it waits for one, or uses the stored one).
    #[arg(long, env = "CANOPY_NET_SUBNET", requires = "underlay")]
    pub subnet: Option<Ipv4Addr>,
    /// This worker's address on the LAN the tunnel runs over (with `--subnet`).
    #[arg(long, env = "CANOPY_NET_UNDERLAY", requires = "subnet")]
    pub underlay: Option<Ipv4Addr>,
    /// The bridge instances are attached to.
    #[arg(long, env = "CANOPY_NET_BRIDGE", default_value = "canopy0")]
    pub bridge: String,
    /// The VXLAN device of the tunnel between workers (at most 15 characters).
    #[arg(long, env = "CANOPY_NET_TUNNEL", default_value = "canopy.vx")]
    pub tunnel: String,
    /// The tunnel's VXLAN network identifier.
    #[arg(long, env = "CANOPY_NET_VNI", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(0..=0xff_ffff))]
    pub vni: u32,
    /// The tunnel's UDP port.
    #[arg(long, env = "CANOPY_NET_VXLAN_PORT", default_value_t = 50103)]
    pub vxlan_port: u16,
    /// Round-trip probes between workers: the UDP port answered on the underlay address.
    #[arg(long, env = "CANOPY_NET_PROBE_PORT", default_value_t = 50104)]
    pub probe_port: u16,
    /// Seconds between two probes of a peer.
    #[arg(long, env = "CANOPY_NET_PROBE_INTERVAL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub probe_interval_secs: u64,
    /// The UDP port the resolver answers on, on the bridge's address (instances ask it
    /// through their resolv.conf).
    #[arg(long, env = "CANOPY_NET_DNS_PORT", default_value_t = 53)]
    pub dns_port: u16,
    /// The host's resolvers, which names other than the services' are forwarded to.
    #[arg(
        long,
        env = "CANOPY_NET_RESOLV_CONF",
        default_value = "/etc/resolv.conf"
    )]
    pub resolv_conf: std::path::PathBuf,
    /// Several workers in this one network namespace (`canopy up`), each with its own net
    /// manager, bridge and table: no tunnel and no probes; the kernel routes between the
    /// bridges, and the table translates only traffic from this worker's bridge.
    #[arg(long, env = "CANOPY_NET_SAME_HOST")]
    pub same_host: bool,
    /// The nftables table (family ip) of the translations.
    #[arg(long, env = "CANOPY_NET_NFT_TABLE", default_value = "canopy")]
    pub nft_table: String,
    /// Instance network namespaces are pinned here.
    #[arg(
        long,
        env = "CANOPY_NET_NETNS_DIR",
        default_value = "/run/canopy/netns"
    )]
    pub netns_dir: PathBuf,
    /// Remove every instance's network, the table, the tunnel and the bridge when stopping.
    #[arg(long, env = "CANOPY_NET_REMOVE_ON_EXIT")]
    pub remove_on_exit: bool,
    #[arg(long, env = "CANOPY_LOG", default_value = "info")]
    pub log: String,
}
