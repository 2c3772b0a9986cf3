//! What the cluster keeps: its identity at the root, its workers, the services and instances
//! the root gave it, and the status reports not yet acknowledged by the root.

use canopy_core::link::InstanceReport;
use canopy_core::{
    Architecture, ClusterId, InstanceNumber, InstanceStatus, NodeId, Resources, ServiceId,
    ServiceSpec, Virtualization,
};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Store collection names.
pub mod collections {
    pub const IDENTITY: &str = "identity";
    pub const WORKERS: &str = "workers";
    pub const SERVICES: &str = "services";
    pub const INSTANCES: &str = "instances";
    pub const REPORTS: &str = "reports";
}

/// Who the cluster is at the root; key `cluster` in `identity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: Option<ClusterId>,
    /// The sequence number of the last instance report made.
    pub last_seq: u64,
}

/// A registered worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: NodeId,
    /// Host name; the same name registers as the same worker.
    pub name: String,
    pub ip: String,
    pub architecture: Architecture,
    pub virtualizations: Vec<Virtualization>,
    /// What the worker offered at registration.
    pub capacity: Resources,
    #[serde(default)]
    pub supported_addons: Vec<String>,
    /// Hex SHA-256 of the worker's MQTT password (its user name is its id).
    pub mqtt_password_sha256: String,
    pub registered_at: f64,
    /// On the overlay: the worker subnet the root gave it and its LAN address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<canopy_core::overlay::Peer>,
}

/// A service the root placed instances of here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: ServiceId,
    pub spec: ServiceSpec,
}

/// One instance in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub service_id: ServiceId,
    pub number: InstanceNumber,
    pub status: InstanceStatus,
    #[serde(default)]
    pub detail: String,
    /// The worker it is placed on.
    pub node: Option<NodeId>,
    pub ip: Option<Ipv4Addr>,
    /// Restarts after crashes since it last ran stably.
    #[serde(default)]
    pub restarts: u32,
    /// Unix seconds before which it is not placed again (crash back-off).
    #[serde(default)]
    pub retry_at: f64,
    /// Unix seconds it was last reported `RUNNING` after not running.
    #[serde(default)]
    pub running_since: f64,
    #[serde(default)]
    pub cpu_percent: f64,
    #[serde(default)]
    pub memory_mb: u64,
    /// Its address on the overlay, from its worker's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_ip: Option<Ipv4Addr>,
    /// Its readiness probe passes, by its worker's last job status (true without a probe, and
    /// in documents from before probes). Only a RUNNING, ready instance is in its service's
    /// table on the overlay.
    #[serde(default = "canopy_core::probe::ready_by_default")]
    pub ready: bool,
    /// The tail of its log, from the worker's resource reports.
    #[serde(default)]
    pub logs: String,
    pub updated_at: f64,
    /// The spec it runs, as the root's deploy gave it (instances of one service may run
    /// different revisions during a rolling update); `None` in documents from before
    /// revisions: the service's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Box<ServiceSpec>>,
}

impl Instance {
    /// A newly requested instance, as of `now` (Unix seconds).
    pub fn new(
        service_id: ServiceId,
        number: InstanceNumber,
        ip: Option<Ipv4Addr>,
        now: f64,
    ) -> Self {
        Instance {
            service_id,
            number,
            status: InstanceStatus::Requested,
            detail: String::new(),
            node: None,
            ip,
            restarts: 0,
            retry_at: 0.0,
            running_since: 0.0,
            cpu_percent: 0.0,
            memory_mb: 0,
            ns_ip: None,
            ready: true,
            logs: String::new(),
            updated_at: now,
            spec: None,
        }
    }

    pub fn key(&self) -> String {
        instance_key(&self.service_id, self.number)
    }

    /// The report of its current state for the root (the sequence number is set by the caller).
    pub fn report(&self, seq: u64) -> InstanceReport {
        InstanceReport {
            seq,
            service_id: self.service_id.clone(),
            instance: self.number,
            status: self.status,
            detail: self.detail.clone(),
            node_id: self.node.clone(),
            cpu_percent: self.cpu_percent,
            memory_mb: self.memory_mb,
            ns_ip: self.ns_ip,
            ready: self.ready,
        }
    }
}

/// Store key of an instance: service id and zero-padded number.
pub fn instance_key(service: &ServiceId, n: InstanceNumber) -> String {
    format!("{service}:{:010}", n.0)
}

/// Store key of a report: zero-padded so reports list in order.
pub fn report_key(seq: u64) -> String {
    format!("{seq:020}")
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A new node id in Oakestra's form (24 hex digits, creation time first).
pub fn new_node_id() -> NodeId {
    let mut rest = [0u8; 8];
    canopy_store::secrets::fill_random(&mut rest);
    let id = format!("{:08x}{}", unix_now() as u32, hex::encode(rest));
    NodeId::parse(id).unwrap_or_else(|_| unreachable!("24 hex digits are a valid id"))
}

/// Hex SHA-256, for MQTT passwords at rest.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}
