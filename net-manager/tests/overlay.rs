//! Two workers joined by a LAN (a bridge in a namespace of its own), each with its bridge and
//! its end of the VXLAN tunnel, all in namespaces this test creates: a service address
//! reaches instances on both workers (from one of them too, itself included), the reply
//! comes back from the service address, and forgetting a peer cuts exactly its instances off.
//! Both workers have iptables' `FORWARD` policy drop and the net manager's rules for their
//! bridge and tunnel. Traffic stays inside these namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Lab, fetch, fetch_soon, ip, links_in, prefix};
use net_manager::link::{self, Attachment, Peer, Tunnel};
use net_manager::nft::Translations;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

const VNI: u32 = 1;
const PORT: u16 = 50103;

/// One worker: its namespace, LAN address, subnet and tunnel MAC.
struct Worker {
    ns: PathBuf,
    lan: Ipv4Addr,
    subnet: Ipv4Addr,
    mac: [u8; 6],
}

impl Worker {
    fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 1)
    }

    fn peer(&self) -> Peer {
        Peer {
            subnet: self.subnet,
            prefix: 26,
            tunnel_address: self.subnet,
            tunnel_mac: self.mac,
            underlay: self.lan,
        }
    }
}

async fn worker(lab: &mut Lab, n: u8, lan_bridge: &str, lan_ns: &std::path::Path) -> Worker {
    let p = prefix();
    let ns = lab.netns(&format!("w{n}"));
    let lan = Ipv4Addr::new(192, 0, 2, n);
    let subnet = Ipv4Addr::new(10, 18, 0, 64 * (n - 1));
    // The worker's LAN link: a veth whose far end is on the LAN bridge.
    let (nic, far) = (format!("{p}n{n}"), format!("{p}l{n}"));
    lab.veth_into(lan_ns, lan_bridge, &far, &ns, &nic, lan, 24);
    let bridge = format!("{p}b{n}");
    let tunnel = Tunnel {
        name: format!("{p}x{n}"),
        vni: VNI,
        port: PORT,
        local: lan,
        address: subnet,
        mac: net_manager::plan::tunnel_mac(subnet),
        mtu: net_manager::OVERLAY_MTU,
    };
    let gateway = Ipv4Addr::from(u32::from(subnet) + 1);
    let links = [bridge.clone(), tunnel.name.clone()];
    let mac = link::in_netns(Some(&ns), move |h| async move {
        link::sysctl("net.ipv4.ip_forward", "1")?;
        link::ensure_bridge(&h, &bridge, gateway, 26, net_manager::OVERLAY_MTU).await?;
        link::ensure_tunnel(&h, &tunnel).await
    })
    .await
    .expect("the worker's bridge and tunnel");
    common::forward_policy_drop(&ns);
    let links: Vec<&str> = links.iter().map(String::as_str).collect();
    let accepted = net_manager::firewall::ensure(Some(&ns), &links).expect("iptables");
    assert_eq!(accepted, net_manager::firewall::Outcome::Changed(4));
    assert_eq!(mac, net_manager::plan::tunnel_mac(subnet), "the MAC is set");
    Worker {
        ns,
        lan,
        subnet,
        mac,
    }
}

async fn instance(lab: &mut Lab, w: &Worker, role: &str, host: u8) -> Attachment {
    let p = prefix();
    let ns = lab.netns(role);
    let n = u32::from(w.subnet) >> 6 & 0xff;
    let a = Attachment {
        worker_ns: Some(w.ns.clone()),
        instance_ns: ns,
        bridge: format!("{p}b{}", n + 1),
        host_if: format!("{p}{role}"),
        address: Ipv4Addr::from(u32::from(w.subnet) + u32::from(host)),
        gateway: w.bridge_ip(),
        mtu: net_manager::OVERLAY_MTU,
    };
    link::attach(&a).await.expect("attach");
    a
}

