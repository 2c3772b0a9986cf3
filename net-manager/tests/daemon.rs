//! The `net-manager` binary, run inside a worker namespace this test creates, driven through
//! its unix-socket API with curl: nothing attaches before `PUT /node`; then instances get
//! namespaces, addresses and veths; a view makes service addresses reach them; bad input is
//! refused naming the field; a kill -9 and restart rebuilds nothing and keeps an established
//! connection; a delete removes the instance's network; a tunnel no longer named is removed
//! at start; `--remove-on-exit` leaves nothing behind. The worker's iptables `FORWARD` policy
//! is drop (as Docker sets it): the net manager's own rules there let the overlay through.
//! An instance reaches itself through a service IP (hairpin) and through a port it publishes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Lab, NetManager, fetch, fetch_soon, in_ns, ip, links_in, prefix, run_in};
use net_manager::plan::host_if;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

/// A LAN address for the worker (on a bridge of its own: no traffic leaves the namespace).
fn lan(worker: &Path, addr: &str) {
    let name = format!("{}lan", prefix());
    assert!(
        in_ns(worker, &["ip", "link", "add", &name, "type", "bridge"])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        in_ns(worker, &["ip", "addr", "add", addr, "dev", &name])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        in_ns(worker, &["ip", "link", "set", &name, "up"])
            .status()
            .unwrap()
            .success()
    );
}

fn one_service(rr: &str, instances: &[(&str, Option<&str>)]) -> Value {
    let instances: Vec<Value> = instances
        .iter()
        .map(|(address, iip)| {
            json!({"instance_ip": iip, "address": address, "underlay": "192.0.2.1", "same_cluster": true})
        })
        .collect();
    json!({"peers": [{"subnet": "10.18.0.0", "underlay": "192.0.2.1"}],
           "services": [{"name": "app.t.web.t", "rr_ip": rr, "instances": instances}]})
}

