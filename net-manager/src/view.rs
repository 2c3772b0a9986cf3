//! The overlay view the cluster sends every worker (the node engine relays it to `PUT /view`):
//! every worker of the overlay (its subnet and underlay address) and every service with its
//! RUNNING instances. What a worker does with it is derived here, purely:
//!
//! - the [`Translations`]: a service's `rr_ip` → the addresses of all its instances (sorted),
//!   an `instance_ip` → its instance's address, a `closest_ip` → the addresses of the
//!   service's instances on the one best worker ([`rank`]);
//! - the names: a service's name (lowercase) → its `rr_ip`;
//! - the peers: every other worker's subnet → its underlay address (what the tunnel reaches).
//!
//! [`check`] validates a view against this worker once (nothing is applied from a view it
//! refuses; the error names the field, `services[3].rr_ip`); the [`Plan`] it gives then
//! makes the translations for any set of measured round-trip times, so the closest choice
//! follows the measurements without checking the view again.

use crate::nft::Translations;
use crate::plan::WorkerNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

/// The body of `PUT /view`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// Every worker of the overlay; this one may be among them (it is ignored).
    pub peers: Vec<Worker>,
    pub services: Vec<Service>,
}

/// A worker of the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    /// Its /26 worker subnet (the network address).
    pub subnet: Ipv4Addr,
    /// Its address on the network the tunnel runs over.
    pub underlay: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The service's name (`app.ns.service.ns`); resolved to `rr_ip`.
    pub name: String,
    pub rr_ip: Ipv4Addr,
    #[serde(default)]
    pub closest_ip: Option<Ipv4Addr>,
    /// Its RUNNING instances.
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    #[serde(default)]
    pub instance_ip: Option<Ipv4Addr>,
    /// Its namespace address, inside the subnet of the worker it runs on.
    pub address: Ipv4Addr,
    /// The underlay address of that worker. Informational: the ranking measures the
    /// worker's own entry in `peers` (the one the tunnel uses).
    pub underlay: Ipv4Addr,
    /// Whether that worker is in this worker's cluster.
    pub same_cluster: bool,
}

/// This worker, as a view is read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Me {
    pub net: WorkerNet,
    pub underlay: Ipv4Addr,
}

/// Why a view is refused: the field (`services[3].rr_ip`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ViewError {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> ViewError {
    ViewError {
        field: field.into(),
        message: message.into(),
    }
}

/// A worker with instances of a service, as the closest ranking sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub subnet: Ipv4Addr,
    pub underlay: Ipv4Addr,
    /// This worker.
    pub mine: bool,
    pub same_cluster: bool,
    /// The service's instances there (sorted).
    pub addresses: Vec<Ipv4Addr>,
}

/// Round-trip times are compared in steps of this much: times within one step are a tie,
/// so two workers about as near do not swap places with every sample. 5 ms: on a loaded
/// machine the lowest of five samples to a worker next door still varies by a few ms.
pub const RTT_STEP: Duration = Duration::from_millis(5);

/// The best worker for a closest address: this one, else one of this cluster, else the one
/// with the lowest measured round-trip time to its underlay (`rtts`, by underlay, in
/// [`RTT_STEP`]s; unknown ones last), ties broken by underlay address, then subnet. `None`
/// when there is none.
pub fn rank<'a>(
    candidates: &'a [Candidate],
    rtts: &BTreeMap<Ipv4Addr, Duration>,
) -> Option<&'a Candidate> {
    candidates.iter().min_by_key(|c| {
        let steps = rtts
            .get(&c.underlay)
            .map(|d| d.as_nanos() / RTT_STEP.as_nanos());
        (
            !c.mine,
            !c.same_cluster,
            steps.is_none(),
            steps.unwrap_or(u128::MAX),
            c.underlay,
            c.subnet,
        )
    })
}

/// A view checked against this worker: all but the closest choices settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Service name (lowercase) → its round-robin address.
    pub names: BTreeMap<String, Ipv4Addr>,
    /// Every other worker: subnet → underlay address.
    pub peers: BTreeMap<Ipv4Addr, Ipv4Addr>,
    /// Round-robin and instance addresses → their targets.
    fixed: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
    /// Closest addresses → the workers to choose from.
    closest: BTreeMap<Ipv4Addr, Vec<Candidate>>,
}

