//! Net manager: bridge, veth, inter-node tunnel, service-IP translation with nftables.
//!
//! Not implemented yet: this crate is a placeholder until its issue (networking issue). The layout is fixed
//! now so that every change has an obvious home (see `ARCHITECTURE.md`).

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "net-manager";
