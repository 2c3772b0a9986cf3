//! Root orchestrator: Oakestra-compatible REST API, auth, root scheduler, cluster link server,
//! service IPs.
//!
//! Done so far: [`scheduler`]. The API, auth, cluster link and address allocation are still to
//! come (root orchestrator issue); the binary says so when run.

pub mod scheduler;

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "root-orchestrator";
