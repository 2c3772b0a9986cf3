//! Net manager: bridge, veth, inter-node tunnel, service-IP translation with nftables.
//!
//! The cluster sends each worker its node configuration (subnet and underlay address) and
//! the overlay view (every worker, every service with its RUNNING instances); the node engine
//! relays both to this daemon's local API (`PUT /node`, `PUT /view`) and attaches instances
//! (`POST /instances`). From the view the daemon derives the translation table, the peers of
//! its VXLAN tunnel and the service names; the closest addresses follow round-trip times it
//! measures to the other workers. With `--same-host`, several workers share one network
//! namespace (`canopy up`): no tunnel, the kernel routes between their bridges. Names are
//! kept on a watch channel for the resolver ([`dns`]).
//!
//! Layout:
//! - [`link`]: links, addresses and routes through rtnetlink in any network namespace: the
//!   worker's bridge, an instance's veth pair (its bridge port in hairpin mode), the VXLAN
//!   tunnel and its peers.
//! - [`nft`]: the translation table (virtual address → instances' addresses) rendered as one
//!   nftables table, replaced atomically; a connection translated to its own source (an
//!   instance reaching itself) is masqueraded.
//! - [`apply`]: running `nft` in a namespace.
//! - [`firewall`]: the bridge's and tunnel's traffic accepted at the top of iptables'
//!   `filter FORWARD` chain (run in a namespace like `nft`), so a policy of drop there
//!   (Docker's) does not cut the overlay off.
//! - [`plan`]: the worker's address plan (tunnel, bridge, instances in a /26), the tunnel's
//!   MAC, and the names of what the net manager makes.
//! - [`view`]: the overlay view checked against this worker and turned into translations,
//!   names and peers; the closest ranking (pure).
//! - [`probe`]: UDP echo between workers' underlay addresses, a round-trip time per peer.
//! - [`netns`]: instance namespaces pinned on files, ready before the workload starts.
//! - [`manager`]: the daemon's state and operations (node, attach, detach, view), its store,
//!   leftovers removed at start; [`api`]: its HTTP API on a unix socket; [`metrics`];
//!   [`config`]: its flags.
//! - [`dns`]: the overlay's name resolver: job names of services → service IPs, other names
//!   forwarded to the host's resolvers.

pub mod api;
pub mod apply;
pub mod config;
pub mod dns;
pub mod firewall;
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
