//! One worker's data path, for real, in network namespaces this test creates: a worker
//! namespace with its bridge, and a client and two servers attached to it by the net
//! manager's own plumbing (`link::attach`). Service-IP translation is the nftables table
//! `nft::render` makes. Traffic goes only to addresses inside these namespaces.
//!
//! - the worker's iptables `FORWARD` policy is drop; `firewall::ensure` lets its bridge's
//!   traffic through (once), `firewall::remove` takes the rules away;
//! - a round-robin address reaches both servers, from a server too (itself included: the
//!   hairpin); an instance address exactly one;
//! - updating the table takes effect for new connections and leaves established ones alone;
//! - detaching removes the veth; everything the test made is gone afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Lab, fetch, fetch_soon, ip, links_in, prefix};
use net_manager::firewall;
use net_manager::link::{self, Attachment};
use net_manager::nft::{self, Translations};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn service_ips_reach_instances_on_one_worker() {
    let p = prefix();
    let mut lab = Lab::new();
    let worker = lab.netns("w");
    let bridge = format!("{p}br");
    let gateway = ip("10.18.0.1");
    {
        let bridge = bridge.clone();
        link::in_netns(Some(&worker), move |h| async move {
            link::sysctl("net.ipv4.ip_forward", "1")?;
            link::ensure_bridge(&h, &bridge, gateway, 26, net_manager::OVERLAY_MTU).await?;
            // Idempotent: a second call changes nothing.
            link::ensure_bridge(&h, &bridge, gateway, 26, net_manager::OVERLAY_MTU).await
        })
        .await
        .expect("the bridge");
    }
    common::forward_policy_drop(&worker);
    let accepted = firewall::ensure(Some(&worker), &[&bridge]).expect("iptables");
    assert_eq!(accepted, firewall::Outcome::Changed(2));
    let again = firewall::ensure(Some(&worker), &[&bridge]).expect("iptables");
    assert_eq!(again, firewall::Outcome::Changed(0), "idempotent");
    common::accepted_in_forward(&worker, &bridge).unwrap();
    let mut instances = Vec::new();
    for (i, role) in ["client", "s1", "s2"].iter().enumerate() {
        let ns = lab.netns(role);
        let a = Attachment {
            worker_ns: Some(worker.clone()),
            instance_ns: ns.clone(),
            bridge: bridge.clone(),
            host_if: format!("{p}v{i}"),
            address: Ipv4Addr::new(10, 18, 0, 2 + i as u8),
            gateway,
            mtu: net_manager::OVERLAY_MTU,
        };
        link::attach(&a).await.expect("attach");
        instances.push(a);
    }
    assert!(links_in(&instances[0].instance_ns).contains("eth0"));
    assert!(links_in(&instances[0].instance_ns).contains("mtu 1450"));
    let ports: Vec<String> = instances.iter().map(|a| a.host_if.clone()).collect();
    let hairpins = link::in_netns(Some(&worker), move |h| async move {
        let mut on = Vec::new();
        for p in &ports {
            on.push(link::hairpin(&h, p).await?);
        }
        // The bridge itself is no port.
        on.push(link::hairpin(&h, &format!("{}br", prefix())).await?);
        Ok(on)
    })
    .await
    .expect("hairpin modes");
    assert_eq!(hairpins, [true, true, true, false], "attach turns it on");
    lab.web_server(&instances[1].instance_ns, "page-one");
    lab.web_server(&instances[2].instance_ns, "page-two");
    let client = instances[0].instance_ns.clone();

    let table = format!("{p}_t");
    assert!(nft::valid_table_name(&table));
    let (rr, s1_ip) = (ip("10.30.55.55"), ip("10.30.0.9"));
    let mut t = Translations::default();
    t.targets
        .insert(rr, vec![instances[1].address, instances[2].address]);
    t.targets.insert(s1_ip, vec![instances[1].address]);
    net_manager::apply::translations(Some(&worker), &table, &t, &[], None).expect("the table");

    // Round robin: both servers answer the service address.
    assert!(fetch_soon(&client, rr).starts_with("page-"));
    let pages: BTreeSet<String> = (0..10).filter_map(|_| fetch(&client, rr)).collect();
    assert_eq!(
        pages,
        BTreeSet::from(["page-one".to_owned(), "page-two".to_owned()])
    );
    // An instance address reaches exactly that instance.
    for _ in 0..4 {
        assert_eq!(fetch(&client, s1_ip).as_deref(), Some("page-one"));
    }
    // A server reaches the other through the service address too (same bridge, both ways
    // through the worker's conntrack), and itself (masqueraded, back out of its own port).
    assert!(fetch(&instances[2].instance_ns, s1_ip).is_some_and(|p| p == "page-one"));
    assert_eq!(
        fetch(&instances[1].instance_ns, s1_ip).as_deref(),
        Some("page-one")
    );
    let from_server: BTreeSet<String> = (0..10)
        .filter_map(|_| fetch(&instances[1].instance_ns, rr))
        .collect();
    assert_eq!(
        from_server,
        BTreeSet::from(["page-one".to_owned(), "page-two".to_owned()])
    );

    // An update changes new connections only: one held open through an address whose
    // targets do not change keeps going.
    let mut held = common::Held::open(&instances[1].instance_ns, &client, s1_ip, 9000);
    assert!(
        held.say("before"),
        "no connection through the instance address"
    );
    // The service now has only the second server.
    t.targets.insert(rr, vec![instances[2].address]);
    net_manager::apply::translations(Some(&worker), &table, &t, &[], None).expect("the new table");
    for _ in 0..5 {
        assert_eq!(fetch(&client, rr).as_deref(), Some("page-two"));
    }
    assert!(
        held.say("after"),
        "the table update broke an established connection: heard {:?}",
        held.heard()
    );
    drop(held);
    // Nothing behind an address: it is not translated, and nothing answers.
    t.targets.insert(rr, vec![]);
    net_manager::apply::translations(Some(&worker), &table, &t, &[], None).expect("the new table");
    assert!(common::unreachable(&client, rr));

    // Detaching removes the veth; removing the table leaves none behind.
    link::detach(Some(&worker), &instances[2].host_if)
        .await
        .expect("detach");
    assert!(!links_in(&worker).contains(&instances[2].host_if));
    assert!(!links_in(&instances[2].instance_ns).contains("eth0"));
    link::detach(Some(&worker), &instances[2].host_if)
        .await
        .expect("detach is idempotent");
    net_manager::apply::nft(Some(&worker), &nft::render_removal(&table)).expect("removal");
    let tables = Command::new("nsenter")
        .arg(format!("--net={}", worker.display()))
        .args(["nft", "list", "tables"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&tables.stdout).contains(&table));
    let removed = firewall::remove(Some(&worker), &[&bridge]).expect("iptables");
    assert_eq!(removed, firewall::Outcome::Changed(2));
    assert!(common::tagged_rules(&worker, &bridge).is_empty());

    let names = lab.names();
    drop(lab);
    assert!(!common::namespaces_left(&names), "namespaces left behind");
}
