//! Service-IP translation in the kernel: the worker's translation table rendered as one
//! nftables table, replaced atomically (one `nft -f` transaction) whenever it changes.
//!
//! Every virtual address (a service's round-robin IP, its closest IP, an instance IP) maps to
//! the namespace addresses of the instances behind it. The first packet of a connection to a
//! virtual address is DNATed in `prerouting` (traffic from instances) or `output` (traffic
//! from the worker itself) to one of them; with several, `numgen inc` spreads connections
//! round robin. Conntrack remembers the choice, so later packets of the connection follow it
//! and replies leave with the virtual address as their source. Replacing the table leaves
//! established connections alone: their translation lives in conntrack, not in the rules.
//!
//! Lookups are one verdict map from address to a per-address chain, so the cost of a new
//! connection does not grow with the number of services.
//!
//! Hairpin: an instance may reach itself through a virtual address (the only instance behind
//! a service, or the one round robin picks) or through a port it publishes. After the DNAT
//! the packet's destination is its own source, and it would come back to the instance with
//! its own address as the source, which the instance drops (a martian). So `postrouting`
//! masquerades a DNATed connection whose source is the address it was translated to (a set
//! of `address . address` pairs, one per target: nft cannot compare `ip saddr` with `ip daddr`
//! directly): the instance sees the bridge's address as the client, and its replies, undone
//! by conntrack, still come from the virtual address. With `br_netfilter` the translated
//! packet is bridged back out of the port it came in on, so that port needs hairpin mode
//! ([`crate::link::attach`] turns it on).
//!
//! No filter chain: the table accepts everything it sees. Another table's (or iptables')
//! `forward` policy of drop is dealt with in [`crate::firewall`].

use canopy_core::job::{PortMapping, Protocol};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::Ipv4Addr;

/// The translation a worker applies: virtual address → namespace addresses of the RUNNING
/// instances behind it (in a stable order; an empty list means nothing answers).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Translations {
    pub targets: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>>,
}

impl Translations {
    /// Virtual addresses that have at least one target.
    pub fn reachable(&self) -> impl Iterator<Item = (&Ipv4Addr, &Vec<Ipv4Addr>)> {
        self.targets.iter().filter(|(_, t)| !t.is_empty())
    }

