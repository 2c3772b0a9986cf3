//! The submit path's span marks ([`canopy_core::span`]) read back from the daemons' logs:
//! where each millisecond between the REST call and `RUNNING` went.
//!
//! A daemon started with `--log=info,canopy_span=debug` writes one line per mark, e.g.
//! `… DEBUG canopy_span: hop="cluster.received" key=app.e2e.svc.e2e#3 at_us=1714000000123456`.
//! [`parse`] reads those lines from any number of logs, [`legs`] turns the marks of one job's
//! instances into the time spent between consecutive hops of [`Hop::PATH`].

use crate::stats::{Summary, summarize};
use canopy_core::span::Hop;
use std::collections::BTreeMap;

/// One mark: `hop` passed by instance `key` (`<job>#<n>`) at `at_us` (Unix µs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub hop: Hop,
    pub key: String,
    pub at_us: u64,
}

/// Every mark in `log` (other lines, and marks of unknown hops, are skipped).
pub fn parse(log: &str) -> Vec<Mark> {
    log.lines()
        .filter(|l| l.contains(canopy_core::span::TARGET))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                    .map(|v| v.trim_matches('"'))
            };
            let hop = field("hop")?;
            let hop = Hop::PATH.into_iter().find(|h| h.as_str() == hop)?;
            Some(Mark {
                hop,
                key: field("key")?.to_owned(),
                at_us: field("at_us")?.parse().ok()?,
            })
        })
        .collect()
}

/// One leg of the path: from the mark `from` to the next mark `to`.
#[derive(Debug, Clone)]
pub struct Leg {
    pub from: Hop,
    pub to: Hop,
    /// Milliseconds per instance, in instance order.
    pub ms: Vec<f64>,
}

impl Leg {
    pub fn label(&self) -> String {
        format!("{} → {}", self.from, self.to)
    }

    pub fn summary(&self) -> Summary {
        summarize(self.ms.clone())
    }
}

/// The legs of the instances whose key starts with `job#`, skipping the `skip` lowest
/// instance numbers (warm-ups) and any instance that lacks a mark. Where a hop was passed
/// twice (a status sent again after a reconnect) its first mark counts.
pub fn legs(marks: &[Mark], job: &str, skip: usize) -> Vec<Leg> {
    let prefix = format!("{job}#");
    let mut by_instance: BTreeMap<u32, BTreeMap<Hop, u64>> = BTreeMap::new();
    for m in marks {
        let Some(n) = m.key.strip_prefix(&prefix).and_then(|n| n.parse().ok()) else {
            continue;
        };
        let at = by_instance
            .entry(n)
            .or_default()
            .entry(m.hop)
            .or_insert(m.at_us);
        *at = (*at).min(m.at_us);
    }
    let complete: Vec<&BTreeMap<Hop, u64>> = by_instance
        .values()
        .skip(skip)
        .filter(|hops| hops.len() == Hop::PATH.len())
        .collect();
    Hop::PATH
        .windows(2)
        .map(|w| Leg {
            from: w[0],
            to: w[1],
            ms: complete
                .iter()
                .map(|hops| hops[&w[1]].saturating_sub(hops[&w[0]]) as f64 / 1000.0)
                .collect(),
        })
        .collect()
}

/// The job names (keys without `#n`) that have marks, in order.
pub fn jobs(marks: &[Mark]) -> Vec<String> {
    let mut jobs: Vec<String> = marks
        .iter()
        .filter_map(|m| m.key.rsplit_once('#').map(|(j, _)| j.to_owned()))
        .collect();
    jobs.sort();
    jobs.dedup();
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(hop: Hop, key: &str, at: u64) -> String {
        format!(
            "2026-12-03T10:00:00.000001Z DEBUG canopy_span: hop=\"{hop}\" key={key} at_us={at}\n"
        )
    }

    /// A log of instances `0..n` of `job`, each hop 1 ms (1000 µs) × its index after the last.
    fn log_of(job: &str, n: u32) -> String {
        let mut log = String::from("2026-12-03T10:00:00Z  INFO root: listening\n");
        for i in 0..n {
            let mut at = 1_000_000 * u64::from(i + 1);
            for (k, hop) in Hop::PATH.into_iter().enumerate() {
                at += 1000 * k as u64;
                log.push_str(&line(hop, &format!("{job}#{i}"), at));
            }
        }
        log
    }

    #[test]
    fn marks_are_read_back_from_a_daemon_log() {
        let log =
            log_of("a.e2e.idle.e2e", 1) + "garbage canopy_span: hop=\"nowhere\" key=x#1 at_us=1\n";
        let marks = parse(&log);
        assert_eq!(marks.len(), Hop::PATH.len());
        assert_eq!(marks[0].hop, Hop::RootAccepted);
        assert_eq!(marks[0].key, "a.e2e.idle.e2e#0");
        assert_eq!(marks[0].at_us, 1_000_000);
        assert_eq!(jobs(&marks), vec!["a.e2e.idle.e2e".to_owned()]);
    }

    #[test]
    fn legs_are_the_gaps_between_consecutive_hops_per_instance() {
        let mut log = log_of("a.e2e.idle.e2e", 3) + &log_of("a.e2e.tick.e2e", 2);
        // An incomplete instance and a status sent twice.
        log.push_str(&line(Hop::RootAccepted, "a.e2e.idle.e2e#9", 5));
        log.push_str(&line(Hop::RootVisible, "a.e2e.idle.e2e#2", 99_000_000));
        let marks = parse(&log);
        let legs = legs(&marks, "a.e2e.idle.e2e", 1);
        assert_eq!(legs.len(), Hop::PATH.len() - 1);
        assert_eq!(legs[0].label(), "root.accepted → root.sent");
        for (k, leg) in legs.iter().enumerate() {
            // Instances 1 and 2 (0 skipped as the warm-up, 9 incomplete).
            assert_eq!(leg.ms, vec![(k + 1) as f64; 2], "{}", leg.label());
        }
        assert_eq!(legs[10].summary().p50, 11.0);
    }
}
