//! Rolling updates (`PUT /api/service/<id>`): a changed service gets the next revision of its
//! spec, and its instances are replaced one at a time: an instance of the new revision is
//! added, and only when it is ready (RUNNING for `min_ready_secs`) is an old one removed. A
//! new instance that fails, or is not ready within `deadline_secs`, turns the update into a
//! rollback: the old revision becomes current again and the instances are moved back the same
//! way. The service keeps its rr_ip throughout; one update runs at a time.
//!
//! Each step is decided by the pure [`step`] over the service's instances and `now`; the
//! periodic [`Root::advance_rollouts`] stages what it says (through the same scale-up and
//! scale-down staging as the API) and records it as the service's events.

use super::apps::{owned_service, stage_new_instance, stage_removal};
use super::state::{Change, InstanceKey, State, event};
use super::{Caller, Error, Now, Result, Root};
use crate::model::{Instance, Rollout, RolloutState};
use canopy_core::{InstanceNumber, InstanceStatus, ServiceId};

/// What a rollout does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A new instance is on its way: wait for it.
    Wait,
    /// Add an instance of the current revision.
    Add,
    /// Remove this instance of the old revision.
    Remove(InstanceNumber),
    /// A new instance failed or was late: go back (or, already going back, give up).
    Abort(String),
    /// Every instance runs the current revision.
    Finish,
}

/// Whether an instance of the current revision is ready: RUNNING, its readiness probe
/// passing (always, without one), for `min_ready_secs` since its last report.
fn ready(i: &Instance, r: &Rollout, now: f64) -> bool {
    i.status == InstanceStatus::Running && i.ready && now - i.updated_at >= r.min_ready_secs
}

fn failed(i: &Instance) -> bool {
    matches!(
        i.status,
        InstanceStatus::Failed | InstanceStatus::Dead | InstanceStatus::Completed
    )
}

/// The next step of `r` for a service at `revision` with these instances. Stopped instances
/// take no part (they start later with the spec of their revision).
pub fn step(r: &Rollout, revision: u32, instances: &[&Instance], now: f64) -> Step {
    let live: Vec<&&Instance> = instances
        .iter()
        .filter(|i| i.status != InstanceStatus::Stopped)
        .collect();
    let (new, old): (Vec<&&Instance>, Vec<&&Instance>) =
        live.iter().partition(|i| i.revision == revision);
    // An old instance that does not run serves nothing: it goes first (a crashed one, or
    // during a rollback the instance that failed).
    if let Some(i) = old.iter().find(|i| i.status != InstanceStatus::Running) {
        return Step::Remove(i.number);
    }
    let pending: Vec<&&&Instance> = new.iter().filter(|i| !ready(i, r, now)).collect();
    if let Some(i) = pending.iter().find(|i| failed(i)) {
        let detail = if i.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", i.detail)
        };
        return Step::Abort(format!(
            "instance {} of revision {revision} is {}{detail}",
            i.number, i.status
        ));
    }
    let since = |i: &Instance| match r.waiting {
        Some((n, at)) if n == i.number.0 => at,
        _ => i.updated_at,
    };
    if let Some(i) = pending.iter().find(|i| now - since(i) > r.deadline_secs) {
        let probe = if i.status == InstanceStatus::Running && !i.ready {
            ", its readiness probe not passing"
        } else {
            ""
        };
        return Step::Abort(format!(
            "instance {} of revision {revision} was not ready within {} s (it is {}{probe})",
            i.number, r.deadline_secs, i.status
        ));
    }
    if !pending.is_empty() {
        return Step::Wait;
    }
    match old.iter().min_by_key(|i| i.number) {
        None => Step::Finish,
        Some(i) if live.len() as u32 > r.replicas => Step::Remove(i.number),
        Some(_) => Step::Add,
    }
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub enum Updated {
    /// The service is as asked already: nothing changes.
    Unchanged,
    /// A rolling update to this revision started.
    Started(u32),
}

