//! Cluster orchestrator: the root link, the MQTT broker and worker protocol, node registration,
//! the cluster scheduler, failure detection and rescheduling.
//!
//! - [`config`]: settings (defaults, file, environment, flags);
//! - [`server`]: start-up and serving;
//! - [`api`]: node registration, status, health, `/metrics` (HTTP);
//! - [`install`]: the worker installer (`/install.sh`, node engine binaries, checksums);
//! - [`broker`]: the embedded broker (mqtt5, per-worker topic rules) or an external Mosquitto
//!   (worker credentials);
//! - [`mqtt`]: the cluster's MQTT client: decoding, dispatch, MQTT metrics;
//! - [`control`]: workers, services, instances, placement, failure handling, reports (one
//!   file per concept, listed in its module docs);
//! - [`lifecycle`]: the instance state machine;
//! - [`scheduler`]: the cluster scheduler, a pure function;
//! - [`uplink`]: the root link client;
//! - [`model`]: the stored documents;
//! - [`metrics`]: Prometheus metrics.

pub mod api;
pub mod broker;
pub mod config;
pub mod control;
pub mod install;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod scheduler;
pub mod server;
pub mod uplink;

/// The component's name as it appears in logs and `--version`.
pub const COMPONENT: &str = "cluster-orchestrator";
