//! Prometheus metrics of the net manager, served at `/metrics` on its socket.
//!
//! | metric | meaning |
//! |---|---|
//! | `canopy_net_instances_attached` | instances on this worker's overlay |
//! | `canopy_net_translations` | (virtual address, instance) pairs in the translation table |
//! | `canopy_net_table_updates_total` | translation tables applied |
//! | `canopy_net_table_update_seconds` | time to apply one (render + one nftables transaction) |
//! | `canopy_net_peers` | other workers in the view applied |
//! | `canopy_net_view_updates_total` | views applied (`PUT /view`) |
//! | `canopy_net_views_rejected_total` | views refused (a body that does not decode or check) |
//! | `canopy_net_peer_rtt_seconds{underlay}` | smoothed round-trip time to a peer (while known) |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

type Labels = canopy_daemon::metrics::Labels;

pub struct Metrics {
    registry: Registry,
    attached: Gauge,
    translations: Gauge,
    updates: Counter,
    update_seconds: Histogram,
    peers: Gauge,
    views: Counter,
    rejected: Counter,
    rtt: Family<Labels, Gauge<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("canopy_net");
        let attached = Gauge::default();
        let translations = Gauge::default();
        let updates = Counter::default();
        let update_seconds =
            Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]);
        let peers = Gauge::default();
        let views = Counter::default();
        let rejected = Counter::default();
        let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
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
        registry.register("peers", "Other workers in the view applied", peers.clone());
        registry.register("view_updates", "Views applied", views.clone());
        registry.register("views_rejected", "Views refused", rejected.clone());
        registry.register(
            "peer_rtt_seconds",
            "Smoothed round-trip time to a peer's underlay address",
            rtt.clone(),
        );
        Metrics {
            registry,
            attached,
            translations,
            updates,
            update_seconds,
            peers,
            views,
            rejected,
            rtt,
        }
    }
}

impl Metrics {
    pub fn set_sizes(&self, attached: usize, translations: usize, peers: usize) {
        self.attached.set(attached as i64);
        self.translations.set(translations as i64);
        self.peers.set(peers as i64);
    }

    pub fn table_updated(&self, took: Duration) {
        self.updates.inc();
        self.update_seconds.observe(took.as_secs_f64());
    }

    pub fn view_updated(&self) {
        self.views.inc();
    }

    pub fn view_rejected(&self) {
        self.rejected.inc();
    }

    /// The round-trip times known now (peers not in `rtts` have none).
    pub fn set_rtts(&self, rtts: &BTreeMap<Ipv4Addr, Duration>) {
        self.rtt.clear();
        for (underlay, d) in rtts {
            let labels = canopy_daemon::metrics::labels(&[("underlay", &underlay.to_string())]);
            self.rtt.get_or_create(&labels).set(d.as_secs_f64());
        }
    }

    pub fn render(&self) -> String {
        canopy_daemon::metrics::render(&self.registry)
    }
}