impl Plan {
    /// The translation table, with the closest choices made for `rtts`.
    pub fn translations(&self, rtts: &BTreeMap<Ipv4Addr, Duration>) -> Translations {
        let mut targets = self.fixed.clone();
        for (vip, candidates) in &self.closest {
            let chosen = rank(candidates, rtts)
                .map(|c| c.addresses.clone())
                .unwrap_or_default();
            targets.insert(*vip, chosen);
        }
        Translations { targets }
    }

    /// The underlay addresses worth measuring: the peers' (not this worker's own).
    pub fn underlays(&self, mine: Ipv4Addr) -> BTreeSet<Ipv4Addr> {
        self.peers
            .values()
            .copied()
            .filter(|u| *u != mine)
            .collect()
    }
}

/// What a virtual address stands for; one address stands for one thing only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meaning {
    RoundRobin(usize),
    Closest(usize),
    Instance(Ipv4Addr),
}

/// An address that can be a unicast destination: not 0.0.0.0, multicast or broadcast.
fn unicast(ip: Ipv4Addr) -> Result<(), String> {
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        Err(format!("{ip} is not a unicast address"))
    } else {
        Ok(())
    }
}

/// A service name: 1–253 characters, dot-separated labels of 1–63 letters, digits, `-`, `_`.
fn check_name(name: &str) -> Result<String, String> {
    let lower = name.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 253
        && lower.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        });
    if ok {
        Ok(lower)
    } else {
        Err(format!(
            "{name:?} is not a service name (dot-separated labels of letters, digits, '-', '_')"
        ))
    }
}

struct Checker<'a> {
    me: &'a Me,
    /// Every worker, this one included: subnet → underlay.
    workers: BTreeMap<Ipv4Addr, Ipv4Addr>,
    vips: BTreeMap<Ipv4Addr, (Meaning, String)>,
}

impl Checker<'_> {
    /// The worker subnet `ip` is in, if any.
    fn owner(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        let subnet = Ipv4Addr::from(u32::from(ip) & !63);
        self.workers.contains_key(&subnet).then_some(subnet)
    }

    fn claim(&mut self, vip: Ipv4Addr, meaning: Meaning, field: String) -> Result<(), ViewError> {
        unicast(vip).map_err(|m| refuse(&field, m))?;
        if let Some(subnet) = self.owner(vip) {
            return Err(refuse(
                field,
                format!("{vip} is inside the worker subnet {subnet}/26"),
            ));
        }
        match self.vips.get(&vip) {
            Some((m, _)) if *m == meaning => Ok(()),
            Some((_, other)) => Err(refuse(field, format!("{vip} is already {other}"))),
            None => {
                self.vips.insert(vip, (meaning, field));
                Ok(())
            }
        }
    }
}