impl Root {
    /// Updates service `id` to the microservice `ms` of its application `app` (as an SLA
    /// gives it; validated by the caller): unchanged, or a rolling update starts. Refused
    /// while one runs, and for what cannot change in place (its name, its pinned addresses).
    pub async fn update_service(
        &self,
        caller: &Caller,
        id: &str,
        app: &canopy_sla::Application,
        ms: &canopy_sla::Microservice,
    ) -> Result<Updated> {
        let now = Now::read();
        let mut st = self.state.lock().await;
        let (key, s) = owned_service(&st, caller, id)?;
        let spec =
            canopy_sla::spec::service_spec(app, ms).map_err(|message| Error::Unprocessable {
                field: "body".into(),
                message,
            })?;
        let unchangeable = |field: &str, message: String| Error::Conflict {
            field: field.into(),
            message,
        };
        if spec.job_name != s.spec.job_name {
            return Err(unchangeable(
                "microservice_name",
                format!(
                    "is {}: a service keeps its name (and namespace) in an update",
                    s.spec.job_name
                ),
            ));
        }
        if spec.rr_ip.is_some_and(|ip| ip != s.rr_ip) {
            return Err(unchangeable(
                "addresses.rr_ip",
                format!("is {}: a service keeps its rr_ip in an update", s.rr_ip),
            ));
        }
        if spec.closest_ip != s.spec.closest_ip {
            return Err(unchangeable(
                "addresses.closest_ip",
                "a service keeps its closest_ip in an update".into(),
            ));
        }
        if let Some(r) = s.rollout.as_ref().filter(|r| r.active()) {
            return Err(Error::Conflict {
                field: "service".into(),
                message: format!(
                    "an update of this service is {} (revision {}, {} of {} replaced): wait for it (canopy rollout status)",
                    r.state.as_str().replace('_', " "),
                    s.revision,
                    r.replaced,
                    r.replicas
                ),
            });
        }
        let mut current = s.spec.clone();
        current.rr_ip = spec.rr_ip;
        if current == spec {
            return Ok(Updated::Unchanged);
        }
        let sla = serde_json::to_value(ms)
            .map_err(|e| canopy_store::StoreError::Backend(e.to_string()))?;
        let revision = s.revision.max(s.rollout.as_ref().map_or(0, |r| r.from)) + 1;
        let replicas = s
            .instances
            .values()
            .filter(|i| i.status != InstanceStatus::Stopped)
            .count() as u32;
        let mut doc = s.document();
        doc.rollout = Some(Rollout {
            from: s.revision,
            from_spec: s.spec.clone(),
            from_sla: s.sla.clone(),
            replicas,
            state: RolloutState::Progressing,
            started_at: now.unix,
            finished_at: None,
            reason: String::new(),
            replaced: 0,
            deadline_secs: self.settings.rollout_deadline.as_secs_f64(),
            min_ready_secs: self.settings.rollout_min_ready.as_secs_f64(),
            waiting: None,
        });
        doc.spec = spec;
        doc.sla = sla;
        doc.revision = revision;
        let mut change = Change::new(&st);
        change.put_service(key.clone(), doc)?;
        let why = format!("requested by {}", caller.name);
        let outcome = format!(
            "rolling {replicas} instance(s) from revision {} to {revision}",
            s.revision
        );
        change.record(&st, &key, event(now.unix, None, "update", why, outcome))?;
        self.commit(&mut st, change).await?;
        Ok(Updated::Started(revision))
    }

    /// One step of every running rollout (from the ticker).
    pub async fn advance_rollouts(&self) -> Result<()> {
        let now = Now::read();
        let mut st = self.state.lock().await;
        let due: Vec<(ServiceId, Step)> = st
            .services
            .iter()
            .filter_map(|(id, s)| {
                let r = s.rollout.as_ref().filter(|r| r.active())?;
                let instances: Vec<&Instance> = s.instances.values().collect();
                match step(r, s.revision, &instances, now.unix) {
                    Step::Wait => None,
                    other => Some((id.clone(), other)),
                }
            })
            .collect();
        for (id, step) in due {
            let mut change = Change::new(&st);
            self.stage_step(&st, &mut change, &id, step, now)?;
            self.commit(&mut st, change).await?;
        }
        Ok(())
    }

