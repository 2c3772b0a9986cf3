//! What the root keeps: users, organisations, applications, services with their instances,
//! clusters and the commands not yet acknowledged by a cluster. These are the stored documents
//! (one store collection each, see [`crate::control`]); the REST shapes are in [`crate::api`].

use canopy_core::link::{ClusterLocation, Command};
use canopy_core::{ClusterId, InstanceNumber, InstanceStatus, NodeId, ServiceSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Store collection names.
pub mod collections {
    pub const USERS: &str = "users";
    pub const ORGANIZATIONS: &str = "organizations";
    pub const APPLICATIONS: &str = "applications";
    pub const SERVICES: &str = "services";
    pub const INSTANCES: &str = "instances";
    pub const CLUSTERS: &str = "clusters";
    pub const OUTBOX: &str = "outbox";
    pub const SECRETS: &str = "secrets";
    pub const SUBNETS: &str = "subnets";
    pub const EVENTS: &str = "events";
}

/// A worker subnet the root's address plan gave a cluster's worker (collection `subnets`, keyed
/// `<cluster>/<node>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetGrant {
    pub cluster_id: ClusterId,
    pub node_id: NodeId,
    pub subnet: Ipv4Addr,
}

impl SubnetGrant {
    pub fn key(cluster: &ClusterId, node: &NodeId) -> String {
        format!("{cluster}/{node}")
    }
}

/// Oakestra's roles and organisation members are API shapes too: they live in `canopy-api`.
pub use canopy_api::{Member, Quota, Role, ServiceEvent};

/// The user every root starts with.
pub const ADMIN_USER: &str = "Admin";
/// The organisation every root starts with; login uses it when none is named.
pub const ROOT_ORGANIZATION: &str = "root";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub name: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub created_at: String,
    /// Set by an admin; none: the root's default quota applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub members: Vec<Member>,
}

impl Organization {
    pub fn roles_of(&self, user_id: &str) -> Option<&[Role]> {
        self.members
            .iter()
            .find(|m| m.user_id == user_id)
            .map(|m| m.roles.as_slice())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Application {
    pub id: String,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub description: String,
    /// The owner's user name (Oakestra's `userId`).
    pub owner: String,
    /// Service ids, in creation order.
    pub services: Vec<String>,
}

/// One service (Oakestra's "job").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub application_id: String,
    pub owner: String,
    /// The microservice as the user sent it (shown back in the job document).
    pub sla: serde_json::Value,
    pub spec: ServiceSpec,
    /// Round-robin service address.
    pub rr_ip: Ipv4Addr,
    /// The number the next instance gets (Oakestra's `next_instance_progressive_number`).
    pub next_instance: u32,
    /// Which version of its spec `spec` is: 0 when created, one more with each update
    /// (`PUT /api/service/<id>`).
    #[serde(default)]
    pub revision: u32,
    /// The latest rolling update, running or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// The SLA's `autoscale` (the root's alone: not part of the spec clusters get).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<canopy_core::autoscale::Autoscale>,
    /// Stored apart, one document per instance (collection `instances`).
    #[serde(skip)]
    pub instances: BTreeMap<InstanceNumber, Instance>,
}

/// A rolling update of a service: its instances replaced one at a time by instances of the
/// service's current revision, each new one ready before an old one goes. Stored on the
/// service, so it goes on after a restart of the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The revision instances are moved away from, with its spec and SLA: what a rollback
    /// returns to (after a rollback: the revision that failed).
    pub from: u32,
    pub from_spec: ServiceSpec,
    pub from_sla: serde_json::Value,
    /// Instances the service keeps throughout (not counting stopped ones).
    pub replicas: u32,
    pub state: RolloutState,
    /// Unix seconds.
    pub started_at: f64,
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// Why it rolled back or failed.
    #[serde(default)]
    pub reason: String,
    /// Old instances replaced so far.
    #[serde(default)]
    pub replaced: u32,
    /// A new instance must be ready within this many seconds of being added.
    pub deadline_secs: f64,
    /// ... and RUNNING for this long to be ready.
    pub min_ready_secs: f64,
    /// The instance added last, and when (Unix seconds).
    #[serde(default)]
    pub waiting: Option<(u32, f64)>,
}

