//! Prometheus metrics of the cluster, served in text format at `/metrics` on the cluster's API
//! address.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `canopy_cluster_workers` | `state` (`active`, `lost`) | registered workers |
//! | `canopy_cluster_instances` | `status` | instances by Oakestra status |
//! | `canopy_cluster_mqtt_messages_total` | `direction`, `kind` | worker protocol messages |
//! | `canopy_cluster_schedule_decisions_total` | `result` | cluster scheduler runs |
//! | `canopy_cluster_reschedules_total` | | instances placed again after a crash or worker loss |
//! | `canopy_cluster_worker_loss_detection_seconds` | | last message of a worker → declared lost |

use canopy_core::InstanceStatus;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::time::Duration;

use canopy_daemon::metrics::{Labels, labels, set_gauges};

pub struct Metrics {
    registry: Registry,
    workers: Family<Labels, Gauge>,
    instances: Family<Labels, Gauge>,
    mqtt: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    reschedules: Counter,
    detection: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canopy_cluster");
        let workers = Family::<Labels, Gauge>::default();
        let instances = Family::<Labels, Gauge>::default();
        let mqtt = Family::<Labels, Counter>::default();
        let decisions = Family::<Labels, Counter>::default();
        let reschedules = Counter::default();
        let detection = Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0]);
        registry.register("workers", "Registered workers by state", workers.clone());
        registry.register("instances", "Instances by status", instances.clone());
        registry.register("mqtt_messages", "Worker protocol messages", mqtt.clone());
        registry.register(
            "schedule_decisions",
            "Cluster scheduler decisions",
            decisions.clone(),
        );
        registry.register(
            "reschedules",
            "Instances placed again after a crash or a worker loss",
            reschedules.clone(),
        );
        registry.register(
            "worker_loss_detection_seconds",
            "Time from a worker's last message to its being declared lost",
            detection.clone(),
        );
        Metrics {
            registry,
            workers,
            instances,
            mqtt,
            decisions,
            reschedules,
            detection,
        }
    }
}

impl Metrics {
    pub fn mqtt_message(&self, direction: &str, kind: &str) {
        self.mqtt
            .get_or_create(&labels(&[("direction", direction), ("kind", kind)]))
            .inc();
    }

    pub fn schedule_decision(&self, placed: bool) {
        let result = if placed { "placed" } else { "rejected" };
        self.decisions
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    pub fn reschedule(&self) {
        self.reschedules.inc();
    }

    pub fn worker_lost(&self, since_last_message: Duration) {
        self.detection.observe(since_last_message.as_secs_f64());
    }

    pub fn set_workers(&self, active: i64, lost: i64) {
        set_gauges(&self.workers, "state", [("active", active), ("lost", lost)]);
    }

    pub fn set_instances(&self, by_status: &BTreeMap<InstanceStatus, i64>) {
        canopy_daemon::metrics::set_status_gauges(&self.instances, by_status);
    }

    pub fn render(&self) -> String {
        canopy_daemon::metrics::render(&self.registry)
    }
}
