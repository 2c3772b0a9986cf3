//! The overlay as the control plane sees it: which workers are on it (their `/26` subnet and
//! the LAN address their tunnel runs over) and, per service, its virtual addresses and the
//! RUNNING instances behind them.
//!
//! Two forms travel: the root's [`GlobalView`] (every cluster; sent down each cluster session)
//! and a worker's [`WorkerView`] (what its net manager applies; the cluster makes it from its
//! own instances and the root's view of the others, in [`WorkerView::merge`]). The JSON form of
//! a [`WorkerView`] is the net manager's `PUT /view` body.

use crate::ids::{ClusterId, InstanceNumber, NodeId, ServiceId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A worker on the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Peer {
    /// Its `/26` worker subnet (network address).
    pub subnet: Ipv4Addr,
    /// Its LAN address: where tunnel packets for its subnet go.
    pub underlay: Ipv4Addr,
}

/// One RUNNING instance as a worker's net manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its instance IP (from `10.30.0.0/16`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ip: Option<Ipv4Addr>,
    /// Its address in its worker's subnet.
    pub address: Ipv4Addr,
    /// Its worker's LAN address.
    pub underlay: Ipv4Addr,
    /// On a worker of the same cluster as the worker this view is for.
    pub same_cluster: bool,
}

/// A service as a worker's net manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    /// Its job name `app.appns.svc.svcns`: what instances resolve to `rr_ip`.
    pub name: String,
    pub rr_ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest_ip: Option<Ipv4Addr>,
    pub instances: Vec<Endpoint>,
}

/// What one worker's net manager applies (`PUT /view`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerView {
    /// Every worker on the overlay (the one the view is for may be among them).
    pub peers: Vec<Peer>,
    pub services: Vec<ServiceRoute>,
}

/// One RUNNING instance on the overlay, anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalEndpoint {
    pub instance: InstanceNumber,
    pub instance_ip: Option<Ipv4Addr>,
    pub address: Ipv4Addr,
    pub cluster: ClusterId,
    pub node: NodeId,
}

/// A service with every RUNNING instance it has on the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalService {
    pub id: ServiceId,
    pub name: String,
    pub rr_ip: Ipv4Addr,
    pub closest_ip: Option<Ipv4Addr>,
    pub instances: Vec<GlobalEndpoint>,
}

/// A worker on the overlay, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalPeer {
    pub cluster: ClusterId,
    pub node: NodeId,
    pub peer: Peer,
}

/// The root's view of the whole overlay, sent to every cluster when it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalView {
    pub peers: Vec<GlobalPeer>,
    pub services: Vec<GlobalService>,
}

/// What a cluster knows first-hand: its workers on the overlay and the RUNNING instances on
/// them, with the service each belongs to (name and addresses as the deploy order gave them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalOverlay {
    /// By worker id.
    pub workers: BTreeMap<NodeId, Peer>,
    pub services: BTreeMap<ServiceId, LocalService>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalService {
    pub name: String,
    pub rr_ip: Ipv4Addr,
    pub closest_ip: Option<Ipv4Addr>,
    /// `(instance IP, address, worker)` of each RUNNING instance.
    pub instances: Vec<(Option<Ipv4Addr>, Ipv4Addr, NodeId)>,
}