/// Where a rolling update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Replacing the old revision's instances with the new one's.
    Progressing,
    /// A new instance failed or was late: going back to the old revision the same way.
    RollingBack,
    /// Every instance runs the new revision.
    Complete,
    /// Every instance runs the old revision again.
    RolledBack,
    /// The rollback itself could not finish; nothing more is done until the next update.
    Failed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::Complete => "complete",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Failed => "failed",
        }
    }
}

impl Rollout {
    /// Still replacing instances.
    pub fn active(&self) -> bool {
        matches!(
            self.state,
            RolloutState::Progressing | RolloutState::RollingBack
        )
    }
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub number: InstanceNumber,
    pub status: InstanceStatus,
    #[serde(default)]
    pub detail: String,
    pub ip: Ipv4Addr,
    /// The cluster it is placed on; `None` while waiting for one.
    pub cluster_id: Option<ClusterId>,
    pub node_id: Option<NodeId>,
    #[serde(default)]
    pub cpu_percent: f64,
    #[serde(default)]
    pub memory_mb: u64,
    /// Its address on the overlay, from the cluster's last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_ip: Option<Ipv4Addr>,
    /// Its readiness probe passes, by the cluster's last report (true without a probe).
    #[serde(default = "canopy_core::probe::ready_by_default")]
    pub ready: bool,
    /// The tail of its output (at most 1024 bytes) from the cluster's last report.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logs: String,
    /// Unix seconds of the last status change.
    pub updated_at: f64,
    /// The revision of its service's spec it runs ([`Service::spec_of`]).
    #[serde(default)]
    pub revision: u32,
    /// Clusters that answered they have no worker for it; not tried again until it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_by: Vec<ClusterId>,
    /// Which change to the root's memory last touched it (memory only).
    #[serde(skip)]
    pub stamp: Stamp,
}

/// Which change to the root's memory last touched an instance: the root's state gives a new
/// one, larger than any before, to every instance it changes, so whatever is kept made from an
/// instance (the API's job documents) is known to be current without comparing the instance
/// field by field (each comparison follows its strings into the heap: tens of milliseconds for
/// 50,000 instances). Not part of the instance's value: equal instances may carry different
/// stamps.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamp(pub u64);

impl PartialEq for Stamp {
    fn eq(&self, _: &Stamp) -> bool {
        true
    }
}

impl Instance {
    /// A new instance, requested at `at` (Unix seconds).
    pub fn new(number: InstanceNumber, ip: Ipv4Addr, at: f64) -> Self {
        Instance {
            number,
            status: InstanceStatus::Requested,
            detail: String::new(),
            ip,
            cluster_id: None,
            node_id: None,
            cpu_percent: 0.0,
            memory_mb: 0,
            ns_ip: None,
            ready: true,
            logs: String::new(),
            updated_at: at,
            revision: 0,
            refused_by: Vec::new(),
            stamp: Stamp::default(),
        }
    }

    /// Sets the status, changed at `at` (Unix seconds).
    pub fn set_status(&mut self, status: InstanceStatus, detail: impl Into<String>, at: f64) {
        self.status = status;
        self.detail = detail.into();
        self.updated_at = at;
    }

    /// Waiting for the root scheduler: never placed, placement refused, or taken back from a
    /// cluster that went away.
    pub fn awaits_cluster(&self) -> bool {
        self.cluster_id.is_none() && !self.status.is_terminal()
    }
}

impl Service {
    /// The stored document: the service without its instances (those are stored apart), so
    /// copying it costs the same however many instances the service has.
    pub fn document(&self) -> Service {
        Service {
            id: self.id.clone(),
            application_id: self.application_id.clone(),
            owner: self.owner.clone(),
            sla: self.sla.clone(),
            spec: self.spec.clone(),
            rr_ip: self.rr_ip,
            next_instance: self.next_instance,
            revision: self.revision,
            rollout: self.rollout.clone(),
            autoscale: self.autoscale.clone(),
            instances: BTreeMap::new(),
        }
    }

