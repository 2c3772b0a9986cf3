//! The overlay as the cluster drives it: workers in namespaces this test creates, joined by a
//! test LAN (a bridge in a namespace of its own), each running the real `net-manager` binary
//! configured by `PUT /node` with its LAN address and given the same view by `PUT /view`.
//!
//! - a service's round-robin address reaches its instances on both workers, an instance
//!   address exactly one, the closest address the asking worker's own instance; a view
//!   without an instance stops sending to it; a view without a peer cuts the peer off; the
//!   peer's round-trip time shows in `GET /view`;
//! - with three workers, the closest address follows the measurements: a peer that stops
//!   answering probes loses its place, and gets it back;
//! - `--same-host`: two net managers in one namespace, each translating only its own bridge's
//!   traffic, reaching each other's instances by the kernel's routes.
//!
//! Every worker's namespace has iptables' `FORWARD` policy drop (Docker's): the net managers'
//! own rules there let the overlay through, and go with `--remove-on-exit`.
//!
//! Traffic goes only to addresses inside these namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Lab, NetManager, fetch, fetch_soon, ip, prefix, run_in};
use net_manager::link;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A worker: its namespace, LAN address, subnet, net manager and its state directory.
struct Worker {
    ns: PathBuf,
    lan: Ipv4Addr,
    subnet: Ipv4Addr,
    tag: String,
    dir: tempfile::TempDir,
    nm: Option<NetManager>,
}

impl Worker {
    fn nm(&self) -> &NetManager {
        self.nm.as_ref().unwrap()
    }

    fn start(&mut self) {
        let flags = ["--probe-interval-secs=1", "--remove-on-exit"].map(str::to_owned);
        self.nm = Some(NetManager::start(
            &self.ns,
            self.dir.path(),
            &self.tag,
            &flags,
        ));
    }

    fn peer(&self) -> Value {
        json!({"subnet": self.subnet, "underlay": self.lan})
    }

    fn instance(&self, address: &str, instance_ip: Option<&str>, same_cluster: bool) -> Value {
        json!({"instance_ip": instance_ip, "address": address, "underlay": self.lan,
               "same_cluster": same_cluster})
    }
}

/// The test LAN: a bridge in namespace `<test>lan` (tests run at once, with one prefix).
async fn lan(lab: &mut Lab, test: &str) -> (PathBuf, String) {
    let ns = lab.netns(&format!("{test}lan"));
    let bridge = format!("{}lan", prefix());
    let b = bridge.clone();
    link::in_netns(Some(&ns), move |h| async move {
        link::ensure_bridge(&h, &b, Ipv4Addr::new(192, 0, 2, 254), 24, 1500).await
    })
    .await
    .expect("the LAN");
    (ns, bridge)
}

/// Worker `n` (1, 2, …) on the LAN: address 192.0.2.n, subnet 10.18.0.(64·(n-1)), its net
/// manager started and configured.
fn worker(lab: &mut Lab, n: u8, lan: &(PathBuf, String)) -> Worker {
    let p = prefix();
    let test = lan.0.display().to_string();
    let test = test.rsplit('-').next().unwrap().trim_end_matches("lan");
    let ns = lab.netns(&format!("{test}w{n}"));
    let addr = Ipv4Addr::new(192, 0, 2, n);
    lab.veth_into(
        &lan.0,
        &lan.1,
        &format!("{p}l{n}"),
        &ns,
        &format!("{p}n{n}"),
        addr,
        24,
    );
    common::forward_policy_drop(&ns);
    let mut w = Worker {
        ns,
        lan: addr,
        subnet: Ipv4Addr::new(10, 18, 0, 64 * (n - 1)),
        tag: n.to_string(),
        dir: tempfile::tempdir().unwrap(),
        nm: None,
    };
    w.start();
    w.nm().configure(&w.subnet.to_string(), &addr.to_string());
    w
}

fn pages(ns: &Path, vip: &str, n: usize) -> BTreeSet<String> {
    (0..n).filter_map(|_| fetch(ns, ip(vip))).collect()
}

