//! Cluster orchestrator: root link, MQTT broker and worker protocol, cluster scheduler,
//! failure handling.
//!
//! Done so far: [`scheduler`]. The rest arrives with the cluster orchestrator issue; the binary
//! says so when run.

pub mod scheduler;

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "cluster-orchestrator";
