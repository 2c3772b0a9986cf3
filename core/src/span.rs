//! Marks along the submit path: where each millisecond of a new instance's way from the REST
//! call to `RUNNING` goes.
//!
//! Each daemon calls [`mark`] as a message about one instance arrives or leaves at one hop of
//! the path ([`Hop`], in [`Hop::PATH`] order: root → gRPC → cluster → MQTT → engine → runtime
//! and back). A mark is one `tracing` event at `DEBUG` on target `canopy_span` with the fields
//! `hop`, `key` (`<job name>#<instance>`) and `at_us` (Unix time in microseconds from the
//! system clock), e.g. `hop="cluster.received" key=app.ns.svc.ns#3 at_us=1714000000123456`.
//! Every process of one machine reads the same wall clock, so marks from different daemons
//! compare: the stack benchmark (`e2e/benches/stack.rs`, section `latency`) starts the
//! daemons with `--log=info,canopy_span=debug` and subtracts consecutive marks of one key.
//!
//! It costs nothing unless the `canopy_span=debug` filter is on: the event is skipped (the
//! clock not even read) by tracing's per-callsite check, and callers that need a lookup to
//! name the job first ask [`enabled`]. This is the one place `core` reads a clock; the event
//! goes wherever the process routes tracing.

use std::fmt::Display;
use std::time::{SystemTime, UNIX_EPOCH};

/// The tracing target of every mark.
pub const TARGET: &str = "canopy_span";

/// One hop of the submit path, where a mark is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hop {
    /// Root: the scale-up is staged and in memory, its write queued (`POST …/instance`).
    RootAccepted,
    /// Root: the deploy command is handed to the cluster's gRPC session stream.
    RootSent,
    /// Cluster: the deploy command arrived over gRPC.
    ClusterReceived,
    /// Cluster: the committed `control/deploy` is handed to the MQTT client.
    ClusterPublished,
    /// Engine: a `control/deploy` was decoded.
    EngineReceived,
    /// Engine: the runtime is about to be asked to start the workload.
    EngineStarting,
    /// Engine: the runtime says the workload started.
    EngineStarted,
    /// Engine: the `RUNNING` job status is handed to the MQTT client.
    EnginePublished,
    /// Cluster: the worker's `RUNNING` job status arrived over MQTT.
    ClusterStatus,
    /// Cluster: the `RUNNING` instance report is handed to the root's gRPC session.
    ClusterReported,
    /// Root: the cluster's `RUNNING` report arrived.
    RootReport,
    /// Root: the `RUNNING` status is in the root's memory (what `GET /api/services` shows).
    RootVisible,
}

impl Hop {
    /// Every hop, in the order a new instance passes them.
    pub const PATH: [Hop; 12] = [
        Hop::RootAccepted,
        Hop::RootSent,
        Hop::ClusterReceived,
        Hop::ClusterPublished,
        Hop::EngineReceived,
        Hop::EngineStarting,
        Hop::EngineStarted,
        Hop::EnginePublished,
        Hop::ClusterStatus,
        Hop::ClusterReported,
        Hop::RootReport,
        Hop::RootVisible,
    ];

    /// The `hop` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Hop::RootAccepted => "root.accepted",
            Hop::RootSent => "root.sent",
            Hop::ClusterReceived => "cluster.received",
            Hop::ClusterPublished => "cluster.published",
            Hop::EngineReceived => "engine.received",
            Hop::EngineStarting => "engine.starting",
            Hop::EngineStarted => "engine.started",
            Hop::EnginePublished => "engine.published",
            Hop::ClusterStatus => "cluster.status",
            Hop::ClusterReported => "cluster.reported",
            Hop::RootReport => "root.report",
            Hop::RootVisible => "root.visible",
        }
    }
}

impl Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether marks are recorded (the `canopy_span=debug` filter is on).
pub fn enabled() -> bool {
    tracing::enabled!(target: "canopy_span", tracing::Level::DEBUG)
}

/// Unix time now in microseconds (0 before 1970).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Marks instance `instance` of job `job` passing `hop` now.
pub fn mark(hop: Hop, job: &(impl Display + ?Sized), instance: u32) {
    tracing::debug!(
        target: "canopy_span",
        hop = hop.as_str(),
        key = %format_args!("{job}#{instance}"),
        at_us = now_us(),
    );
}

/// Marks instance `instance` of job `job` passing `hop` at `at_us` (from [`now_us`], read
/// when the message arrived, where the job's name is known only later).
pub fn mark_at(hop: Hop, job: &(impl Display + ?Sized), instance: u32, at_us: u64) {
    tracing::debug!(
        target: "canopy_span",
        hop = hop.as_str(),
        key = %format_args!("{job}#{instance}"),
        at_us,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_lists_every_hop_once_with_distinct_names() {
        let names: std::collections::BTreeSet<&str> =
            Hop::PATH.iter().map(|h| h.as_str()).collect();
        assert_eq!(names.len(), Hop::PATH.len());
        assert!(Hop::PATH.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Hop::PATH[0].to_string(), "root.accepted");
    }

    #[test]
    fn marks_without_a_subscriber_do_nothing() {
        assert!(!enabled());
        mark(Hop::RootSent, "a.b.c.d", 0);
        mark_at(Hop::RootReport, &String::from("a.b.c.d"), 1, now_us());
        assert!(now_us() > 1_600_000_000_000_000);
    }
}
