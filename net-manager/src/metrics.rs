//! Prometheus metrics of the net manager, served at `/metrics` on its socket.
//!
//! | metric | meaning |
//! |---|---|
//! | `canopy_net_instances_attached` | instances on this worker's overlay |
//! | `canopy_net_translations` | (virtual address, instance) pairs in the translation table |
//! | `canopy_net_table_updates_total` | translation tables applied |
//! | `canopy_net_table_update_seconds` | time to apply one (render + one nftables transaction) |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

pub struct Metrics {
    registry: Registry,
    attached: Gauge,
    translations: Gauge,
    updates: Counter,
    update_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canopy_net");
        let attached = Gauge::default();
        let translations = Gauge::default();
        let updates = Counter::default();
        let update_seconds =
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]);
        registry.register(
            "instances_attached",
            "Instances on this worker's overlay",
            attached.clone(),
        );
        registry.register(
            "translations",
            "Pairs of virtual address and instance in the translation table",
            translations.clone(),
        );
        registry.register(
            "table_updates",
            "Translation tables applied",
            updates.clone(),
        );
        registry.register(
            "table_update_seconds",
            "Time to apply a translation table",
            update_seconds.clone(),
        );
        Metrics {
            registry,
            attached,
            translations,
            updates,
            update_seconds,
        }
    }
}

impl Metrics {
    pub fn set_sizes(&self, attached: usize, translations: usize) {
        self.attached.set(attached as i64);
        self.translations.set(translations as i64);
    }

    pub fn table_updated(&self, took: Duration, attached: usize, translations: usize) {
        self.updates.inc();
        self.update_seconds.observe(took.as_secs_f64());
        self.set_sizes(attached, translations);
    }

    pub fn render(&self) -> String {
        canopy_daemon::metrics::render(&self.registry)
    }
}