impl WorkerView {
    /// The view for the workers of cluster `me` (`None`: not registered at the root yet): its
    /// own workers and instances from `local` (first-hand, so fresh even while the root is
    /// away), everything of other clusters from `global`. Deterministic: peers, services and
    /// instances sorted.
    pub fn merge(me: Option<&ClusterId>, local: &LocalOverlay, global: &GlobalView) -> WorkerView {
        let mut peers: Vec<Peer> = local.workers.values().copied().collect();
        let mut underlay_of: BTreeMap<(&ClusterId, &NodeId), Ipv4Addr> = BTreeMap::new();
        for g in &global.peers {
            underlay_of.insert((&g.cluster, &g.node), g.peer.underlay);
            if Some(&g.cluster) != me {
                peers.push(g.peer);
            }
        }
        peers.sort();
        peers.dedup();
        let mut services: BTreeMap<&ServiceId, ServiceRoute> = BTreeMap::new();
        for s in &global.services {
            let instances = s
                .instances
                .iter()
                .filter(|e| Some(&e.cluster) != me)
                .filter_map(|e| {
                    Some(Endpoint {
                        instance_ip: e.instance_ip,
                        address: e.address,
                        underlay: *underlay_of.get(&(&e.cluster, &e.node))?,
                        same_cluster: false,
                    })
                })
                .collect();
            services.insert(
                &s.id,
                ServiceRoute {
                    name: s.name.clone(),
                    rr_ip: s.rr_ip,
                    closest_ip: s.closest_ip,
                    instances,
                },
            );
        }
        for (id, s) in &local.services {
            let route = services.entry(id).or_insert_with(|| ServiceRoute {
                name: s.name.clone(),
                rr_ip: s.rr_ip,
                closest_ip: s.closest_ip,
                instances: Vec::new(),
            });
            for (instance_ip, address, node) in &s.instances {
                if let Some(w) = local.workers.get(node) {
                    route.instances.push(Endpoint {
                        instance_ip: *instance_ip,
                        address: *address,
                        underlay: w.underlay,
                        same_cluster: true,
                    });
                }
            }
        }
        let mut services: Vec<ServiceRoute> = services.into_values().collect();
        for s in &mut services {
            s.instances.sort();
            s.instances.dedup();
        }
        services.sort_by_key(|s| s.rr_ip);
        WorkerView { peers, services }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn peer(subnet: &str, underlay: &str) -> Peer {
        Peer {
            subnet: ip(subnet),
            underlay: ip(underlay),
        }
    }

    #[test]
    fn a_cluster_sees_its_own_instances_first_hand_and_the_others_through_the_root() {
        let (a, b) = (
            ClusterId::parse("ca").unwrap(),
            ClusterId::parse("cb").unwrap(),
        );
        let (w1, w2, w3) = (
            NodeId::parse("w1").unwrap(),
            NodeId::parse("w2").unwrap(),
            NodeId::parse("w3").unwrap(),
        );
        let svc = ServiceId::parse("s1").unwrap();
        let mut local = LocalOverlay::default();
        local
            .workers
            .insert(w1.clone(), peer("10.18.0.0", "192.0.2.1"));
        local
            .workers
            .insert(w2.clone(), peer("10.18.0.64", "192.0.2.2"));
        local.services.insert(
            svc.clone(),
            LocalService {
                name: "app.ns.web.ns".into(),
                rr_ip: ip("10.30.55.55"),
                closest_ip: None,
                instances: vec![(Some(ip("10.30.0.3")), ip("10.18.0.66"), w2.clone())],
            },
        );
        let global = GlobalView {
            peers: vec![
                // The root's (possibly stale) copy of this cluster's workers is not used.
                GlobalPeer {
                    cluster: a.clone(),
                    node: w1.clone(),
                    peer: peer("10.18.0.0", "192.0.2.99"),
                },
                GlobalPeer {
                    cluster: b.clone(),
                    node: w3.clone(),
                    peer: peer("10.18.0.128", "192.0.2.3"),
                },
            ],
            services: vec![GlobalService {
                id: svc.clone(),
                name: "app.ns.web.ns".into(),
                rr_ip: ip("10.30.55.55"),
                closest_ip: Some(ip("10.30.55.56")),
                instances: vec![
                    GlobalEndpoint {
                        instance: InstanceNumber(0),
                        instance_ip: Some(ip("10.30.0.2")),
                        address: ip("10.18.0.2"),
                        cluster: a.clone(),
                        node: w1.clone(),
                    },
                    GlobalEndpoint {
                        instance: InstanceNumber(1),
                        instance_ip: Some(ip("10.30.0.4")),
                        address: ip("10.18.0.130"),
                        cluster: b.clone(),
                        node: w3.clone(),
                    },
                ],
            }],
        };
        let v = WorkerView::merge(Some(&a), &local, &global);
        assert_eq!(
            v.peers,
            vec![
                peer("10.18.0.0", "192.0.2.1"),
                peer("10.18.0.64", "192.0.2.2"),
                peer("10.18.0.128", "192.0.2.3")
            ]
        );
        assert_eq!(v.services.len(), 1);
        let s = &v.services[0];
        assert_eq!(
            s.closest_ip,
            Some(ip("10.30.55.56")),
            "the root's addresses"
        );
        assert_eq!(
            s.instances,
            vec![
                Endpoint {
                    instance_ip: Some(ip("10.30.0.3")),
                    address: ip("10.18.0.66"),
                    underlay: ip("192.0.2.2"),
                    same_cluster: true
                },
                Endpoint {
                    instance_ip: Some(ip("10.30.0.4")),
                    address: ip("10.18.0.130"),
                    underlay: ip("192.0.2.3"),
                    same_cluster: false
                },
            ],
            "the root's entry for this cluster's instance 0 is replaced by what the cluster knows"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["services"][0]["instances"][0]["same_cluster"], true);
        assert_eq!(json["peers"][0]["underlay"], "192.0.2.1");
    }

    #[test]
    fn a_service_the_root_does_not_know_yet_comes_from_the_cluster() {
        let a = ClusterId::parse("ca").unwrap();
        let w1 = NodeId::parse("w1").unwrap();
        let mut local = LocalOverlay::default();
        local
            .workers
            .insert(w1.clone(), peer("10.18.0.0", "192.0.2.1"));
        local.services.insert(
            ServiceId::parse("s9").unwrap(),
            LocalService {
                name: "a.b.c.d".into(),
                rr_ip: ip("10.30.9.9"),
                closest_ip: None,
                instances: vec![(None, ip("10.18.0.2"), w1)],
            },
        );
        let v = WorkerView::merge(Some(&a), &local, &GlobalView::default());
        assert_eq!(v.services[0].rr_ip, ip("10.30.9.9"));
        assert_eq!(v.services[0].instances.len(), 1);
    }
}
