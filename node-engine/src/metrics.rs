//! Prometheus metrics of the node engine, served at `/metrics` on `--api-addr`.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `canopy_node_instances` | `status` | instances on this worker by Oakestra status |
//! | `canopy_node_runtime_operation_seconds` | `runtime`, `op`, `result` | start (including pull/import), stop, remove, recover |
//! | `canopy_node_mqtt_messages_total` | `direction`, `kind` | worker protocol messages |
//! | `canopy_node_untracked_workloads_removed_total` | `runtime` | workloads found in the engine's namespace that no instance named, removed by the periodic check (each one is a bug) |

use canopy_core::InstanceStatus;
use canopy_daemon::metrics::{Labels, labels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Metrics {
    registry: Registry,
    instances: Family<Labels, Gauge>,
    operations: Family<Labels, Histogram>,
    mqtt: Family<Labels, Counter>,
    untracked: Family<Labels, Counter>,
}

fn op_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canopy_node");
        let instances = Family::<Labels, Gauge>::default();
        let operations =
            Family::<Labels, Histogram>::new_with_constructor(op_histogram as fn() -> Histogram);
        let mqtt = Family::<Labels, Counter>::default();
        let untracked = Family::<Labels, Counter>::default();
        registry.register("instances", "Instances by status", instances.clone());
        registry.register(
            "runtime_operation_seconds",
            "Latency of runtime operations",
            operations.clone(),
        );
        registry.register("mqtt_messages", "Worker protocol messages", mqtt.clone());
        registry.register(
            "untracked_workloads_removed",
            "Workloads no instance named, removed by the periodic check",
            untracked.clone(),
        );
        Metrics {
            registry,
            instances,
            operations,
            mqtt,
            untracked,
        }
    }
}

impl Metrics {
    pub fn operation(&self, runtime: &str, op: &str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.operations
            .get_or_create(&labels(&[
                ("runtime", runtime),
                ("op", op),
                ("result", result),
            ]))
            .observe(took.as_secs_f64());
    }

    pub fn mqtt_message(&self, direction: &str, kind: &str) {
        self.mqtt
            .get_or_create(&labels(&[("direction", direction), ("kind", kind)]))
            .inc();
    }

    pub fn untracked_removed(&self, runtime: &str) {
        self.untracked
            .get_or_create(&labels(&[("runtime", runtime)]))
            .inc();
    }

    pub fn set_instances(&self, by_status: &BTreeMap<InstanceStatus, i64>) {
        canopy_daemon::metrics::set_status_gauges(&self.instances, by_status);
    }

    pub fn render(&self) -> String {
        canopy_daemon::metrics::render(&self.registry)
    }
}
