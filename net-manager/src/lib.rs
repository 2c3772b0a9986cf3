//! Net manager: bridge, veth, inter-node tunnel, service-IP translation with nftables.
//!
//! Work in progress (the overlay issue): the data path exists and is tested in namespaces (one
//! worker, and two workers over VXLAN); the daemon and the table updates from the cluster do
//! not yet, so `net-manager` the binary still says so and node engines use the host's
//! network.
//!
//! Layout:
//! - [`link`]: links, addresses and routes through rtnetlink in any network namespace: the
//!   worker's bridge, an instance's veth pair, the VXLAN tunnel and its peers.
//! - [`nft`]: the translation table (virtual address → instances' addresses) rendered as one
//!   nftables table, replaced atomically.
//! - [`apply`]: running `nft` in a namespace.

pub mod apply;
pub mod link;
pub mod nft;

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "net-manager";

/// MTU of instance links: room for the VXLAN header (50 bytes) inside a 1500-byte LAN.
pub const OVERLAY_MTU: u32 = 1450;