    /// Number of (virtual address, target) pairs: the size of the table in `/metrics`.
    pub fn len(&self) -> usize {
        self.targets.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A port published on the worker: traffic to any of the worker's own addresses on
/// `mapping.host` goes to `target:mapping.container`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub mapping: PortMapping,
    pub target: Ipv4Addr,
}

impl Published {
    fn rule(&self) -> String {
        let proto = match self.mapping.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        format!(
            "fib daddr type local {proto} dport {} dnat to {}:{}",
            self.mapping.host, self.target, self.mapping.container
        )
    }
}

/// Names an nftables table may have: the test prefix and a few safe characters.
pub fn valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn chain_name(vip: Ipv4Addr) -> String {
    let [a, b, c, d] = vip.octets();
    format!("to_{a}_{b}_{c}_{d}")
}

/// The nft script that replaces table `ip <table>` with `t` and the published ports,
/// atomically: it creates the table if missing, deletes it and defines it anew, all in one
/// transaction.
///
/// A published port is reachable on every address of the worker, `127.0.0.1` included: a
/// connection from the worker's own loopback leaves with the bridge's address as its source
/// (the instance could not answer `127.0.0.1`); this needs `route_localnet` on the bridge.
///
/// Every target (of a virtual address or a published port) is in the hairpin rule of
/// `postrouting`: a connection DNATed to its own source is masqueraded (see the module's
/// docs).
///
/// With `only_from` (a bridge: several workers in one network namespace, each with its own
/// table), `prerouting` looks virtual addresses up only for packets that came in from that
/// bridge, so one worker's table never translates another worker's instances' traffic.
/// The link name must be one [`crate::plan::check_link_name`] accepts (it is not quoted
/// beyond `"…"`).
pub fn render(
    table: &str,
    t: &Translations,
    published: &[Published],
    only_from: Option<&str>,
) -> String {
    let mut s = String::new();
    // Creating first makes the delete valid on the first run.
    let _ = writeln!(s, "table ip {table}");
    let _ = writeln!(s, "delete table ip {table}");
    let _ = writeln!(s, "table ip {table} {{");
    for (vip, targets) in t.reachable() {
        let _ = writeln!(s, "\tchain {} {{", chain_name(*vip));
        if let [only] = targets.as_slice() {
            let _ = writeln!(s, "\t\tdnat to {only}");
        } else {
            let entries: Vec<String> = targets
                .iter()
                .enumerate()
                .map(|(i, ip)| format!("{i} : {ip}"))
                .collect();
            let _ = writeln!(
                s,
                "\t\tdnat to numgen inc mod {} map {{ {} }}",
                targets.len(),
                entries.join(", ")
            );
        }
        let _ = writeln!(s, "\t}}");
    }
    let vmap: Vec<String> = t
        .reachable()
        .map(|(vip, _)| format!("{vip} : jump {}", chain_name(*vip)))
        .collect();
    for hook in ["prerouting", "output"] {
        let _ = writeln!(s, "\tchain {hook} {{");
        // -100 is "dstnat"; older nft knows the name only for prerouting.
        let _ = writeln!(s, "\t\ttype nat hook {hook} priority -100; policy accept;");
        for p in published {
            let _ = writeln!(s, "\t\t{}", p.rule());
        }
        if !vmap.is_empty() {
            let from = match only_from {
                Some(bridge) if hook == "prerouting" => format!("iifname \"{bridge}\" "),
                _ => String::new(),
            };
            let _ = writeln!(s, "\t\t{from}ip daddr vmap {{ {} }}", vmap.join(", "));
        }
        let _ = writeln!(s, "\t}}");
    }
    // Every address a connection may be translated to: where it may meet its own source.
    let hairpins: BTreeSet<Ipv4Addr> = t
        .reachable()
        .flat_map(|(_, targets)| targets.iter().copied())
        .chain(published.iter().map(|p| p.target))
        .collect();
    if !published.is_empty() || !hairpins.is_empty() {
        let _ = writeln!(s, "\tchain postrouting {{");
        // 100 is "srcnat".
        let _ = writeln!(
            s,
            "\t\ttype nat hook postrouting priority 100; policy accept;"
        );
        if !published.is_empty() {
            let _ = writeln!(s, "\t\tip saddr 127.0.0.0/8 ct status dnat masquerade");
        }
        if !hairpins.is_empty() {
            let pairs: Vec<String> = hairpins.iter().map(|a| format!("{a} . {a}")).collect();
            let _ = writeln!(
                s,
                "\t\tct status dnat ip saddr . ip daddr {{ {} }} masquerade",
                pairs.join(", ")
            );
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// The nft script that removes table `ip <table>` (and succeeds when it is already gone).
pub fn render_removal(table: &str) -> String {
    format!("table ip {table}\ndelete table ip {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn one_target_is_a_plain_dnat_and_several_are_round_robin() {
        let mut t = Translations::default();
        t.targets.insert(ip("10.30.0.7"), vec![ip("10.18.0.2")]);
        t.targets.insert(
            ip("10.30.55.55"),
            vec![ip("10.18.0.2"), ip("10.18.0.66"), ip("10.18.0.130")],
        );
        t.targets.insert(ip("10.30.9.9"), vec![]);
        assert_eq!(t.len(), 4);
        let s = render("canopy_w1", &t, &[], None);
        assert!(s.starts_with("table ip canopy_w1\ndelete table ip canopy_w1\n"));
        assert!(s.contains("\tchain to_10_30_0_7 {\n\t\tdnat to 10.18.0.2\n\t}"));
        assert!(s.contains(
            "dnat to numgen inc mod 3 map { 0 : 10.18.0.2, 1 : 10.18.0.66, 2 : 10.18.0.130 }"
        ));
        // An address with nothing behind it is not translated at all.
        assert!(!s.contains("10.30.9.9"));
        assert_eq!(
            s.matches(
                "ip daddr vmap { 10.30.0.7 : jump to_10_30_0_7, 10.30.55.55 : jump to_10_30_55_55 }"
            )
            .count(),
            2,
            "both hooks look the address up:\n{s}"
        );
    }

    #[test]
    fn an_empty_table_still_has_its_hooks() {
        let s = render("canopy_w1", &Translations::default(), &[], None);
        assert!(s.contains("type nat hook prerouting priority -100"));
        assert!(s.contains("type nat hook output priority -100"));
        assert!(!s.contains("vmap"));
    }

    #[test]
    fn published_ports_reach_their_instance_from_every_worker_address() {
        let p = Published {
            mapping: PortMapping::parse_list("8080:80/tcp").unwrap()[0],
            target: ip("10.18.0.2"),
        };
        let u = Published {
            mapping: PortMapping::parse_list("5353/udp").unwrap()[0],
            target: ip("10.18.0.3"),
        };
        let s = render("canopy_w1", &Translations::default(), &[p, u], None);
        for rule in [
            "fib daddr type local tcp dport 8080 dnat to 10.18.0.2:80",
            "fib daddr type local udp dport 5353 dnat to 10.18.0.3:5353",
        ] {
            assert_eq!(s.matches(rule).count(), 2, "both hooks: {s}");
        }
        assert!(s.contains("ip saddr 127.0.0.0/8 ct status dnat masquerade"));
        // An instance may reach its own published port.
        assert!(s.contains(
            "ct status dnat ip saddr . ip daddr { 10.18.0.2 . 10.18.0.2, 10.18.0.3 . 10.18.0.3 } masquerade"
        ));
        assert!(!render("canopy_w1", &Translations::default(), &[], None).contains("postrouting"));
    }

    #[test]
    fn a_connection_translated_to_its_own_source_is_masqueraded() {
        let mut t = Translations::default();
        t.targets
            .insert(ip("10.30.55.55"), vec![ip("10.18.0.3"), ip("10.18.0.66")]);
        t.targets.insert(ip("10.30.0.12"), vec![ip("10.18.0.3")]);
        t.targets.insert(ip("10.30.9.9"), vec![]);
        let s = render("canopy_w1", &t, &[], None);
        let post = &s[s.find("chain postrouting").unwrap()..];
        assert!(post.contains("type nat hook postrouting priority 100; policy accept;"));
        // One pair per target, each once.
        assert!(
            post.contains(
                "\t\tct status dnat ip saddr . ip daddr { 10.18.0.3 . 10.18.0.3, 10.18.0.66 . 10.18.0.66 } masquerade\n"
            ),
            "{s}"
        );
        // No published port: loopback is not masqueraded.
        assert!(!post.contains("127.0.0.0/8"), "{s}");
    }

    #[test]
    fn workers_sharing_a_namespace_translate_only_their_own_bridges_traffic() {
        let mut t = Translations::default();
        t.targets.insert(ip("10.30.0.7"), vec![ip("10.18.0.2")]);
        let p = Published {
            mapping: PortMapping::parse_list("8080:80/tcp").unwrap()[0],
            target: ip("10.18.0.2"),
        };
        let s = render("canopy_w1", &t, &[p], Some("canopy0"));
        let pre = &s[s.find("chain prerouting").unwrap()..s.find("chain output").unwrap()];
        let out = &s[s.find("chain output").unwrap()..];
        assert!(
            pre.contains("iifname \"canopy0\" ip daddr vmap { 10.30.0.7 : jump to_10_30_0_7 }"),
            "{s}"
        );
        // Published ports and the worker's own traffic are as without it.
        assert!(pre.contains("fib daddr type local tcp dport 8080"), "{s}");
        assert!(!out.contains("iifname"), "{s}");
        assert!(out.contains("ip daddr vmap"), "{s}");
    }

    #[test]
    fn table_names_are_checked() {
        assert!(valid_table_name("canopy_test_42"));
        assert!(!valid_table_name(""));
        assert!(!valid_table_name("1abc"));
        assert!(!valid_table_name("a;flush ruleset"));
        assert!(!valid_table_name(&"a".repeat(65)));
    }
}