/// Checks `view` against this worker and settles what it can. Refused (naming the field):
/// an address that is not a unicast IPv4 address; a peer subnet that is not a /26 network
/// address, or one listed twice with two underlays; a service name that is not one or is
/// listed twice; a virtual address inside a worker subnet or standing for two things (two
/// services' `rr_ip`, a `closest_ip` that is another's `rr_ip`, one `instance_ip` for two
/// instances); an instance address in no worker's subnet (this one's or a peer's).
pub fn check(view: &View, me: &Me) -> Result<Plan, ViewError> {
    let mut c = Checker {
        me,
        workers: BTreeMap::from([(me.net.subnet, me.underlay)]),
        vips: BTreeMap::new(),
    };
    let mut plan = Plan::default();
    let mut listed: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (i, p) in view.peers.iter().enumerate() {
        WorkerNet::new(p.subnet).map_err(|m| refuse(format!("peers[{i}].subnet"), m))?;
        unicast(p.underlay).map_err(|m| refuse(format!("peers[{i}].underlay"), m))?;
        if p.subnet == c.me.net.subnet {
            continue;
        }
        match listed.get(&p.subnet) {
            Some(k) if plan.peers[&p.subnet] != p.underlay => {
                return Err(refuse(
                    format!("peers[{i}].underlay"),
                    format!(
                        "the worker {}/26 is at {} already (peers[{k}])",
                        p.subnet, plan.peers[&p.subnet]
                    ),
                ));
            }
            Some(_) => {}
            None => {
                listed.insert(p.subnet, i);
                plan.peers.insert(p.subnet, p.underlay);
                c.workers.insert(p.subnet, p.underlay);
            }
        }
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, s) in view.services.iter().enumerate() {
        let at = |f: &str| format!("services[{i}].{f}");
        let name = check_name(&s.name).map_err(|m| refuse(at("name"), m))?;
        if let Some(k) = names.get(&name) {
            return Err(refuse(
                at("name"),
                format!("{name:?} is already services[{k}].name"),
            ));
        }
        names.insert(name.clone(), i);
        c.claim(s.rr_ip, Meaning::RoundRobin(i), at("rr_ip"))?;
        if let Some(closest) = s.closest_ip {
            c.claim(closest, Meaning::Closest(i), at("closest_ip"))?;
        }
        let mut all = BTreeSet::new();
        let mut by_worker: BTreeMap<Ipv4Addr, Candidate> = BTreeMap::new();
        for (j, inst) in s.instances.iter().enumerate() {
            let at = |f: &str| format!("services[{i}].instances[{j}].{f}");
            unicast(inst.underlay).map_err(|m| refuse(at("underlay"), m))?;
            let Some(subnet) = c.owner(inst.address) else {
                return Err(refuse(
                    at("address"),
                    format!(
                        "{} is in no worker's subnet (this worker's {}/26 or a peer's)",
                        inst.address, c.me.net.subnet
                    ),
                ));
            };
            if let Some(vip) = inst.instance_ip {
                c.claim(vip, Meaning::Instance(inst.address), at("instance_ip"))?;
                plan.fixed.insert(vip, vec![inst.address]);
            }
            all.insert(inst.address);
            let w = by_worker.entry(subnet).or_insert_with(|| Candidate {
                subnet,
                underlay: c.workers[&subnet],
                mine: subnet == c.me.net.subnet,
                same_cluster: false,
                addresses: Vec::new(),
            });
            w.same_cluster |= inst.same_cluster;
            if !w.addresses.contains(&inst.address) {
                w.addresses.push(inst.address);
            }
        }
        plan.fixed.insert(s.rr_ip, all.into_iter().collect());
        if let Some(closest) = s.closest_ip {
            let candidates = by_worker
                .into_values()
                .map(|mut w| {
                    w.addresses.sort();
                    w
                })
                .collect();
            plan.closest.insert(closest, candidates);
        }
        plan.names.insert(name, s.rr_ip);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn me() -> Me {
        Me {
            net: WorkerNet::new(ip("10.18.0.64")).unwrap(),
            underlay: ip("192.0.2.2"),
        }
    }

    fn view(v: serde_json::Value) -> View {
        canopy_daemon::json_body(v.to_string().as_bytes()).unwrap()
    }

    /// Three workers: this one (10.18.0.64 at .2), one in this cluster (10.18.0.0 at .1),
    /// one in another (10.18.0.128 at .3).
    fn example() -> serde_json::Value {
        json!({
            "peers": [
                {"subnet": "10.18.0.0", "underlay": "192.0.2.1"},
                {"subnet": "10.18.0.64", "underlay": "192.0.2.2"},
                {"subnet": "10.18.0.128", "underlay": "192.0.2.3"}
            ],
            "services": [
                {"name": "ClientSrvr.test.nginx.test", "rr_ip": "10.30.55.55", "closest_ip": "10.30.0.9",
                 "instances": [
                    {"instance_ip": "10.30.0.12", "address": "10.18.0.66", "underlay": "192.0.2.2", "same_cluster": true},
                    {"instance_ip": "10.30.0.13", "address": "10.18.0.2", "underlay": "192.0.2.1", "same_cluster": true},
                    {"address": "10.18.0.130", "underlay": "192.0.2.3", "same_cluster": false}
                 ]},
                {"name": "app.t.db.t", "rr_ip": "10.30.1.1", "closest_ip": null, "instances": []}
            ]
        })
    }

    #[test]
    fn the_example_gives_translations_names_and_peers() {
        let plan = check(&view(example()), &me()).unwrap();
        let t = plan.translations(&BTreeMap::new());
        let expect: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> = [
            // Sorted as addresses.
            (
                "10.30.55.55",
                vec!["10.18.0.2", "10.18.0.66", "10.18.0.130"],
            ),
            ("10.30.0.12", vec!["10.18.0.66"]),
            ("10.30.0.13", vec!["10.18.0.2"]),
            // Closest: this worker's own instance.
            ("10.30.0.9", vec!["10.18.0.66"]),
            ("10.30.1.1", vec![]),
        ]
        .into_iter()
        .map(|(v, t)| (ip(v), t.into_iter().map(ip).collect()))
        .collect();
        assert_eq!(t.targets, expect);
        assert_eq!(
            plan.names,
            BTreeMap::from([
                ("app.t.db.t".to_owned(), ip("10.30.1.1")),
                ("clientsrvr.test.nginx.test".to_owned(), ip("10.30.55.55")),
            ])
        );
        // This worker is not its own peer.
        assert_eq!(
            plan.peers,
            BTreeMap::from([
                (ip("10.18.0.0"), ip("192.0.2.1")),
                (ip("10.18.0.128"), ip("192.0.2.3"))
            ])
        );
        assert_eq!(
            plan.underlays(me().underlay),
            BTreeSet::from([ip("192.0.2.1"), ip("192.0.2.3")])
        );
    }

    fn candidate(subnet: &str, underlay: &str, mine: bool, same_cluster: bool) -> Candidate {
        Candidate {
            subnet: ip(subnet),
            underlay: ip(underlay),
            mine,
            same_cluster,
            addresses: vec![Ipv4Addr::from(u32::from(ip(subnet)) + 2)],
        }
    }

    #[test]
    fn the_ranking_of_workers() {
        let ms = Duration::from_millis;
        let a = candidate("10.18.0.0", "192.0.2.1", false, false);
        let b = candidate("10.18.0.64", "192.0.2.2", false, false);
        let c = candidate("10.18.0.128", "192.0.2.3", false, true);
        let mine = candidate("10.18.0.192", "192.0.2.4", true, true);
        let d = candidate("10.18.1.0", "192.0.2.1", false, false);
        type Case<'a> = (&'a str, Vec<&'a Candidate>, Vec<(&'a str, u64)>, &'a str);
        let cases: Vec<Case> = vec![
            (
                "this worker first, however slow",
                vec![&a, &c, &mine],
                vec![("192.0.2.1", 1), ("192.0.2.3", 1), ("192.0.2.4", 900)],
                "10.18.0.192",
            ),
            (
                "then this cluster, however slow",
                vec![&a, &b, &c],
                vec![("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 500)],
                "10.18.0.128",
            ),
            (
                "then the lowest round trip",
                vec![&a, &b],
                vec![("192.0.2.1", 30), ("192.0.2.2", 20)],
                "10.18.0.64",
            ),
            (
                "a measured one before an unknown one",
                vec![&a, &b],
                vec![("192.0.2.2", 400)],
                "10.18.0.64",
            ),
            (
                "all unknown: the lowest underlay",
                vec![&b, &a],
                vec![],
                "10.18.0.0",
            ),
            (
                "equal round trips: the lowest underlay",
                vec![&b, &a],
                vec![("192.0.2.1", 5), ("192.0.2.2", 5)],
                "10.18.0.0",
            ),
            (
                "within one step: a tie",
                vec![&b, &a],
                vec![("192.0.2.1", 0), ("192.0.2.2", 0)],
                "10.18.0.0",
            ),
            (
                "one underlay for two workers: the lowest subnet",
                vec![&d, &a],
                vec![("192.0.2.1", 5)],
                "10.18.0.0",
            ),
        ];
        for (what, cands, rtts, best) in cases {
            let cands: Vec<Candidate> = cands.into_iter().cloned().collect();
            let rtts = rtts.into_iter().map(|(u, t)| (ip(u), ms(t))).collect();
            assert_eq!(rank(&cands, &rtts).unwrap().subnet, ip(best), "{what}");
        }
        assert!(rank(&[], &BTreeMap::new()).is_none());
        // 0.3 ms and 4.5 ms are one step; 4.5 ms and 5.2 ms are not.
        let us = Duration::from_micros;
        let (ab, rtts) = (
            [b.clone(), a.clone()],
            BTreeMap::from([(ip("192.0.2.1"), us(4500)), (ip("192.0.2.2"), us(300))]),
        );
        assert_eq!(rank(&ab, &rtts).unwrap().subnet, ip("10.18.0.0"));
        let rtts = BTreeMap::from([(ip("192.0.2.1"), us(5200)), (ip("192.0.2.2"), us(4500))]);
        assert_eq!(rank(&ab, &rtts).unwrap().subnet, ip("10.18.0.64"));
    }

    #[test]
    fn closest_follows_the_measurements() {
        let v = view(json!({
            "peers": [
                {"subnet": "10.18.0.0", "underlay": "192.0.2.1"},
                {"subnet": "10.18.0.128", "underlay": "192.0.2.3"}
            ],
            "services": [{"name": "s", "rr_ip": "10.30.0.1", "closest_ip": "10.30.0.2", "instances": [
                {"address": "10.18.0.2", "underlay": "192.0.2.1", "same_cluster": false},
                {"address": "10.18.0.3", "underlay": "192.0.2.1", "same_cluster": false},
                {"address": "10.18.0.130", "underlay": "192.0.2.3", "same_cluster": false}
            ]}]
        }));
        let plan = check(&v, &me()).unwrap();
        let closest = |rtts: &[(&str, u64)]| {
            let rtts = rtts
                .iter()
                .map(|(u, t)| (ip(u), Duration::from_millis(*t)))
                .collect();
            plan.translations(&rtts).targets[&ip("10.30.0.2")].clone()
        };
        assert_eq!(closest(&[]), vec![ip("10.18.0.2"), ip("10.18.0.3")]);
        assert_eq!(
            closest(&[("192.0.2.1", 9), ("192.0.2.3", 3)]),
            vec![ip("10.18.0.130")]
        );
        assert_eq!(
            closest(&[("192.0.2.1", 2), ("192.0.2.3", 3)]),
            vec![ip("10.18.0.2"), ip("10.18.0.3")]
        );
    }

    #[test]
    fn bad_views_are_refused_naming_the_field() {
        type Edit = fn(&mut serde_json::Value);
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "a peer subnet that is not a /26",
                |v| v["peers"][2]["subnet"] = json!("10.18.0.129"),
                "peers[2].subnet",
            ),
            (
                "a peer listed with two underlays",
                |v| v["peers"][2] = json!({"subnet": "10.18.0.0", "underlay": "192.0.2.9"}),
                "peers[2].underlay",
            ),
            (
                "a peer underlay that is not unicast",
                |v| v["peers"][0]["underlay"] = json!("0.0.0.0"),
                "peers[0].underlay",
            ),
            (
                "two services with one rr_ip",
                |v| v["services"][1]["rr_ip"] = json!("10.30.55.55"),
                "services[1].rr_ip",
            ),
            (
                "a closest_ip that is an rr_ip",
                |v| v["services"][1]["closest_ip"] = json!("10.30.55.55"),
                "services[1].closest_ip",
            ),
            (
                "one instance_ip for two instances",
                |v| v["services"][0]["instances"][1]["instance_ip"] = json!("10.30.0.12"),
                "services[0].instances[1].instance_ip",
            ),
            (
                "a virtual address inside a worker subnet",
                |v| v["services"][1]["rr_ip"] = json!("10.18.0.100"),
                "services[1].rr_ip",
            ),
            (
                "an instance in no worker's subnet",
                |v| v["services"][0]["instances"][2]["address"] = json!("10.18.9.9"),
                "services[0].instances[2].address",
            ),
            (
                "a service name twice",
                |v| v["services"][1]["name"] = json!("clientsrvr.TEST.nginx.test"),
                "services[1].name",
            ),
            (
                "a name that is none",
                |v| v["services"][1]["name"] = json!("a..b"),
                "services[1].name",
            ),
        ];
        for (what, edit, field) in cases {
            let mut v = example();
            edit(&mut v);
            let e = check(&view(v), &me()).unwrap_err();
            assert_eq!(e.field, field, "{what}: {e}");
        }
    }

    #[test]
    fn bodies_that_do_not_decode_name_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"peers": []}), "body"),
            (
                json!({"peers": [{"subnet": "fd00::", "underlay": "192.0.2.1"}], "services": []}),
                "peers[0].subnet",
            ),
            (
                json!({"peers": [], "services": [{"name": "s", "rr_ip": "10.30.0.1", "instances": [
                    {"address": "10.18.0.66", "underlay": "192.0.2.2", "same_cluster": true, "port": 1}]}]}),
                "services[0].instances[0]",
            ),
            (
                json!({"peers": [], "services": [{"name": "s", "rr_ip": "10.30.0.1", "instances": [
                    {"address": "10.18.0.66", "underlay": "192.0.2.2"}]}]}),
                "services[0].instances[0]",
            ),
        ];
        for (body, field) in cases {
            let e = canopy_daemon::json_body::<View>(body.to_string().as_bytes()).unwrap_err();
            assert!(
                e.field == field || e.field.starts_with(&format!("{field}.")),
                "{body}: {e:?}"
            );
        }
        // Optional fields may be absent or null.
        assert!(check(&view(example()), &me()).is_ok());
    }
}
