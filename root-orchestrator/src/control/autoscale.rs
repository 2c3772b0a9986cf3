//! Autoscaling: the SLA's `autoscale {min, max, target_cpu_percent, target_memory_percent}`
//! kept by adding and removing instances from the use workers report. [`step`] is the pure
//! decision for one service, over its instances, what is remembered of it ([`Track`]) and
//! `now`; [`Root::autoscale`] runs it for every autoscaled service on each tick and carries
//! a decision out through the ordinary scale up and down (quota, placement, the event with
//! its reason, the feed).
//!
//! Use is what the clusters last reported for each RUNNING instance: CPU in percent of its
//! worker machine, memory in MB (taken as a percentage of the service's `memory`). Instances
//! in any other status carry no load but count as instances.
//!
//! | service | decision |
//! |---------|----------|
//! | no instances (not deployed, or emptied by hand) | nothing |
//! | fewer than `min` | add one at once (each tick), no window |
//! | more than `max` | remove one at once |
//! | a refusal (quota, addresses) less than the cooldown ago | nothing |
//! | a change less than the cooldown ago | nothing (the windows keep counting) |
//! | the running instances' average above a target for the up window, below `max`, none starting | add one |
//! | every target above what the running instances' use would be over one instance fewer, for the down window, above `min` | remove one: not RUNNING first, then the highest number |
//!
//! After each change both windows start again. Removing needs the use to fit in one instance
//! fewer, so a service does not shrink only to grow back; with the longer down window and the
//! cooldown, it does not flap. The windows are kept in memory only: a restarted root starts
//! them afresh (what it acted on, the instances, is stored as always).

use super::apps::stage_scale_down;
use super::state::{Change, State, event};
use super::{Error, Now, Result, Root};
use canopy_core::autoscale::{Autoscale, ResolvedWindows};
use canopy_core::{InstanceNumber, InstanceStatus, ServiceId, StatusClass};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One instance as the autoscaler sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    pub number: InstanceNumber,
    pub status: InstanceStatus,
    pub cpu_percent: f64,
    pub memory_mb: u64,
}

/// What [`step`] looks at for one service.
#[derive(Debug, Clone)]
pub(super) struct Input<'a> {
    pub policy: &'a Autoscale,
    pub windows: ResolvedWindows,
    /// The service's `memory` (MB), what `target_memory_percent` is a percentage of.
    pub memory_mb: u64,
    pub instances: Vec<Sample>,
}

/// What the autoscaler remembers of one service between ticks (in memory only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Track {
    /// Since when the average use has been above a target, without a break.
    above_since: Option<Instant>,
    /// Since when one instance fewer would have been enough, without a break.
    below_since: Option<Instant>,
    /// When the autoscaler last changed the service.
    last_change: Option<Instant>,
    /// When a change it decided was last refused (quota, addresses).
    last_refusal: Option<Instant>,
}

impl Track {
    /// The change decided at `now` could not be made: nothing is tried for a cooldown.
    pub fn refused(&mut self, now: Instant) {
        self.last_refusal = Some(now);
    }
}

/// A decision: one instance more or one fewer, and why (the event's `why`).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Step {
    Up {
        why: String,
    },
    Down {
        instance: InstanceNumber,
        why: String,
    },
}

/// One measured figure of the service against its target.
struct Figure {
    name: &'static str,
    target: f64,
    /// Summed over the running instances, in percent.
    sum: f64,
}

