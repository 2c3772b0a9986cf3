//! Root orchestrator: the Oakestra-compatible REST API, auth, the root scheduler, the cluster
//! link server and service addresses.
//!
//! - [`config`]: flags and environment;
//! - [`server`]: start-up (store, secrets, admin user) and serving on bound listeners;
//! - [`api`]: the REST API (handlers, views, OpenAPI);
//! - [`auth`]: passwords, tokens, join tokens;
//! - [`control`]: the control plane state, placement and failover;
//! - [`scheduler`]: the root scheduler, a pure function;
//! - [`link`]: the gRPC cluster link server;
//! - [`model`]: the stored documents;
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod auth;
pub mod config;
pub mod control;
pub mod link;
pub mod metrics;
pub mod model;
pub mod scheduler;
pub mod server;

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "root-orchestrator";
