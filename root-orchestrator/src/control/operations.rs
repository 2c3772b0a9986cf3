//! Stop, start and restart one instance (mF2C's lifecycle operations; a Canopy extension).
//!
//! A stopped instance keeps its number and address, and is `STOPPED` on no cluster: stop
//! undeploys it where it was placed and takes the placement back, so nothing places it again
//! (a terminal status) — not the root's failover when its cluster goes away, not a restart of
//! any daemon (the status is stored like any other), not a cluster's report about an old copy
//! (answered with an undeploy, as for any copy the root did not place there). Start asks for
//! it again (`REQUESTED`, placed at once when a cluster fits). Restart of a placed instance
//! undeploys it and places it anew in one step; the cluster's queue keeps the order, so the
//! new copy starts after the old one is gone.

use super::apps::owned_service;
use super::state::{Change, InstanceKey, event};
use super::{Caller, Error, Now, Result, Root, not_found};
use crate::model::Instance;
use canopy_core::{InstanceNumber, InstanceStatus};

/// What to do to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Stop,
    Start,
    Restart,
}

impl Operation {
    pub fn parse(s: &str) -> Option<Operation> {
        [Operation::Stop, Operation::Start, Operation::Restart]
            .into_iter()
            .find(|o| o.name() == s)
    }

    /// Its name, as in the path and in events.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Stop => "stop",
            Operation::Start => "start",
            Operation::Restart => "restart",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Operation::Stop => "stopped",
            Operation::Start => "started",
            Operation::Restart => "restarted",
        }
    }
}

/// What an operation does to an instance in `status`, decided alone (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Already so: nothing to do.
    Nothing,
    /// Undeploy where it is placed, and keep it on no cluster as `STOPPED`.
    Stop,
    /// Undeploy where it is placed (if anywhere), and place it again.
    Replace,
}

pub fn step(op: Operation, status: InstanceStatus) -> std::result::Result<Step, String> {
    let stopped = status == InstanceStatus::Stopped;
    if matches!(
        status,
        InstanceStatus::Completed | InstanceStatus::Undeployed
    ) {
        return Err(format!(
            "the instance is {status}: it cannot be {}",
            op.verb()
        ));
    }
    Ok(match op {
        Operation::Stop if stopped => Step::Nothing,
        Operation::Stop => Step::Stop,
        Operation::Start if stopped => Step::Replace,
        Operation::Start => Step::Nothing,
        Operation::Restart => Step::Replace,
    })
}

impl Root {
    /// Stops, starts or restarts instance `n` of service `id`. Returns its status afterwards.
    pub async fn operate(
        &self,
        caller: &Caller,
        id: &str,
        n: u32,
        op: Operation,
    ) -> Result<InstanceStatus> {
        let now = Now::read();
        let mut st = self.state.lock().await;
        let (key, s) = owned_service(&st, caller, id)?;
        let inst = s
            .instances
            .get(&InstanceNumber(n))
            .ok_or_else(|| not_found("instance", &n.to_string()))?;
        let step = step(op, inst.status).map_err(|message| Error::Conflict {
            field: "instance".into(),
            message,
        })?;
        let key = InstanceKey::new(key, inst.number);
        let why = format!("requested by {}", caller.name);
        let mut change = Change::new(&st);
        if step == Step::Nothing {
            // Recorded too: the operation was asked for, and found nothing to do.
            let outcome = format!("nothing to do: already {}", inst.status);
            let status = inst.status;
            let e = event(now.unix, Some(key.number), op.name(), why, outcome);
            change.record(&st, &key.service, e)?;
            self.commit(&mut st, change).await?;
            return Ok(status);
        }
        let mut i = inst.clone();
        take_back(&mut change, &key, &mut i)?;
        let detail = format!("{} by {}", op.verb(), caller.name);
        match step {
            Step::Stop => i.set_status(InstanceStatus::Stopped, detail, now.unix),
            _ => {
                i.set_status(InstanceStatus::Requested, detail, now.unix);
                i.refused_by.clear();
                self.place_copy(&st, &mut change, &key, &mut i, None, now)?;
            }
        }
        let status = i.status;
        let outcome = super::apps::placed(&i);
        let e = event(now.unix, Some(key.number), op.name(), why, outcome);
        change.record(&st, &key.service, e)?;
        change.put_instance(key, i)?;
        self.commit(&mut st, change).await?;
        Ok(status)
    }
}

/// Undeploys `i` where it is placed and forgets the placement and what its cluster reported.
fn take_back(change: &mut Change, key: &InstanceKey, i: &mut Instance) -> Result<()> {
    if let Some(c) = i.cluster_id.take() {
        change.undeploy(c, &key.service, Some(key.number))?;
    }
    i.node_id = None;
    i.ns_ip = None;
    i.cpu_percent = 0.0;
    i.memory_mb = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStatus as S;

    #[test]
    fn each_operation_on_each_status() {
        let cases = [
            (Operation::Stop, S::Running, Ok(Step::Stop)),
            (Operation::Stop, S::Requested, Ok(Step::Stop)),
            (Operation::Stop, S::Dead, Ok(Step::Stop)),
            (Operation::Stop, S::Stopped, Ok(Step::Nothing)),
            (Operation::Start, S::Stopped, Ok(Step::Replace)),
            (Operation::Start, S::Running, Ok(Step::Nothing)),
            (Operation::Start, S::NoWorkerCapacity, Ok(Step::Nothing)),
            (Operation::Restart, S::Running, Ok(Step::Replace)),
            (Operation::Restart, S::Stopped, Ok(Step::Replace)),
            (Operation::Restart, S::Failed, Ok(Step::Replace)),
        ];
        for (op, status, want) in cases {
            assert_eq!(step(op, status), want, "{op:?} on {status}");
        }
        for status in [S::Completed, S::Undeployed] {
            for op in [Operation::Stop, Operation::Start, Operation::Restart] {
                assert!(step(op, status).is_err(), "{op:?} on {status}");
            }
        }
    }

    #[test]
    fn operations_parse_from_their_path_segment() {
        assert_eq!(Operation::parse("stop"), Some(Operation::Stop));
        assert_eq!(Operation::parse("restart"), Some(Operation::Restart));
        assert_eq!(Operation::parse("reboot"), None);
    }
}
