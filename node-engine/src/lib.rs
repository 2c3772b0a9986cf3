//! Node engine: registration with a cluster, the MQTT worker protocol, containerd and wasmtime
//! runtimes behind one trait, reports, logs, and recovery after a restart or an offline boot.

pub mod api;
pub mod config;
pub mod engine;
pub mod host;
pub mod logs;
pub mod metrics;
pub mod overlay;
pub mod probes;
pub mod report;
pub mod runtime;
pub mod server;
pub mod uplink;
pub mod virtual_workers;

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "node-engine";