fn link_line(ns: &Path, name: &str) -> Option<String> {
    links_in(ns)
        .lines()
        .find(|l| l.contains(&format!(": {name}:")) || l.contains(&format!(": {name}@")))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_attaches_translates_survives_restarts_and_cleans_up() {
    let mut lab = Lab::new();
    let worker = lab.netns("dw");
    lan(&worker, "192.0.2.1/24");
    common::forward_policy_drop(&worker);
    let tmp = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        NetManager::start(&worker, tmp.path(), "", &extra)
    };
    let d = start(&[]);

    // Nothing before the node is configured.
    let (status, v) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.client.t.instance.0"})),
    );
    assert_eq!(status, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("not configured: "),
        "{v}"
    );
    assert_eq!(d.call("GET", "/node", None).0, 404);
    assert_eq!(
        d.call("PUT", "/view", Some(&one_service("10.30.0.1", &[])))
            .0,
        409
    );
    for (body, field) in [
        (
            json!({"subnet": "10.18.0.1", "underlay": "192.0.2.1"}),
            "subnet",
        ),
        (
            json!({"subnet": "10.18.0.0", "underlay": "0.0.0.0"}),
            "underlay",
        ),
        (json!({"subnet": "x", "underlay": "192.0.2.1"}), "subnet"),
        (json!({"subnet": "10.18.0.0"}), "body"),
        (
            json!({"subnet": "10.18.0.0", "underlay": "192.0.2.1", "vni": 3}),
            "vni",
        ),
    ] {
        let (status, v) = d.call("PUT", "/node", Some(&body));
        assert_eq!(
            (status, v["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    assert_eq!(
        d.call("GET", "/node", None).0,
        404,
        "nothing was configured"
    );

    d.configure("10.18.0.0", "192.0.2.1");
    d.configure("10.18.0.0", "192.0.2.1");
    let (status, node) = d.call("GET", "/node", None);
    assert_eq!(status, 200);
    assert_eq!(
        node,
        json!({"subnet": "10.18.0.0", "underlay": "192.0.2.1"})
    );
    let tunnel = NetManager::tunnel("");
    let tunnel_line = link_line(&worker, &tunnel).expect("the tunnel");
    assert!(tunnel_line.contains("02:c4:0a:12:00:00"), "{tunnel_line}");
    let details = run_in(&worker, &["ip", "-d", "link", "show", &tunnel]);
    assert!(
        details.contains("vxlan id 1") && details.contains("local 192.0.2.1"),
        "{details}"
    );
    assert!(details.contains("dstport 50103"), "{details}");
    // The bridge's and the tunnel's traffic accepted in FORWARD, once (configured twice).
    let bridge = NetManager::bridge("");
    for link in [&bridge, &tunnel] {
        common::accepted_in_forward(&worker, link).unwrap();
    }

    let (status, client) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.client.t.instance.0"})),
    );
    assert_eq!(status, 200, "{client}");
    assert_eq!(client["address"], "10.18.0.2");
    assert_eq!(client["dns"], "10.18.0.1", "the bridge is the name server");
    let client = std::path::PathBuf::from(client["netns"].as_str().unwrap());
    let (s1_ip, s1) = d.attach("app.t.web.t.instance.0");
    let (s2_ip, s2) = d.attach("app.t.web.t.instance.1");
    assert_eq!((s1_ip.as_str(), s2_ip.as_str()), ("10.18.0.3", "10.18.0.4"));
    // The same name again is the same attachment.
    assert_eq!(d.attach("app.t.web.t.instance.0").0, s1_ip);
    assert!(links_in(&s1).contains("eth0"));
    lab.web_server(&s1, "page-one");
    lab.web_server(&s2, "page-two");

    // Another subnet or underlay while instances are attached: refused, naming it.
    for (body, field) in [
        (
            json!({"subnet": "10.18.0.64", "underlay": "192.0.2.1"}),
            "subnet",
        ),
        (
            json!({"subnet": "10.18.0.0", "underlay": "192.0.2.9"}),
            "underlay",
        ),
    ] {
        let (status, v) = d.call("PUT", "/node", Some(&body));
        assert_eq!((status, v["field"].as_str()), (409, Some(field)), "{v}");
    }

    let view = one_service(
        "10.30.55.55",
        &[(&s1_ip, Some("10.30.0.9")), (&s2_ip, None)],
    );
    d.view(&view);
    assert!(fetch_soon(&client, ip("10.30.55.55")).starts_with("page-"));
    let pages: BTreeSet<String> = (0..8)
        .filter_map(|_| fetch(&client, ip("10.30.55.55")))
        .collect();
    assert_eq!(pages.len(), 2, "{pages:?}");
    let (status, applied) = d.call("GET", "/view", None);
    assert_eq!(status, 200);
    assert_eq!(
        applied["translations"]["targets"],
        json!({"10.30.0.9": ["10.18.0.3"], "10.30.55.55": ["10.18.0.3", "10.18.0.4"]})
    );
    assert_eq!(applied["names"], json!({"app.t.web.t": "10.30.55.55"}));
    assert_eq!(
        applied["peers"],
        json!([]),
        "this worker is not its own peer"
    );

    // Bad views: refused, naming what is wrong; nothing changes.
    let mut two_rr = view.clone();
    two_rr["services"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "app.t.db.t", "rr_ip": "10.30.55.55", "instances": []}));
    let mut outside = view.clone();
    outside["services"][0]["instances"][0]["address"] = json!("10.18.5.5");
    let mut peer_subnet = view.clone();
    peer_subnet["peers"][0]["subnet"] = json!("10.18.0.65");
    for (body, field) in [
        (json!({"peers": [], "services": 5}), "services"),
        (json!({"peers": []}), "body"),
        (
            json!({"peers": [], "services": [{"name": "a", "rr_ip": "not-an-ip", "instances": []}]}),
            "services[0].rr_ip",
        ),
        (two_rr, "services[1].rr_ip"),
        (outside, "services[0].instances[0].address"),
        (peer_subnet, "peers[0].subnet"),
    ] {
        let (status, v) = d.call("PUT", "/view", Some(&body));
        assert_eq!(
            (status, v["field"].as_str()),
            (400, Some(field)),
            "{body}: {v}"
        );
    }
    // PUT /translations is gone.
    assert_eq!(
        d.call("PUT", "/translations", Some(&json!({"targets": {}})))
            .0,
        404,
        "PUT /translations is no longer served"
    );
    let (status, v) = d.call("POST", "/instances", Some(&json!({"name": "../etc"})));
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("name:"), "{v}");
    let (status, v) = d.call("POST", "/instances", Some(&json!({"nam": "x"})));
    assert_eq!(status, 400, "{v}");
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-one"));
    let metrics = d.metrics();
    for line in [
        "canopy_net_instances_attached 3",
        "canopy_net_translations 3",
        "canopy_net_view_updates_total 1",
        "canopy_net_views_rejected_total 6",
        "canopy_net_peers 0",
        "canopy_net_table_update_seconds_count",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }

    // An established connection through an instance address, held across a kill -9 and a
    // restart of the net manager (which configures itself from its store), which also
    // removes a veth of its prefix it does not own.
    let mut held = common::Held::open(&s1, &client, ip("10.30.0.9"), 9000);
    assert!(
        held.say("before"),
        "no connection through the instance address"
    );
    let veth_before = link_line(&worker, &host_if("app.t.web.t.instance.0")).unwrap();
    let stray = format!("{}ffffffffff", net_manager::plan::HOST_IF_PREFIX);
    assert!(
        in_ns(
            &worker,
            &[
                "ip", "link", "add", &stray, "type", "veth", "peer", "name", "strayp"
            ]
        )
        .status()
        .unwrap()
        .success()
    );
    // A veth an earlier version attached without hairpin mode gets it at the restart.
    let web0_if = host_if("app.t.web.t.instance.0");
    let hairpin = || {
        let port = run_in(&worker, &["ip", "-d", "link", "show", &web0_if]);
        port.contains("hairpin on")
    };
    assert!(hairpin());
    assert!(
        in_ns(
            &worker,
            &[
                "ip",
                "link",
                "set",
                &web0_if,
                "type",
                "bridge_slave",
                "hairpin",
                "off"
            ]
        )
        .status()
        .unwrap()
        .success()
    );
    assert!(!hairpin());
    d.kill();
    let d = start(&[]);
    assert!(hairpin(), "hairpin mode stayed off across the restart");
    assert!(
        held.say("after"),
        "the connection did not survive the restart: heard {:?}",
        held.heard()
    );
    assert_eq!(held.heard(), "before\nafter\n");
    drop(held);
    assert!(!links_in(&worker).contains(&stray), "the stray veth stayed");
    assert_eq!(
        link_line(&worker, &host_if("app.t.web.t.instance.0")).as_ref(),
        Some(&veth_before),
        "the instance's veth was rebuilt:\n{}",
        links_in(&worker)
    );
    assert_eq!(
        link_line(&worker, &tunnel),
        Some(tunnel_line),
        "the tunnel was rebuilt"
    );
    assert_eq!(d.call("GET", "/node", None).1, node);
    let (_, list) = d.call("GET", "/instances", None);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert_eq!(d.call("GET", "/view", None).1, applied);
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-one"));
    for link in [&bridge, &tunnel] {
        common::accepted_in_forward(&worker, link).unwrap();
    }

    // A detach removes the instance's network, and only its.
    for _ in 0..2 {
        let status = d
            .call("DELETE", "/instances/app.t.web.t.instance.1", None)
            .0;
        assert_eq!(status, 204);
    }
    assert!(!s2.exists(), "its namespace file stayed");
    assert!(!links_in(&worker).contains(&host_if("app.t.web.t.instance.1")));
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-one"));
    d.terminate();

    // Started with another tunnel name: the old tunnel goes, the new one comes.
    let other = format!("{}vy", prefix());
    let d = start(&[&format!("--tunnel={other}")]);
    assert!(
        link_line(&worker, &tunnel).is_none(),
        "{}",
        links_in(&worker)
    );
    assert!(
        link_line(&worker, &other).is_some(),
        "{}",
        links_in(&worker)
    );
    // Its rules go with it; the new one's come.
    assert_eq!(common::tagged_rules(&worker, &tunnel), Vec::<String>::new());
    common::accepted_in_forward(&worker, &other).unwrap();
    common::accepted_in_forward(&worker, &bridge).unwrap();
    assert_eq!(fetch(&client, ip("10.30.0.9")).as_deref(), Some("page-one"));
    d.terminate();

    // --remove-on-exit: nothing of the net manager's is left in the worker.
    let d = start(&[&format!("--tunnel={other}"), "--remove-on-exit"]);
    d.terminate();
    common::nothing_left_in(&worker, "", &[&other]).unwrap();
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("netns"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    // And it starts afresh: not configured.
    let d = start(&[&format!("--tunnel={other}")]);
    assert_eq!(d.call("GET", "/node", None).0, 404);
    d.terminate();
    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn published_ports_answer_on_the_workers_addresses_and_are_not_shared() {
    let mut lab = Lab::new();
    let worker = lab.netns("pw");
    lan(&worker, "192.0.2.1/24");
    let tmp = tempfile::tempdir().unwrap();
    // Configured by its flags at start.
    let flags = ["--subnet=10.18.0.0", "--underlay=192.0.2.1"].map(str::to_owned);
    let d = NetManager::start(&worker, tmp.path(), "", &flags);
    assert_eq!(
        d.call("GET", "/node", None).1,
        json!({"subnet": "10.18.0.0", "underlay": "192.0.2.1"})
    );
    // With nothing attached, another subnet replaces it: the bridge's address and the tunnel.
    d.configure("10.18.0.64", "192.0.2.1");
    let bridge = run_in(
        &worker,
        &["ip", "-o", "-4", "addr", "show", &NetManager::bridge("")],
    );
    assert!(
        bridge.contains("10.18.0.65/26") && !bridge.contains("10.18.0.1/"),
        "{bridge}"
    );
    let tunnel = run_in(
        &worker,
        &["ip", "-o", "link", "show", &NetManager::tunnel("")],
    );
    assert!(tunnel.contains("02:c4:0a:12:00:40"), "{tunnel}");
    let tunnel = run_in(
        &worker,
        &["ip", "-o", "-4", "addr", "show", &NetManager::tunnel("")],
    );
    assert!(
        tunnel.contains("10.18.0.64/32") && !tunnel.contains("10.18.0.0/"),
        "{tunnel}"
    );

    let ports = json!([{"host": 8080, "container": 80, "protocol": "tcp"}]);
    let (status, web) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.web.t.instance.0", "ports": ports})),
    );
    assert_eq!(status, 200, "{web}");
    assert_eq!(web["address"], "10.18.0.66");
    let web_ns = std::path::PathBuf::from(web["netns"].as_str().unwrap());
    lab.web_server(&web_ns, "published-page");
    let (client_ip, client) = d.attach("app.t.client.t.instance.0");
    assert_eq!(client_ip, "10.18.0.67");

    // On the worker's own loopback, and from an instance on the worker's bridge address.
    let from_worker = || {
        let out = in_ns(
            &worker,
            &[
                "busybox",
                "timeout",
                "5",
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/",
            ],
        )
        .output()
        .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let start = std::time::Instant::now();
    while from_worker() != "published-page" {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "127.0.0.1:8080 never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let bridge = std::net::Ipv4Addr::new(10, 18, 0, 65);
    let page = common::fetch_port(&client, bridge, 8080);
    assert_eq!(page.as_deref(), Some("published-page"));
    // The instance itself, on its own published port (hairpin).
    let page = common::fetch_port(&web_ns, bridge, 8080);
    assert_eq!(page.as_deref(), Some("published-page"));

    // The same port and protocol for another instance is refused, naming who has it; the
    // same number over UDP is another port.
    let (status, v) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.other.t.instance.0", "ports": ports})),
    );
    assert_eq!(status, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("app.t.web.t.instance.0"),
        "{v}"
    );
    let (status, v) = d.call(
        "POST",
        "/instances",
        Some(&json!({"name": "app.t.other.t.instance.0",
                     "ports": [{"host": 8080, "container": 80, "protocol": "udp"}]})),
    );
    assert_eq!(status, 200, "{v}");

    // Detached, the port is free again and answers nothing.
    assert_eq!(
        d.call("DELETE", "/instances/app.t.web.t.instance.0", None)
            .0,
        204
    );
    assert!(common::fetch_port(&client, bridge, 8080).is_none());
    d.terminate();
    drop(lab);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_reaches_itself_through_a_service_ip() {
    let mut lab = Lab::new();
    let worker = lab.netns("hw");
    lan(&worker, "192.0.2.1/24");
    common::forward_policy_drop(&worker);
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--subnet=10.18.0.0",
        "--underlay=192.0.2.1",
        "--remove-on-exit",
    ]
    .map(str::to_owned);
    let d = NetManager::start(&worker, tmp.path(), "", &flags);
    let (w0_ip, w0) = d.attach("app.t.web.t.instance.0");
    let (w1_ip, w1) = d.attach("app.t.web.t.instance.1");
    lab.web_server(&w0, "page-0");
    lab.web_server(&w1, "page-1");
    // Its bridge port is in hairpin mode.
    let port = run_in(
        &worker,
        &[
            "ip",
            "-d",
            "link",
            "show",
            &host_if("app.t.web.t.instance.0"),
        ],
    );
    assert!(port.contains("hairpin on"), "{port}");

    // The only instance behind the service: it gets its own page, through the service
    // address and its instance address.
    d.view(&one_service("10.30.55.55", &[(&w0_ip, Some("10.30.0.9"))]));
    assert_eq!(fetch_soon(&w0, ip("10.30.55.55")), "page-0");
    assert_eq!(fetch(&w0, ip("10.30.0.9")).as_deref(), Some("page-0"));
    assert_eq!(fetch(&w1, ip("10.30.55.55")).as_deref(), Some("page-0"));

    // Two behind it: round robin from one of them reaches both, itself included.
    d.view(&one_service(
        "10.30.55.55",
        &[(&w0_ip, Some("10.30.0.9")), (&w1_ip, None)],
    ));
    let pages: BTreeSet<String> = (0..20)
        .filter_map(|_| fetch(&w0, ip("10.30.55.55")))
        .collect();
    assert_eq!(
        pages,
        BTreeSet::from(["page-0".to_owned(), "page-1".to_owned()])
    );
    // Only the connection to itself is masqueraded: the other instance sees it as itself.
    let table = run_in(
        &worker,
        &["nft", "list", "table", "ip", &NetManager::table("")],
    );
    assert!(
        table.contains("ct status dnat ip saddr . ip daddr { 10.18.0.2 . 10.18.0.2, 10.18.0.3 . 10.18.0.3 } masquerade"),
        "{table}"
    );
    d.terminate();
    common::nothing_left_in(&worker, "", &[]).unwrap();
    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}
