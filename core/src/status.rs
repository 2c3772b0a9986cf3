//! The status vocabulary of services and instances, spelled exactly as Oakestra spells it on
//! the wire (mixed case is significant: `NoActiveClusterWithCapacity` next to `NO_WORKER_CAPACITY`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Which of Oakestra's status classes a status belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// Scheduling is progressing: `REQUESTED`, `CLUSTER_SCHEDULED`, `NODE_SCHEDULED`.
    PositiveScheduling,
    /// A scheduler found no place for the instance.
    NegativeScheduling,
    /// The instance exists on a worker (or existed).
    Deployment,
}

macro_rules! statuses {
    ($( $(#[$doc:meta])* $variant:ident = $wire:literal => $class:ident ),+ $(,)?) => {
        /// Status of one service instance (and, by aggregation, of a service).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum InstanceStatus {
            $( $(#[$doc])* #[serde(rename = $wire)] $variant, )+
        }

        impl InstanceStatus {
            /// Every status, in declaration order.
            pub const ALL: &'static [InstanceStatus] = &[$(InstanceStatus::$variant),+];

            /// The exact wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(InstanceStatus::$variant => $wire,)+ }
            }

            pub fn class(self) -> StatusClass {
                match self { $(InstanceStatus::$variant => StatusClass::$class,)+ }
            }
        }

        impl std::str::FromStr for InstanceStatus {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, UnknownStatus> {
                match s {
                    $($wire => Ok(InstanceStatus::$variant),)+
                    other => Err(UnknownStatus(other.to_owned())),
                }
            }
        }
    };
}

statuses! {
    /// The user asked for the instance; no scheduler has placed it yet.
    Requested = "REQUESTED" => PositiveScheduling,
    /// The root scheduler chose a cluster.
    ClusterScheduled = "CLUSTER_SCHEDULED" => PositiveScheduling,
    /// The cluster scheduler chose a worker.
    NodeScheduled = "NODE_SCHEDULED" => PositiveScheduling,

    /// A `direct` constraint names a cluster that does not exist.
    TargetClusterNotFound = "TargetClusterNotFound" => NegativeScheduling,
    /// A `direct` constraint names a cluster that is not active.
    TargetClusterNotActive = "TargetClusterNotActive" => NegativeScheduling,
    /// A `direct` constraint names a cluster without room for the instance.
    TargetClusterNoCapacity = "TargetClusterNoCapacity" => NegativeScheduling,
    /// No active cluster can hold the instance.
    NoActiveClusterWithCapacity = "NoActiveClusterWithCapacity" => NegativeScheduling,
    /// Workers qualify but none has the free resources.
    NoWorkerCapacity = "NO_WORKER_CAPACITY" => NegativeScheduling,
    /// No worker qualifies (virtualization, architecture, constraints).
    NoQualifiedWorkerFound = "NO_QUALIFIED_WORKER_FOUND" => NegativeScheduling,
    /// A `direct` constraint names nodes that do not exist.
    NoNodeFound = "NO_NODE_FOUND" => NegativeScheduling,

    /// The worker is preparing the instance (pulling, creating).
    Creating = "CREATING" => Deployment,
    /// The worker created the instance; it has not been seen running yet.
    Created = "CREATED" => Deployment,
    /// The instance runs.
    Running = "RUNNING" => Deployment,
    /// Deployment failed on the worker; the detail says why.
    Failed = "FAILED" => Deployment,
    /// The instance exited (not a successful one-shot) or was lost.
    Dead = "DEAD" => Deployment,
    /// A `one_shot` instance exited with code 0. Terminal.
    Completed = "COMPLETED" => Deployment,
    /// The instance was removed on request. Terminal.
    Undeployed = "UNDEPLOYED" => Deployment,
    /// Stopped on request (a Canopy extension): kept, with its number and address, on no
    /// worker until it is started again. Terminal.
    Stopped = "STOPPED" => Deployment,
}

impl InstanceStatus {
    /// The instance will not change state again by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            InstanceStatus::Completed | InstanceStatus::Undeployed | InstanceStatus::Stopped
        )
    }

    /// The instance holds (or is about to hold) resources on a worker.
    pub fn occupies_worker(self) -> bool {
        matches!(
            self,
            InstanceStatus::NodeScheduled
                | InstanceStatus::Creating
                | InstanceStatus::Created
                | InstanceStatus::Running
        )
    }

    /// A control loop should find the instance a new place.
    pub fn needs_rescheduling(self) -> bool {
        matches!(self, InstanceStatus::Failed | InstanceStatus::Dead)
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string outside Oakestra's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spellings_are_oakestras_and_stopped() {
        let wire: Vec<&str> = InstanceStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            wire,
            [
                "REQUESTED",
                "CLUSTER_SCHEDULED",
                "NODE_SCHEDULED",
                "TargetClusterNotFound",
                "TargetClusterNotActive",
                "TargetClusterNoCapacity",
                "NoActiveClusterWithCapacity",
                "NO_WORKER_CAPACITY",
                "NO_QUALIFIED_WORKER_FOUND",
                "NO_NODE_FOUND",
                "CREATING",
                "CREATED",
                "RUNNING",
                "FAILED",
                "DEAD",
                "COMPLETED",
                "UNDEPLOYED",
                "STOPPED",
            ]
        );
    }

    #[test]
    fn serde_and_fromstr_agree_with_as_str() {
        for s in InstanceStatus::ALL {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.as_str().parse::<InstanceStatus>().unwrap(), *s);
            assert_eq!(serde_json::from_str::<InstanceStatus>(&json).unwrap(), *s);
        }
        assert!("running".parse::<InstanceStatus>().is_err());
    }

    #[test]
    fn classes() {
        assert_eq!(
            InstanceStatus::NoWorkerCapacity.class(),
            StatusClass::NegativeScheduling
        );
        assert_eq!(
            InstanceStatus::ClusterScheduled.class(),
            StatusClass::PositiveScheduling
        );
        assert_eq!(InstanceStatus::Completed.class(), StatusClass::Deployment);
        assert!(InstanceStatus::Completed.is_terminal());
        assert!(!InstanceStatus::Dead.is_terminal());
        assert!(InstanceStatus::Stopped.is_terminal());
        assert!(!InstanceStatus::Stopped.occupies_worker());
        assert!(InstanceStatus::Dead.needs_rescheduling());
        assert!(InstanceStatus::Running.occupies_worker());
    }
}
