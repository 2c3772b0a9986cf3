//! Cluster orchestrator: root link, MQTT broker and worker protocol, cluster scheduler, failure handling.
//!
//! Not implemented yet: this crate is a placeholder until its issue (cluster orchestrator issue). The layout is fixed
//! now so that every change has an obvious home (see `ARCHITECTURE.md`).

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "cluster-orchestrator";
