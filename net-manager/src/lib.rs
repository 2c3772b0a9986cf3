//! Net manager: bridge, veth, inter-node tunnel, service-IP translation with nftables.
//!
//! Work in progress (the overlay issue): the data path exists and is tested in namespaces (one
//! worker, and two workers over VXLAN), and so does the daemon with its local API; the node
//! engine does not use it yet, and table updates from the cluster and names do not exist yet,
//! so node engines use the host's network.
//!
//! Layout:
//! - [`link`]: links, addresses and routes through rtnetlink in any network namespace: the
//!   worker's bridge, an instance's veth pair, the VXLAN tunnel and its peers.
//! - [`nft`]: the translation table (virtual address → instances' addresses) rendered as one
//!   nftables table, replaced atomically.
//! - [`apply`]: running `nft` in a namespace.
//! - [`plan`]: the worker's address plan (tunnel, bridge, instances in a /26) and the names
//!   of what the net manager makes.
//! - [`netns`]: instance namespaces pinned on files, ready before the workload starts.
//! - [`manager`]: the daemon's state and operations (attach, detach, the table), its store,
//!   leftovers removed at start; [`api`]: its HTTP API on a unix socket; [`metrics`];
//!   [`config`]: its flags.

pub mod api;
pub mod apply;
pub mod config;
pub mod link;
pub mod manager;
pub mod metrics;
pub mod netns;
pub mod nft;
pub mod plan;
pub mod probe;
pub mod view;

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "net-manager";

/// MTU of instance links: room for the VXLAN header (50 bytes) inside a 1500-byte LAN.
pub const OVERLAY_MTU: u32 = 1450;
