//! The worker's address plan (Oakestra's): a `/26` worker subnet; its network address is the
//! tunnel device's, `+1` the bridge's (the instances' gateway), `+2` … `+62` the instances'.
//! And the names the net manager gives what it makes. Pure: no I/O.

use canopy_core::addressing::Ipv4Pool;
use sha2::{Digest, Sha256};
use std::net::Ipv4Addr;

/// Prefix length of a worker subnet.
pub const SUBNET_PREFIX: u8 = 26;

/// Every worker-side veth the net manager makes starts with this (so a restarted net
/// manager can tell its own leftovers from anyone else's links).
pub const HOST_IF_PREFIX: &str = "cn";

/// One worker's share of the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerNet {
    pub subnet: Ipv4Addr,
}

impl WorkerNet {
    /// The worker subnet starting at `subnet`, which must be a `/26` network address.
    pub fn new(subnet: Ipv4Addr) -> Result<WorkerNet, String> {
        if u32::from(subnet) % 64 != 0 {
            return Err(format!("{subnet} is not the start of a /26"));
        }
        Ok(WorkerNet { subnet })
    }

    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + n)
    }

    /// The tunnel device's address.
    pub fn tunnel(&self) -> Ipv4Addr {
        self.subnet
    }

    /// The bridge's address: every instance's gateway.
    pub fn bridge(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// The pool instances' addresses come from.
    pub fn instance_pool(&self) -> Ipv4Pool {
        Ipv4Pool::new(self.nth(2), self.nth(62), 1)
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & !63 == u32::from(self.subnet)
    }
}

/// The MAC of a worker's tunnel device, derived from its subnet, so that another worker
/// needs only the subnet and the underlay address to reach it: `02:c4` (locally
/// administered, unicast) and the subnet's four octets.
pub fn tunnel_mac(subnet: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = subnet.octets();
    [0x02, 0xc4, a, b, c, d]
}

/// The kernel's longest interface name (`IFNAMSIZ` less the terminating NUL).
pub const LINK_NAME_MAX: usize = 15;

/// A name the net manager gives a link (`--bridge`, `--tunnel`): what the kernel accepts
/// (1–15 bytes, not `.` or `..`, no `/`, `:` or white space), narrowed to letters, digits,
/// `.`, `-` and `_` so that it needs no quoting in an nftables rule either.
pub fn check_link_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > LINK_NAME_MAX {
        return Err(format!(
            "{name:?} is not a link name: 1 to {LINK_NAME_MAX} characters"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a link name"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "{name:?} is not a link name: letters, digits, '.', '-', '_' only"
        ));
    }
    Ok(())
}

/// An instance name the net manager accepts (`<job>.instance.<n>`, as the node engine names
/// instances): 1–200 characters of letters, digits, `.`, `-`, `_`, not starting with `.`.
pub fn check_instance_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name: {name:?} is not an instance name (1-200 of letters, digits, '.', '-', '_')"
        ))
    }
}

/// The worker-side veth of an instance: the prefix and 10 hex digits of a digest of its
/// name (12 characters; the kernel allows 15).
pub fn host_if(name: &str) -> String {
    let d = hex::encode(Sha256::digest(name.as_bytes()));
    format!("{HOST_IF_PREFIX}{}", &d[..10])
}

/// Whether `link` is named as [`host_if`] names (the prefix and exactly 10 hex digits).
pub fn is_host_if(link: &str) -> bool {
    link.strip_prefix(HOST_IF_PREFIX)
        .is_some_and(|rest| rest.len() == 10 && rest.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_of_a_subnet() {
        let w = WorkerNet::new("10.18.0.64".parse().unwrap()).unwrap();
        assert_eq!(w.tunnel().to_string(), "10.18.0.64");
        assert_eq!(w.bridge().to_string(), "10.18.0.65");
        let mut pool = w.instance_pool();
        assert_eq!(pool.capacity(), 61);
        assert_eq!(pool.allocate().unwrap().to_string(), "10.18.0.66");
        for _ in 1..61 {
            pool.allocate().unwrap();
        }
        assert!(pool.allocate().is_err(), "61 instances fill a /26");
        assert!(WorkerNet::new("10.18.0.65".parse().unwrap()).is_err());
        assert!(w.contains("10.18.0.64".parse().unwrap()));
        assert!(w.contains("10.18.0.127".parse().unwrap()));
        assert!(!w.contains("10.18.0.128".parse().unwrap()));
        assert!(!w.contains("10.18.0.63".parse().unwrap()));
    }

    #[test]
    fn tunnel_macs_are_local_unicast_and_one_per_subnet() {
        let m = tunnel_mac("10.18.0.64".parse().unwrap());
        assert_eq!(m, [0x02, 0xc4, 10, 18, 0, 64]);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        assert_ne!(m, tunnel_mac("10.18.0.128".parse().unwrap()));
    }

    #[test]
    fn link_names() {
        for good in [
            "canopy.vx",
            "canopy0",
            "a",
            "cnmt12345-vx_1",
            &"x".repeat(15),
        ] {
            assert!(check_link_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\"b", &"x".repeat(16)] {
            assert!(check_link_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(check_instance_name("app.ns.web.ns.instance.0").is_ok());
        for bad in ["", ".hidden", "../etc", "a/b", "a b", &"x".repeat(201)] {
            assert!(
                check_instance_name(bad).unwrap_err().starts_with("name:"),
                "{bad}"
            );
        }
        let i = host_if("app.ns.web.ns.instance.0");
        assert!(i.starts_with(HOST_IF_PREFIX) && i.len() == 12, "{i}");
        assert_eq!(i, host_if("app.ns.web.ns.instance.0"));
        assert_ne!(i, host_if("app.ns.web.ns.instance.1"));
        assert!(is_host_if(&i));
        for other in ["cnmt1234br", "cn", "cn0123456789a", "eth0", "cnxyzxyzxyzx"] {
            assert!(!is_host_if(other), "{other}");
        }
    }
}
