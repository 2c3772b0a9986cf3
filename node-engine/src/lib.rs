//! Node engine: registration, MQTT, container and wasm runtimes, reports, logs, recovery.
//!
//! Not implemented yet: this crate is a placeholder until its issue (node engine issue). The layout is fixed
//! now so that every change has an obvious home (see `ARCHITECTURE.md`).

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "node-engine";
