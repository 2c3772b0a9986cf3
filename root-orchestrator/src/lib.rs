//! Root orchestrator: Oakestra-compatible REST API, auth, root scheduler, cluster link server, service IPs.
//!
//! Not implemented yet: this crate is a placeholder until its issue (root orchestrator issue). The layout is fixed
//! now so that every change has an obvious home (see `ARCHITECTURE.md`).

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "root-orchestrator";