    /// The spec instances of `revision` run: the current one, or during a rolling update
    /// the one being replaced.
    pub fn spec_of(&self, revision: u32) -> &ServiceSpec {
        match &self.rollout {
            Some(r) if r.active() && r.from == revision && revision != self.revision => {
                &r.from_spec
            }
            _ => &self.spec,
        }
    }

    /// The service's status, derived from its instances: a scheduling failure if any instance
    /// has one, else the least advanced instance's status; `UNDEPLOYED` without instances.
    pub fn status(&self) -> (InstanceStatus, &str) {
        use canopy_core::StatusClass;
        let mut worst: Option<&Instance> = None;
        for i in self.instances.values() {
            let rank = |s: InstanceStatus| match s.class() {
                StatusClass::NegativeScheduling => 0,
                _ if s.needs_rescheduling() => 1,
                StatusClass::PositiveScheduling => 2,
                _ if s == InstanceStatus::Running => 4,
                _ if s.is_terminal() => 5,
                _ => 3,
            };
            if worst.is_none_or(|w| rank(i.status) < rank(w.status)) {
                worst = Some(i);
            }
        }
        match worst {
            Some(i) => (i.status, &i.detail),
            None => (InstanceStatus::Undeployed, "no instances"),
        }
    }
}

/// A registered cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: ClusterId,
    pub name: String,
    pub location: Option<ClusterLocation>,
    /// Proves a session belongs to the latest registration.
    pub session_token: String,
    /// Highest instance-report sequence number stored from this cluster.
    pub last_acked_seq: u64,
    pub registered_at: f64,
    #[serde(default)]
    pub version: String,
}

/// A command waiting for its cluster's acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingCommand {
    pub cluster_id: ClusterId,
    pub command: Command,
}

/// Outbox key: zero-padded so the store lists commands in id order.
pub fn outbox_key(id: u64) -> String {
    format!("{id:020}")
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A new object id in Oakestra's (MongoDB's) form: 24 hex digits, the first 8 the creation time.
pub fn new_object_id() -> String {
    let secs = unix_now() as u32;
    let mut rest = [0u8; 8];
    canopy_store::secrets::fill_random(&mut rest);
    format!("{secs:08x}{}", hex::encode(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(n: u32, status: InstanceStatus) -> Instance {
        let mut i = Instance::new(InstanceNumber(n), Ipv4Addr::new(10, 30, 0, n as u8), 0.0);
        i.status = status;
        i
    }

    #[test]
    fn service_status_is_the_least_advanced_instance() {
        let spec = ServiceSpec::new(
            "a.b.c.d".parse().unwrap(),
            canopy_core::Virtualization::Container,
            "img",
        );
        let mut s = Service {
            id: "s".into(),
            application_id: "a".into(),
            owner: "u".into(),
            sla: serde_json::json!({}),
            spec,
            rr_ip: Ipv4Addr::new(10, 30, 0, 1),
            next_instance: 0,
            revision: 0,
            rollout: None,
            autoscale: None,
            instances: BTreeMap::new(),
        };
        assert_eq!(s.status().0, InstanceStatus::Undeployed);
        s.instances
            .insert(InstanceNumber(0), instance(0, InstanceStatus::Running));
        assert_eq!(s.status().0, InstanceStatus::Running);
        s.instances.insert(
            InstanceNumber(1),
            instance(1, InstanceStatus::ClusterScheduled),
        );
        assert_eq!(s.status().0, InstanceStatus::ClusterScheduled);
        s.instances.insert(
            InstanceNumber(2),
            instance(2, InstanceStatus::NoActiveClusterWithCapacity),
        );
        assert_eq!(s.status().0, InstanceStatus::NoActiveClusterWithCapacity);
    }

    #[test]
    fn object_ids_look_like_mongodb_ones() {
        let (a, b) = (new_object_id(), new_object_id());
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
