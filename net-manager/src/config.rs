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
    /// State directory: the instances attached, the translation table.
    #[arg(
        long,
        env = "CANOPY_NET_DATA_DIR",
        default_value = "/var/lib/canopy/net"
    )]
    pub data_dir: PathBuf,
    /// This worker's /26 subnet (its network address, e.g. 10.18.0.64).
    #[arg(long, env = "CANOPY_NET_SUBNET")]
    pub subnet: Ipv4Addr,
    /// The bridge instances are attached to.
    #[arg(long, env = "CANOPY_NET_BRIDGE", default_value = "canopy0")]
    pub bridge: String,
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
    /// Remove every instance's network, the table and the bridge when stopping.
    #[arg(long, env = "CANOPY_NET_REMOVE_ON_EXIT")]
    pub remove_on_exit: bool,
    #[arg(long, env = "CANOPY_LOG", default_value = "info")]
    pub log: String,
}