async fn peer(w: &Worker, other: &Worker, add: bool) {
    let tunnel = format!("{}x{}", prefix(), (u32::from(w.subnet) >> 6 & 0xff) + 1);
    let peer = other.peer();
    link::in_netns(Some(&w.ns), move |h| async move {
        if add {
            link::add_peer(&h, &tunnel, &peer).await?;
            // Idempotent.
            link::add_peer(&h, &tunnel, &peer).await
        } else {
            link::remove_peer(&h, &tunnel, &peer).await
        }
    })
    .await
    .expect("peer");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_address_reaches_instances_on_two_workers() {
    let p = prefix();
    let mut lab = Lab::new();
    let lan_ns = lab.netns("lan");
    let lan_bridge = format!("{p}lan");
    {
        let b = lan_bridge.clone();
        link::in_netns(Some(&lan_ns), move |h| async move {
            link::ensure_bridge(&h, &b, Ipv4Addr::new(192, 0, 2, 254), 24, 1500).await
        })
        .await
        .expect("the LAN");
    }
    let w1 = worker(&mut lab, 1, &lan_bridge, &lan_ns).await;
    let w2 = worker(&mut lab, 2, &lan_bridge, &lan_ns).await;
    peer(&w1, &w2, true).await;
    peer(&w2, &w1, true).await;

    let client = instance(&mut lab, &w1, "c", 2).await;
    let local = instance(&mut lab, &w1, "s1", 3).await;
    let remote = instance(&mut lab, &w2, "s2", 2).await;
    lab.web_server(&local.instance_ns, "page-local");
    lab.web_server(&remote.instance_ns, "page-remote");

    // Across the tunnel, by namespace address.
    assert_eq!(
        fetch_soon(&client.instance_ns, remote.address),
        "page-remote"
    );

    let rr = ip("10.30.55.55");
    let mut t = Translations::default();
    t.targets.insert(rr, vec![local.address, remote.address]);
    t.targets.insert(ip("10.30.0.66"), vec![remote.address]);
    t.targets.insert(ip("10.30.0.3"), vec![local.address]);
    for w in [&w1, &w2] {
        net_manager::apply::translations(Some(&w.ns), &format!("{p}_t"), &t, &[], None).unwrap();
    }
    let pages: BTreeSet<String> = (0..12)
        .filter_map(|_| fetch(&client.instance_ns, rr))
        .collect();
    assert_eq!(
        pages,
        BTreeSet::from(["page-local".to_owned(), "page-remote".to_owned()])
    );
    assert_eq!(
        fetch(&client.instance_ns, ip("10.30.0.66")).as_deref(),
        Some("page-remote")
    );
    // From the far worker's instance back to one here, through its instance address, and
    // through the service address, which reaches both: the one here across the tunnel and
    // the asking instance itself (the hairpin).
    let from_remote: BTreeSet<String> = (0..4)
        .filter_map(|_| fetch(&remote.instance_ns, ip("10.30.0.3")))
        .collect();
    assert_eq!(from_remote, BTreeSet::from(["page-local".to_owned()]));
    let from_remote: BTreeSet<String> = (0..12)
        .filter_map(|_| fetch(&remote.instance_ns, rr))
        .collect();
    assert_eq!(
        from_remote,
        BTreeSet::from(["page-local".to_owned(), "page-remote".to_owned()])
    );

    let tunnel = format!("{p}x1");
    let routes = |tunnel: String| {
        link::in_netns(Some(&w1.ns), move |h| async move {
            link::routes_via(&h, &tunnel).await
        })
    };
    assert_eq!(routes(tunnel.clone()).await.unwrap(), vec![(w2.subnet, 26)]);

    // Forgetting the peer cuts its instances off, and only them.
    peer(&w1, &w2, false).await;
    assert_eq!(routes(tunnel).await.unwrap(), vec![]);
    assert!(common::unreachable(&client.instance_ns, ip("10.30.0.66")));
    assert_eq!(
        fetch(&client.instance_ns, local.address).as_deref(),
        Some("page-local")
    );
    assert!(links_in(&w1.ns).contains(&format!("{p}x1")));
    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}