    /// Stages one step of the rollout of service `id`.
    fn stage_step(
        &self,
        st: &State,
        change: &mut Change,
        id: &ServiceId,
        step: Step,
        now: Now,
    ) -> Result<()> {
        let Some(s) = st.services.get(id) else {
            return Ok(());
        };
        let Some(r) = s.rollout.clone() else {
            return Ok(());
        };
        let mut doc = s.document();
        let mut rollout = r.clone();
        let what = if r.state == RolloutState::RollingBack {
            "rollback"
        } else {
            "rollout"
        };
        match step {
            Step::Wait => return Ok(()),
            Step::Add => {
                let (key, inst) = stage_new_instance(self, st, change, id, s, now)?;
                rollout.waiting = Some((key.number.0, now.unix));
                doc.next_instance = key.number.0 + 1;
                let outcome = format!(
                    "instance {} of revision {} added: {}",
                    key.number,
                    s.revision,
                    super::apps::placed(&inst)
                );
                let why = format!("replacing revision {}", r.from);
                change.record(
                    st,
                    id,
                    event(now.unix, Some(key.number), what, why, outcome),
                )?;
                change.put_instance(key, inst)?;
            }
            Step::Remove(n) => {
                let Some(inst) = s.instances.get(&n) else {
                    return Ok(());
                };
                stage_removal(change, &InstanceKey::new(id.clone(), n), inst)?;
                rollout.replaced += 1;
                let why = if inst.status == InstanceStatus::Running {
                    format!("a ready instance of revision {} took its place", s.revision)
                } else {
                    format!("of revision {} and {}", inst.revision, inst.status)
                };
                let outcome = format!("instance {n} removed");
                change.record(st, id, event(now.unix, Some(n), what, why, outcome))?;
            }
            Step::Abort(reason) if r.state == RolloutState::Progressing => {
                // Back to the old revision, the same way; the failed one becomes "from".
                doc.spec = r.from_spec.clone();
                doc.sla = r.from_sla.clone();
                doc.revision = r.from;
                rollout.from = s.revision;
                rollout.from_spec = s.spec.clone();
                rollout.from_sla = s.sla.clone();
                rollout.state = RolloutState::RollingBack;
                rollout.reason = reason.clone();
                rollout.replaced = 0;
                rollout.waiting = None;
                let outcome = format!("rolling back to revision {}", r.from);
                change.record(st, id, event(now.unix, None, "rollback", reason, outcome))?;
            }
            Step::Abort(reason) => {
                rollout.state = RolloutState::Failed;
                rollout.finished_at = Some(now.unix);
                rollout.reason = format!("{}; then the rollback failed: {reason}", r.reason);
                let outcome = "the rollback stopped: nothing more is done until the next update";
                change.record(st, id, event(now.unix, None, "rollback", reason, outcome))?;
            }
            Step::Finish => {
                let (state, outcome) = if r.state == RolloutState::RollingBack {
                    (
                        RolloutState::RolledBack,
                        format!("rolled back: every instance runs revision {}", s.revision),
                    )
                } else {
                    (
                        RolloutState::Complete,
                        format!("complete: every instance runs revision {}", s.revision),
                    )
                };
                rollout.state = state;
                rollout.finished_at = Some(now.unix);
                rollout.waiting = None;
                let why = format!("{} instance(s) replaced", r.replaced);
                change.record(st, id, event(now.unix, None, what, why, outcome))?;
            }
        }
        doc.rollout = Some(rollout);
        change.put_service(id.clone(), doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn rollout(state: RolloutState, replicas: u32) -> Rollout {
        Rollout {
            from: 0,
            from_spec: canopy_core::ServiceSpec::new(
                canopy_core::JobName::new("a", "b", "c", "d").unwrap(),
                canopy_core::Virtualization::Container,
                "img",
            ),
            from_sla: serde_json::Value::Null,
            replicas,
            state,
            started_at: 0.0,
            finished_at: None,
            reason: String::new(),
            replaced: 0,
            deadline_secs: 60.0,
            min_ready_secs: 5.0,
            waiting: None,
        }
    }

    fn inst(n: u32, revision: u32, status: InstanceStatus, since: f64) -> Instance {
        let mut i = Instance::new(InstanceNumber(n), Ipv4Addr::new(10, 30, 0, n as u8), since);
        i.status = status;
        i.revision = revision;
        i
    }

    use InstanceStatus::{Creating, Failed, Running, Stopped};

    fn run(r: &Rollout, list: &[Instance], now: f64) -> Step {
        let refs: Vec<&Instance> = list.iter().collect();
        step(r, 1, &refs, now)
    }

    #[test]
    fn one_new_instance_at_a_time_and_an_old_one_goes_only_when_it_is_ready() {
        let r = rollout(RolloutState::Progressing, 2);
        let old = [inst(0, 0, Running, 0.0), inst(1, 0, Running, 0.0)];
        assert_eq!(run(&r, &old, 100.0), Step::Add);
        let mut with_new = old.to_vec();
        with_new.push(inst(2, 1, Creating, 100.0));
        assert_eq!(run(&r, &with_new, 101.0), Step::Wait);
        with_new[2] = inst(2, 1, Running, 102.0);
        assert_eq!(
            run(&r, &with_new, 104.0),
            Step::Wait,
            "not RUNNING for 5 s yet"
        );
        assert_eq!(run(&r, &with_new, 107.5), Step::Remove(InstanceNumber(0)));
        let after = [inst(1, 0, Running, 0.0), inst(2, 1, Running, 102.0)];
        assert_eq!(run(&r, &after, 108.0), Step::Add, "back at 2: the next one");
        let done = [inst(2, 1, Running, 102.0), inst(3, 1, Running, 110.0)];
        assert_eq!(run(&r, &done, 120.0), Step::Finish);
    }

    #[test]
    fn a_new_instance_whose_readiness_probe_fails_is_not_ready() {
        let r = rollout(RolloutState::Progressing, 1);
        let mut list = vec![inst(0, 0, Running, 0.0), inst(1, 1, Running, 10.0)];
        list[1].ready = false;
        assert_eq!(run(&r, &list, 20.0), Step::Wait, "RUNNING but not ready");
        let Step::Abort(why) = run(&r, &list, 71.0) else {
            panic!("expected an abort after the deadline")
        };
        assert!(why.contains("readiness probe not passing"), "{why}");
        list[1].ready = true;
        assert_eq!(run(&r, &list, 20.0), Step::Remove(InstanceNumber(0)));
    }

    #[test]
    fn a_failed_or_late_new_instance_aborts() {
        let r = rollout(RolloutState::Progressing, 1);
        let mut list = vec![inst(0, 0, Running, 0.0), inst(1, 1, Failed, 10.0)];
        list[1].detail = "exit code 1".into();
        let Step::Abort(why) = run(&r, &list, 11.0) else {
            panic!("expected an abort")
        };
        assert!(
            why.contains("instance 1") && why.contains("exit code 1"),
            "{why}"
        );
        list[1] = inst(1, 1, Creating, 10.0);
        assert_eq!(run(&r, &list, 60.0), Step::Wait);
        assert!(matches!(run(&r, &list, 71.0), Step::Abort(w) if w.contains("within 60 s")));
    }

    #[test]
    fn an_old_instance_that_does_not_run_goes_first_and_stopped_ones_take_no_part() {
        // During a rollback (current revision 1 = the old one again), the failed instance of
        // the other revision goes at once.
        let r = rollout(RolloutState::RollingBack, 1);
        let list = [inst(0, 1, Running, 0.0), inst(1, 2, Failed, 10.0)];
        assert_eq!(run(&r, &list, 11.0), Step::Remove(InstanceNumber(1)));
        let list = [inst(0, 1, Running, 0.0), inst(5, 0, Stopped, 0.0)];
        assert_eq!(run(&r, &list, 11.0), Step::Finish);
    }
}