fn set(pages: &[&str]) -> BTreeSet<String> {
    pages.iter().map(|p| (*p).to_owned()).collect()
}

/// Waits up to `secs` for `ok`.
fn eventually(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The RTT `GET /view` shows for the peer at `underlay` (`None`: unknown).
fn rtt(w: &Worker, underlay: Ipv4Addr) -> Option<f64> {
    let (_, v) = w.nm().call("GET", "/view", None);
    v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["underlay"] == underlay.to_string())
        .and_then(|p| p["rtt_ms"].as_f64())
}

/// Waits (20 s at most) until the closest address 10.30.1.9 answers `page` from `client`
/// on worker `a`. Averages of round-trip times take a few samples (one a second) to settle.
fn closest_becomes(a: &Worker, client: &Path, page: &str) {
    let start = Instant::now();
    while fetch(client, ip("10.30.1.9")).as_deref() != Some(page) {
        let (_, v) = a.nm().call("GET", "/view", None);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the closest address never answered {page}: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(w: &mut Worker) -> String {
    w.nm.take().unwrap().terminate();
    let left = common::nothing_left_in(&w.ns, &w.tag, &[]);
    left.err().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_follow_the_view() {
    let mut lab = Lab::new();
    let lan = lan(&mut lab, "v").await;
    let mut a = worker(&mut lab, 1, &lan);
    let mut b = worker(&mut lab, 2, &lan);
    let (_, client) = a.nm().attach("app.t.client.t.instance.0");
    let (a_ip, a_srv) = a.nm().attach("app.t.web.t.instance.0");
    let (b_ip, b_srv) = b.nm().attach("app.t.web.t.instance.1");
    assert_eq!((a_ip.as_str(), b_ip.as_str()), ("10.18.0.3", "10.18.0.66"));
    lab.web_server(&a_srv, "page-a");
    lab.web_server(&b_srv, "page-b");

    let web = |instances: Vec<Value>| {
        json!({"name": "app.t.web.t", "rr_ip": "10.30.55.55", "closest_ip": "10.30.0.9",
               "instances": instances})
    };
    let both = json!({
        "peers": [a.peer(), b.peer()],
        "services": [web(vec![
            a.instance(&a_ip, Some("10.30.0.12"), true),
            b.instance(&b_ip, Some("10.30.0.13"), true),
        ])]
    });
    for w in [&a, &b] {
        w.nm().view(&both);
    }
    assert!(fetch_soon(&client, ip("10.30.55.55")).starts_with("page-"));
    assert_eq!(
        pages(&client, "10.30.55.55", 12),
        set(&["page-a", "page-b"])
    );
    assert_eq!(pages(&client, "10.30.0.13", 4), set(&["page-b"]));
    assert_eq!(pages(&client, "10.30.0.12", 4), set(&["page-a"]));
    // Closest from worker A: its own instance, every time.
    assert_eq!(pages(&client, "10.30.0.9", 6), set(&["page-a"]));
    // Across the tunnel by namespace address too.
    assert_eq!(fetch(&client, ip(&b_ip)).as_deref(), Some("page-b"));
    // An instance behind the round-robin address reaches both, itself included.
    assert_eq!(pages(&a_srv, "10.30.55.55", 12), set(&["page-a", "page-b"]));
    for w in [&a, &b] {
        for link in [NetManager::bridge(&w.tag), NetManager::tunnel(&w.tag)] {
            common::accepted_in_forward(&w.ns, &link).unwrap();
        }
    }

    // The peer's round-trip time, once probed (this worker is not its own peer).
    eventually(10, "no round-trip time for the peer", || {
        rtt(&a, b.lan).is_some()
    });
    let (_, v) = a.nm().call("GET", "/view", None);
    assert_eq!(v["peers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["peers"][0]["subnet"], "10.18.0.64", "{v}");
    assert_eq!(v["names"], json!({"app.t.web.t": "10.30.55.55"}));
    let metrics = a.nm().metrics();
    assert!(metrics.contains("canopy_net_peers 1"), "{metrics}");
    assert!(
        metrics.contains("canopy_net_peer_rtt_seconds{underlay=\"192.0.2.2\"}"),
        "{metrics}"
    );

    // A view without B's instance: only A's answers, and B's instance address is gone.
    let only_a = json!({
        "peers": [a.peer(), b.peer()],
        "services": [web(vec![a.instance(&a_ip, Some("10.30.0.12"), true)])]
    });
    for w in [&a, &b] {
        w.nm().view(&only_a);
    }
    assert_eq!(pages(&client, "10.30.55.55", 8), set(&["page-a"]));
    assert!(common::unreachable(&client, ip("10.30.0.13")));
    assert_eq!(fetch(&client, ip(&b_ip)).as_deref(), Some("page-b"));

    // B's instance in a view without B: refused, naming it; nothing changed.
    let mut wrong = json!({
        "peers": [a.peer()],
        "services": [web(vec![a.instance(&a_ip, None, true)])]
    });
    wrong["services"][0]["instances"]
        .as_array_mut()
        .unwrap()
        .push(b.instance(&b_ip, None, true));
    let (status, v) = a.nm().call("PUT", "/view", Some(&wrong));
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], "services[0].instances[1].address", "{v}");
    assert_eq!(fetch(&client, ip(&b_ip)).as_deref(), Some("page-b"));

    // Without B among the peers, B is cut off: no route, no RTT, nothing answers.
    let without_b = json!({
        "peers": [a.peer()],
        "services": [web(vec![a.instance(&a_ip, Some("10.30.0.12"), true)])]
    });
    a.nm().view(&without_b);
    assert!(common::unreachable(&client, ip(&b_ip)));
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-a"));
    let (_, v) = a.nm().call("GET", "/view", None);
    assert_eq!(v["peers"], json!([]), "{v}");
    let routes = run_in(
        &a.ns,
        &["ip", "route", "show", "dev", &NetManager::tunnel("1")],
    );
    assert!(!routes.contains("10.18.0.64"), "{routes}");

    for w in [&mut a, &mut b] {
        let left = stop(w);
        assert!(left.is_empty(), "{left}");
    }
    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_closest_address_follows_the_round_trip_times() {
    let mut lab = Lab::new();
    let lan = lan(&mut lab, "c").await;
    let mut a = worker(&mut lab, 1, &lan);
    let mut b = worker(&mut lab, 2, &lan);
    let mut c = worker(&mut lab, 3, &lan);
    let (_, client) = a.nm().attach("app.t.client.t.instance.0");
    let (b_ip, b_srv) = b.nm().attach("app.t.far.t.instance.0");
    let (c_ip, c_srv) = c.nm().attach("app.t.far.t.instance.1");
    lab.web_server(&b_srv, "page-b");
    lab.web_server(&c_srv, "page-c");
    // Neither worker is in A's cluster: the round-trip times decide.
    let view = json!({
        "peers": [a.peer(), b.peer(), c.peer()],
        "services": [{"name": "app.t.far.t", "rr_ip": "10.30.1.1", "closest_ip": "10.30.1.9",
                      "instances": [b.instance(&b_ip, None, false), c.instance(&c_ip, None, false)]}]
    });
    for w in [&a, &b, &c] {
        w.nm().view(&view);
    }
    eventually(10, "no round-trip times", || {
        rtt(&a, b.lan).is_some() && rtt(&a, c.lan).is_some()
    });
    // On one LAN both are within a millisecond: a tie, and B has the lower address. (Once
    // the averages settle: a first sample waits for ARP, and this machine is shared.)
    closest_becomes(&a, &client, "page-b");

    // B's net manager stops answering probes (its instance still runs): after three
    // losses its time is unknown, and C is the closest.
    let nm = b.nm.take().unwrap();
    nm.kill();
    eventually(15, "B's round-trip time stayed known", || {
        rtt(&a, b.lan).is_none()
    });
    closest_becomes(&a, &client, "page-c");
    assert_eq!(pages(&client, "10.30.1.9", 4), set(&["page-c"]));
    let log = a.nm().log_text();
    assert!(log.contains("a closest choice changed"), "{log}");
    assert_eq!(pages(&client, "10.30.1.1", 8), set(&["page-b", "page-c"]));

    // B answers again: back to B.
    b.start();
    eventually(10, "B's round-trip time stayed unknown", || {
        rtt(&a, b.lan).is_some()
    });
    closest_becomes(&a, &client, "page-b");
    let metrics = a.nm().metrics();
    assert!(metrics.contains("canopy_net_peers 2"), "{metrics}");

    for w in [&mut a, &mut b, &mut c] {
        let left = stop(w);
        assert!(left.is_empty(), "{left}");
    }
    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn same_host_workers_reach_each_other_and_translate_only_their_own_traffic() {
    let mut lab = Lab::new();
    let host = lab.netns("sh");
    common::forward_policy_drop(&host);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let flags = ["--same-host", "--remove-on-exit"].map(str::to_owned);
    let wa = NetManager::start(&host, dirs[0].path(), "a", &flags);
    let wb = NetManager::start(&host, dirs[1].path(), "b", &flags);
    wa.configure("10.18.0.128", "192.0.2.1");
    wb.configure("10.18.0.192", "192.0.2.1");
    let (_, client_a) = wa.attach("app.t.client.t.instance.0");
    let (srv_b_ip, srv_b) = wb.attach("app.t.web.t.instance.0");
    let (_, client_b) = wb.attach("app.t.client.t.instance.1");
    assert_eq!(srv_b_ip, "10.18.0.194");
    lab.web_server(&srv_b, "page-b");

    let peers = json!([{"subnet": "10.18.0.128", "underlay": "192.0.2.1"},
                       {"subnet": "10.18.0.192", "underlay": "192.0.2.1"}]);
    let web = json!({"name": "app.t.web.t", "rr_ip": "10.30.55.55", "closest_ip": "10.30.0.9",
                     "instances": [{"instance_ip": "10.30.0.13", "address": srv_b_ip,
                                    "underlay": "192.0.2.1", "same_cluster": true}]});
    wa.view(&json!({"peers": peers, "services": [web]}));
    // Worker B's view has one more service than A's.
    let only_b = json!({"name": "app.t.onlyb.t", "rr_ip": "10.30.7.7",
                        "instances": [{"address": srv_b_ip, "underlay": "192.0.2.1",
                                       "same_cluster": true}]});
    wb.view(&json!({"peers": peers, "services": [web, only_b]}));

    // A's service address, translated by A's table, reaches B's instance.
    for vip in ["10.30.55.55", "10.30.0.13", "10.30.0.9"] {
        assert_eq!(fetch_soon(&client_a, ip(vip)), "page-b", "{vip}");
    }
    // B's table translates B's bridge's traffic, and only that: not A's.
    assert_eq!(fetch_soon(&client_b, ip("10.30.7.7")), "page-b");
    assert!(common::unreachable(&client_a, ip("10.30.7.7")));
    let table = run_in(
        &host,
        &["nft", "list", "table", "ip", &NetManager::table("b")],
    );
    assert!(
        table.contains(&format!("iifname \"{}\"", NetManager::bridge("b"))),
        "{table}"
    );
    // Each bridge's traffic accepted in FORWARD, by its own net manager; no tunnel rules.
    for tag in ["a", "b"] {
        common::accepted_in_forward(&host, &NetManager::bridge(tag)).unwrap();
        assert!(common::tagged_rules(&host, &NetManager::tunnel(tag)).is_empty());
    }
    // No tunnel, and no peers in the kernel (the routes between the bridges are the kernel's).
    let links = common::links_in(&host);
    assert!(!links.contains(&NetManager::tunnel("a")), "{links}");
    assert!(!links.contains(&NetManager::tunnel("b")), "{links}");
    let (_, v) = wa.call("GET", "/view", None);
    assert_eq!(v["peers"][0]["subnet"], "10.18.0.192", "{v}");
    assert_eq!(
        v["peers"][0]["rtt_ms"],
        Value::Null,
        "no probes in same-host mode"
    );

    wa.terminate();
    wb.terminate();
    for tag in ["a", "b"] {
        common::nothing_left_in(&host, tag, &[]).unwrap();
    }
    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}