/// The decision for one service at `now`, and what to remember for the next one.
pub(super) fn step(input: &Input<'_>, track: Track, now: Instant) -> (Option<Step>, Track) {
    let p = input.policy;
    let n = input.instances.len() as u32;
    let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
    let within = |t: Option<Instant>, d: Duration| since(t).is_some_and(|e| e < d);
    if n == 0 {
        return (None, Track::default());
    }
    if within(track.last_refusal, input.windows.cooldown) {
        return (None, track);
    }
    let changed = Track {
        last_change: Some(now),
        ..Track::default()
    };
    if n < p.min {
        let why = format!("{n} instance(s), below min {}", p.min);
        return (Some(Step::Up { why }), changed);
    }
    if n > p.max {
        let why = format!("{n} instance(s), above max {}", p.max);
        let instance = to_remove(&input.instances);
        return (Some(Step::Down { instance, why }), changed);
    }
    let running: Vec<&Sample> = input
        .instances
        .iter()
        .filter(|i| i.status == InstanceStatus::Running)
        .collect();
    if running.is_empty() {
        // No use to go by: the windows start again when there is.
        let track = Track {
            above_since: None,
            below_since: None,
            ..track
        };
        return (None, track);
    }
    let figures = figures(input, &running);
    let r = running.len() as f64;
    let above = figures.iter().any(|f| f.sum / r > f.target);
    let fewer = f64::from(n - 1);
    let below = n > p.min && figures.iter().all(|f| f.sum / fewer < f.target);
    let track = Track {
        above_since: if above {
            track.above_since.or(Some(now))
        } else {
            None
        },
        below_since: if below {
            track.below_since.or(Some(now))
        } else {
            None
        },
        ..track
    };
    if within(track.last_change, input.windows.cooldown) {
        return (None, track);
    }
    let starting = input.instances.iter().any(|i| starting(i.status));
    let held = |t: Option<Instant>, d: Duration| since(t).filter(|e| *e >= d);
    if let Some(for_) = held(track.above_since, input.windows.up)
        && n < p.max
        && !starting
    {
        let why = figures
            .iter()
            .filter(|f| f.sum / r > f.target)
            .map(|f| {
                format!(
                    "{} {}% > target {}% for {}",
                    f.name,
                    pct(f.sum / r),
                    f.target,
                    secs(for_)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return (Some(Step::Up { why }), changed);
    }
    if let Some(for_) = held(track.below_since, input.windows.down) {
        let why = figures
            .iter()
            .map(|f| {
                format!(
                    "{} {}% over {n} instance(s), {}% over {}, < target {}% for {}",
                    f.name,
                    pct(f.sum / r),
                    pct(f.sum / fewer),
                    n - 1,
                    f.target,
                    secs(for_)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let instance = to_remove(&input.instances);
        return (Some(Step::Down { instance, why }), changed);
    }
    (None, track)
}

/// The figures the policy has targets for, summed over `running`.
fn figures(input: &Input<'_>, running: &[&Sample]) -> Vec<Figure> {
    let mut out = Vec::new();
    if let Some(t) = input.policy.target_cpu_percent {
        out.push(Figure {
            name: "cpu",
            target: f64::from(t),
            sum: running.iter().map(|i| i.cpu_percent.max(0.0)).sum(),
        });
    }
    if let Some(t) = input.policy.target_memory_percent
        && input.memory_mb > 0
    {
        let of_limit = |mb: u64| mb as f64 / input.memory_mb as f64 * 100.0;
        out.push(Figure {
            name: "memory",
            target: f64::from(t),
            sum: running.iter().map(|i| of_limit(i.memory_mb)).sum(),
        });
    }
    out
}

/// On its way to running: placed or being placed, being created.
fn starting(s: InstanceStatus) -> bool {
    s.class() == StatusClass::PositiveScheduling
        || matches!(s, InstanceStatus::Creating | InstanceStatus::Created)
}

/// The instance to remove: one that is not RUNNING if there is one, the highest number first.
fn to_remove(instances: &[Sample]) -> InstanceNumber {
    let pick = |running: bool| {
        instances
            .iter()
            .filter(|i| (i.status == InstanceStatus::Running) == running)
            .map(|i| i.number)
            .max()
    };
    pick(false).or(pick(true)).unwrap_or(InstanceNumber(0))
}

fn pct(v: f64) -> String {
    format!("{:.0}", v)
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

impl Root {
    /// Runs [`step`] for every autoscaled service and carries out what it decides, one commit
    /// per service; a refused change (quota, addresses) is an event of its own.
    pub(super) async fn autoscale(&self, st: &mut State, now: Now) -> Result<()> {
        let defaults = self.settings.autoscale;
        let mut decisions: Vec<(ServiceId, Step)> = Vec::new();
        {
            let mut tracks = self.autoscale_tracks();
            tracks.retain(|id, _| st.services.get(id).is_some_and(|s| s.autoscale.is_some()));
            for (id, s) in &st.services {
                let Some(policy) = &s.autoscale else {
                    continue;
                };
                // A rolling update owns the instance count (one over it while it replaces).
                if s.rollout.as_ref().is_some_and(|r| r.active()) {
                    continue;
                }
                let input = Input {
                    policy,
                    windows: policy.windows.or(defaults),
                    memory_mb: s.spec.resources.memory_mb,
                    instances: s
                        .instances
                        .values()
                        .map(|i| Sample {
                            number: i.number,
                            status: i.status,
                            cpu_percent: i.cpu_percent,
                            memory_mb: i.memory_mb,
                        })
                        .collect(),
                };
                let track = tracks.get(id).copied().unwrap_or_default();
                let (decision, track) = step(&input, track, now.at);
                tracks.insert(id.clone(), track);
                decisions.extend(decision.map(|d| (id.clone(), d)));
            }
        }
        for (id, decision) in decisions {
            let mut change = Change::new(st);
            let (what, why) = match &decision {
                Step::Up { why } => ("autoscale up", why.clone()),
                Step::Down { why, .. } => ("autoscale down", why.clone()),
            };
            tracing::info!(service = %id, %why, "{what}");
            let staged = match decision {
                Step::Up { why } => self
                    .stage_scale_up(st, &mut change, &id, (what, why), now)
                    .map(drop),
                Step::Down { instance, why } => {
                    stage_scale_down(st, &mut change, &id, instance, (what, why), now.unix)
                }
            };
            match staged {
                Ok(()) => {}
                Err(e @ (Error::QuotaExceeded { .. } | Error::Conflict { .. })) => {
                    tracing::warn!(service = %id, error = %e, "autoscale refused");
                    if let Some(t) = self.autoscale_tracks().get_mut(&id) {
                        t.refused(now.at);
                    }
                    change = Change::new(st);
                    let e = event(now.unix, None, what, why, format!("refused: {e}"));
                    change.record(st, &id, e)?;
                }
                Err(e) => return Err(e),
            }
            self.commit(st, change).await?;
        }
        Ok(())
    }

    fn autoscale_tracks(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceId, Track>> {
        self.autoscale
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
