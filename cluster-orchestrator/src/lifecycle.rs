//! The instance state machine (spec §7.4), as the cluster applies it. Pure: given the current
//! status and an event, it says the next status and what the control loop must do next.
//!
//! ```text
//! REQUESTED ──placed──▶ NODE_SCHEDULED ──worker──▶ CREATING/CREATED ──worker──▶ RUNNING
//!     │                      │                                                 │
//!     └─no worker fits──▶ NO_WORKER_CAPACITY / NO_QUALIFIED_WORKER_FOUND / NO_NODE_FOUND
//!                            (placed again when a worker fits)                  │
//! RUNNING ──exit 0, one_shot──▶ COMPLETED (terminal)                            │
//! any placed state ──worker says DEAD/FAILED/UNDEPLOYED──▶ DEAD/FAILED ──back-off──▶ placed again
//! any placed state ──worker lost──▶ FAILED ──at once──▶ placed again on another worker
//! any state ──undeploy from the root──▶ removed (the worker is told to delete it)
//! ```
//!
//! Restarts after a crash wait `min(1 s · 2^restarts, 60 s)`; the count resets once an
//! instance has run for [`STABLE_AFTER`].

use canopy_core::{InstanceStatus, StatusClass};
use std::time::Duration;

/// An instance that ran this long before dying starts its back-off from the beginning again.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The scheduler chose a worker.
    Placed,
    /// The scheduler found none; carries its negative status.
    NotPlaced(InstanceStatus),
    /// The instance's worker reported a status.
    Reported(InstanceStatus),
    /// The instance's worker disconnected or stopped reporting.
    WorkerLost,
}

/// What the control loop does after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: wait for the worker or the root.
    Wait,
    /// Place the instance again now (on another worker).
    PlaceNow,
    /// Place it again after this back-off.
    PlaceAfter(Duration),
    /// Keep trying to place it each tick.
    PlaceWhenPossible,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub status: InstanceStatus,
    pub next: Next,
    /// The worker may still hold a copy that must be deleted before placing again.
    pub delete_on_worker: bool,
}

/// Back-off before restart number `restarts` (0-based).
pub fn backoff(restarts: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(restarts.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// The transition for `event` in `current`; `None` when the event does not apply (a stale or
/// impossible report), which the caller ignores.
pub fn transition(current: InstanceStatus, event: &Event, restarts: u32) -> Option<Transition> {
    use InstanceStatus as S;
    let t = |status, next, delete_on_worker| {
        Some(Transition {
            status,
            next,
            delete_on_worker,
        })
    };
    if current.is_terminal() {
        return None;
    }
    match event {
        Event::Placed => t(S::NodeScheduled, Next::Wait, false),
        Event::NotPlaced(s) if s.class() == StatusClass::NegativeScheduling => {
            t(*s, Next::PlaceWhenPossible, false)
        }
        Event::NotPlaced(_) => None,
        Event::WorkerLost if placed(current) => t(S::Failed, Next::PlaceNow, false),
        Event::WorkerLost => None,
        // A worker reporting on an instance the cluster has not placed: stale.
        Event::Reported(_) if !placed(current) && !current.needs_rescheduling() => None,
        Event::Reported(r) => match r {
            S::Creating | S::Created | S::Running => {
                if current.needs_rescheduling() {
                    // Already given up on that copy (waiting for back-off): not taken back.
                    None
                } else {
                    t(*r, Next::Wait, false)
                }
            }
            S::Completed => t(S::Completed, Next::Wait, false),
            S::Dead | S::Failed | S::Undeployed if current.needs_rescheduling() => None,
            S::Dead | S::Failed => t(*r, Next::PlaceAfter(backoff(restarts)), true),
            S::Undeployed => t(S::Dead, Next::PlaceAfter(backoff(restarts)), true),
            _ => None,
        },
    }
}

/// The instance is (about to be) on a worker.
fn placed(s: InstanceStatus) -> bool {
    s.occupies_worker()
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStatus as S;

    fn next(current: S, e: Event) -> Option<(S, Next)> {
        transition(current, &e, 0).map(|t| (t.status, t.next))
    }

    #[test]
    fn happy_path() {
        assert_eq!(
            next(S::Requested, Event::Placed),
            Some((S::NodeScheduled, Next::Wait))
        );
        assert_eq!(
            next(S::NodeScheduled, Event::Reported(S::Running)),
            Some((S::Running, Next::Wait))
        );
        assert_eq!(
            next(S::Running, Event::Reported(S::Completed)),
            Some((S::Completed, Next::Wait))
        );
        // Terminal: nothing moves a completed instance.
        assert_eq!(next(S::Completed, Event::WorkerLost), None);
        assert_eq!(next(S::Completed, Event::Reported(S::Running)), None);
    }

    #[test]
    fn crashes_back_off_and_losses_move_at_once() {
        let t = transition(S::Running, &Event::Reported(S::Dead), 3).unwrap();
        assert_eq!(t.status, S::Dead);
        assert_eq!(t.next, Next::PlaceAfter(Duration::from_secs(8)));
        assert!(t.delete_on_worker);
        assert_eq!(
            next(S::Running, Event::WorkerLost),
            Some((S::Failed, Next::PlaceNow))
        );
        assert_eq!(
            next(S::Running, Event::Reported(S::Undeployed)).map(|x| x.0),
            Some(S::Dead)
        );
        // A late report from the copy already given up on changes nothing.
        assert_eq!(next(S::Dead, Event::Reported(S::Running)), None);
        assert_eq!(next(S::Failed, Event::Reported(S::Dead)), None);
        assert_eq!(next(S::Requested, Event::Reported(S::Running)), None);
    }

    #[test]
    fn no_place_waits_for_capacity() {
        assert_eq!(
            next(S::Requested, Event::NotPlaced(S::NoWorkerCapacity)),
            Some((S::NoWorkerCapacity, Next::PlaceWhenPossible))
        );
        assert_eq!(next(S::Requested, Event::NotPlaced(S::Running)), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let seq: Vec<u64> = (0..9).map(|i| backoff(i).as_secs()).collect();
        assert_eq!(seq, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
