//! Prometheus metrics of the root, served in text format on `--metrics-addr` at `/metrics`.
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `canopy_root_http_requests_total` | `method`, `route`, `status` | REST requests served |
//! | `canopy_root_schedule_decisions_total` | `result` (`placed`, `rejected`) | root scheduler runs |
//! | `canopy_root_reschedules_total` | | instances taken from one cluster and placed again |
//! | `canopy_root_clusters` | `state` (`active`, `inactive`) | registered clusters |
//! | `canopy_root_instances` | `status` | instances by Oakestra status |
//! | `canopy_root_service_addresses` | | service and instance addresses (10.30/16) in use |

use canopy_core::InstanceStatus;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

use canopy_daemon::metrics::{Labels, labels, set_gauges};

pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    reschedules: Counter,
    clusters: Family<Labels, Gauge>,
    instances: Family<Labels, Gauge>,
    addresses: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canopy_root");
        let requests = Family::<Labels, Counter>::default();
        let decisions = Family::<Labels, Counter>::default();
        let reschedules = Counter::default();
        let clusters = Family::<Labels, Gauge>::default();
        let instances = Family::<Labels, Gauge>::default();
        let addresses = Gauge::default();
        registry.register("http_requests", "REST requests served", requests.clone());
        registry.register(
            "schedule_decisions",
            "Root scheduler decisions",
            decisions.clone(),
        );
        registry.register(
            "reschedules",
            "Instances taken from a cluster and placed again",
            reschedules.clone(),
        );
        registry.register("clusters", "Registered clusters by state", clusters.clone());
        registry.register("instances", "Instances by status", instances.clone());
        registry.register(
            "service_addresses",
            "Service and instance addresses in use",
            addresses.clone(),
        );
        Metrics {
            registry,
            requests,
            decisions,
            reschedules,
            clusters,
            instances,
            addresses,
        }
    }
}

impl Metrics {
    pub fn request(&self, method: &str, route: &str, status: u16) {
        self.requests
            .get_or_create(&labels(&[
                ("method", method),
                ("route", route),
                ("status", &status.to_string()),
            ]))
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

    pub fn set_clusters(&self, active: i64, inactive: i64) {
        set_gauges(
            &self.clusters,
            "state",
            [("active", active), ("inactive", inactive)],
        );
    }

    /// Sets the instance gauge of every status (zero for the absent ones).
    pub fn set_instances(&self, by_status: &BTreeMap<InstanceStatus, i64>) {
        canopy_daemon::metrics::set_status_gauges(&self.instances, by_status);
    }

    /// The text exposition.
    pub fn set_addresses(&self, n: i64) {
        self.addresses.set(n);
    }

    pub fn render(&self) -> String {
        canopy_daemon::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.request("GET", "/api/applications", 200);
        m.schedule_decision(false);
        m.set_clusters(2, 1);
        m.set_instances(&BTreeMap::from([(InstanceStatus::Running, 3)]));
        let text = m.render();
        for line in [
            r#"canopy_root_http_requests_total{method="GET",route="/api/applications",status="200"} 1"#,
            r#"canopy_root_schedule_decisions_total{result="rejected"} 1"#,
            r#"canopy_root_clusters{state="active"} 2"#,
            r#"canopy_root_instances{status="RUNNING"} 3"#,
            r#"canopy_root_instances{status="FAILED"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
