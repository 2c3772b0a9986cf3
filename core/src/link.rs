//! What a cluster and the root tell each other, in domain terms. The wire form is in the
//! `canopy-proto` crate; its conversions are the only place the two meet.

use crate::ids::{ClusterId, InstanceNumber, NodeId, ServiceId};
use crate::job::{GeoPoint, ServiceSpec};
use crate::resources::{Architecture, Resources, Virtualization};
use crate::status::InstanceStatus;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// Where a cluster is: a point and the radius it serves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClusterLocation {
    pub point: GeoPoint,
    pub radius_km: f64,
}

impl ClusterLocation {
    /// Parses `LAT,LON[,RADIUS_KM]` (Oakestra's `CLUSTER_LOCATION`); the radius defaults to 0.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').collect();
        let (point, radius) = match parts.as_slice() {
            [lat, lon] => (format!("{lat},{lon}"), "0"),
            [lat, lon, r] => (format!("{lat},{lon}"), *r),
            _ => return Err(format!("{s:?} must be LAT,LON[,RADIUS_KM]")),
        };
        let point = GeoPoint::parse(&point)?;
        let radius_km: f64 = radius
            .trim()
            .parse()
            .map_err(|_| format!("radius {radius:?} is not a number"))?;
        if !(radius_km >= 0.0 && radius_km.is_finite()) {
            return Err(format!("radius {radius_km} must be a finite number >= 0"));
        }
        Ok(ClusterLocation { point, radius_km })
    }
}

/// Resources of a set of active workers, summed (counts) or averaged (percentages).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceAggregate {
    pub active_nodes: u32,
    /// Free resources, summed over workers.
    pub free: Resources,
    /// Mean CPU use of the workers, 0–100.
    pub cpu_percent: f64,
    /// Mean memory use of the workers, 0–100.
    pub memory_percent: f64,
    pub virtualizations: BTreeSet<Virtualization>,
    pub supported_addons: BTreeSet<String>,
    pub csi_drivers: BTreeSet<String>,
}

/// A cluster's periodic report: its liveness and capacity, and for listing and logs its
/// workers and the live use of its running instances (not kept by the root's scheduler).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub total: ResourceAggregate,
    pub per_architecture: BTreeMap<Architecture, ResourceAggregate>,
    #[serde(default)]
    pub nodes: Vec<NodeSummary>,
    #[serde(default)]
    pub usage: Vec<InstanceUsage>,
}

/// One worker of a cluster as `canopy get nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub id: NodeId,
    pub name: String,
    /// Reporting within the cluster's worker timeout.
    pub active: bool,
    pub architecture: Architecture,
    pub virtualizations: Vec<Virtualization>,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    /// Instances placed on it.
    pub instances: u32,
    /// On the overlay: its subnet and LAN address.
    #[serde(default)]
    pub overlay: Option<crate::overlay::Peer>,
}

/// What a running instance uses, and the tail of its output, from its worker's last report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub service_id: ServiceId,
    pub instance: InstanceNumber,
    pub cpu_percent: f64,
    pub memory_mb: u64,
    /// At most the last 1024 bytes.
    pub logs: String,
}

/// A change of one instance's status, reported up by a cluster. `seq` increases per cluster so
/// the root can acknowledge and the cluster can drop what was acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub seq: u64,
    pub service_id: ServiceId,
    pub instance: InstanceNumber,
    pub status: InstanceStatus,
    pub detail: String,
    pub node_id: Option<NodeId>,
    pub cpu_percent: f64,
    pub memory_mb: u64,
    /// Its address on the overlay, when it is on it.
    #[serde(default)]
    pub ns_ip: Option<Ipv4Addr>,
    /// Its readiness probe passes (always true without one).
    #[serde(default = "crate::probe::ready_by_default")]
    pub ready: bool,
}

/// An order from the root to a cluster. Commands are idempotent: applying one twice has the
/// effect of applying it once, so the root may resend until acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub action: CommandAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandAction {
    Deploy {
        service_id: ServiceId,
        instance: InstanceNumber,
        spec: Box<ServiceSpec>,
        instance_ip: Option<Ipv4Addr>,
    },
    /// Remove one instance, or every instance of the service when `instance` is `None`.
    Undeploy {
        service_id: ServiceId,
        instance: Option<InstanceNumber>,
    },
}

/// A cluster's answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    pub id: u64,
    /// `Err` carries why the cluster refused.
    pub result: Result<(), String>,
}

/// What a registering cluster presents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub join_token: String,
    pub cluster_name: String,
    pub location: Option<ClusterLocation>,
    /// Set when the cluster registers again under the identity it already has.
    pub cluster_id: Option<ClusterId>,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_location() {
        let l = ClusterLocation::parse("48.1,11.5,25").unwrap();
        assert_eq!((l.point.lat, l.point.lon, l.radius_km), (48.1, 11.5, 25.0));
        assert_eq!(ClusterLocation::parse("48.1,11.5").unwrap().radius_km, 0.0);
        for bad in ["", "48.1", "48.1,11.5,-3", "48.1,11.5,x", "1,2,3,4"] {
            assert!(ClusterLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
