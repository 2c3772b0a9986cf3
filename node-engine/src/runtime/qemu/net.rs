//! A VM's place on the overlay. The net manager gives each instance a network namespace whose
//! `eth0` is one end of a veth on the worker's bridge, holding the instance address as a /32.
//! A VM's guest must own that address itself, so before QEMU starts, inside the instance's
//! namespace (iproute2 under `nsenter --net=<netns>`, one `ip -batch -`):
//!
//! ```text
//! link add br0 type bridge
//! tuntap add dev tap0 mode tap user 0 group 0
//! route flush dev eth0
//! addr flush dev eth0
//! link set eth0 master br0
//! link set tap0 master br0
//! link set eth0 type bridge_slave learning off
//! link set tap0 mtu <eth0's mtu>
//! link set br0 up
//! link set eth0 up
//! link set tap0 up
//! ```
//!
//! Nothing else moves: `eth0` keeps its name and stays the net manager's (its detach removes
//! the namespace, and the bridge and tap with it). QEMU then runs inside the namespace with
//! `tap0` as its `virtio-net` backend, so the guest's interface is, at L2, one more port of
//! the worker's bridge: the worker ARPs the instance address and the guest answers.
//!
//! `eth0` does not learn: the worker's bridge port is in hairpin mode (an instance reaches
//! itself through a service IP), so the guest's own broadcasts and multicasts (its IPv6
//! neighbour and router solicitations right after boot) come back in through `eth0`; had
//! `br0` learnt the guest's MAC there, it would drop the frames sent to the guest until the
//! guest spoke again (tens of seconds). Frames from the guest to the worker are flooded to
//! `eth0`, the only other port.
//!
//! The guest's MTU is `eth0`'s (the net manager's, which fits the tunnel): the tap gets it,
//! and QEMU's `virtio-net` offers it to the guest (`host_mtu`). A bridge drops a frame larger
//! than the port it leaves by, silently, so a guest at 1500 behind a 1450 `eth0` would lose
//! every full-sized segment.
//!
//! The setup is skipped when `br0` already exists (a VM started again in the same namespace);
//! the MTU is read each time.

use super::super::{Result, RuntimeError};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

/// The bridge inside the instance's namespace.
pub const BRIDGE: &str = "br0";
/// QEMU's tap inside the instance's namespace.
pub const TAP: &str = "tap0";
/// The net manager's end of the instance, inside its namespace.
pub const UPLINK: &str = "eth0";

/// The `ip -batch` lines that turn `eth0` into a bridge port beside a tap of MTU `mtu`.
pub fn commands(mtu: u32) -> Vec<String> {
    [
        format!("link add {BRIDGE} type bridge"),
        format!("tuntap add dev {TAP} mode tap user 0 group 0"),
        format!("route flush dev {UPLINK}"),
        format!("addr flush dev {UPLINK}"),
        format!("link set {UPLINK} master {BRIDGE}"),
        format!("link set {TAP} master {BRIDGE}"),
        format!("link set {UPLINK} type bridge_slave learning off"),
        format!("link set {TAP} mtu {mtu}"),
        format!("link set {BRIDGE} up"),
        format!("link set {UPLINK} up"),
        format!("link set {TAP} up"),
    ]
    .into()
}

/// A stable, locally administered unicast MAC for the VM named `name`.
pub fn mac(name: &str) -> String {
    let d = Sha256::digest(name.as_bytes());
    let mut b = [0u8; 6];
    b.copy_from_slice(&d[..6]);
    b[0] = (b[0] & 0xfc) | 0x02;
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// The Linux kernel's `ip=` parameter for a static address (`man 7 bootparam`,
/// `Documentation/admin-guide/nfs/nfsroot.rst`): `<client>::<gateway>:<netmask>::eth0:off`.
pub fn kernel_ip_arg(address: Ipv4Addr, gateway: Ipv4Addr, prefix: u8) -> String {
    format!("ip={address}::{gateway}:{}::{UPLINK}:off", netmask(prefix))
}

/// The kernel parameters that give a guest its address, first on its command line: Oakestra's
/// (`netdev.ipv4_addr= netdev.ipv4_gw_addr= netdev.ipv4_subnet_mask=`, what Unikraft's
/// network stack reads) and then Linux's [`kernel_ip_arg`]. Each kernel ignores the other's.
pub fn kernel_net_args(address: Ipv4Addr, gateway: Ipv4Addr, prefix: u8) -> [String; 4] {
    [
        format!("netdev.ipv4_addr={address}"),
        format!("netdev.ipv4_gw_addr={gateway}"),
        format!("netdev.ipv4_subnet_mask={}", netmask(prefix)),
        kernel_ip_arg(address, gateway, prefix),
    ]
}

/// `nsenter --net=<netns>`: what runs a command inside the instance's namespace.
pub fn nsenter(netns: &Path) -> Vec<String> {
    vec!["nsenter".into(), format!("--net={}", netns.display())]
}

/// Whether vhost-net can back the tap (only when the device exists).
pub fn vhost_available() -> bool {
    Path::new("/dev/vhost-net").exists()
}

/// The MTU in one line of `ip -o link show`.
pub fn parse_mtu(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// Bridges `eth0` and `tap0` inside `netns` (see the module docs; nothing when done before);
/// returns the MTU the guest is to take (`eth0`'s).
pub async fn setup(netns: &Path) -> Result<u32> {
    let netns = netns.to_owned();
    tokio::task::spawn_blocking(move || setup_blocking(&netns))
        .await
        .map_err(RuntimeError::backend)?
}

fn setup_blocking(netns: &Path) -> Result<u32> {
    let ns = nsenter(netns);
    let link = |name: &str| -> Result<Option<String>> {
        let out = std::process::Command::new(&ns[0])
            .args(&ns[1..])
            .args(["ip", "-o", "link", "show", name])
            .stderr(Stdio::null())
            .output()?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    let mtu = link(UPLINK)?
        .as_deref()
        .and_then(parse_mtu)
        .ok_or_else(|| {
            RuntimeError::Backend(format!(
                "the instance namespace {} has no {UPLINK} (is the net manager attached?)",
                netns.display()
            ))
        })?;
    if link(BRIDGE)?.is_some() {
        return Ok(mtu);
    }
    let mut child = std::process::Command::new(&ns[0])
        .args(&ns[1..])
        .args(["ip", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all((commands(mtu).join("\n") + "\n").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(RuntimeError::Backend(format!(
            "bridging the VM's tap in {}: {}",
            netns.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eth0_becomes_a_port_of_a_bridge_beside_the_tap() {
        let c = commands(1450);
        assert_eq!(c[0], "link add br0 type bridge");
        assert_eq!(c[1], "tuntap add dev tap0 mode tap user 0 group 0");
        // The address and routes go before eth0 is enslaved.
        let flush = c.iter().position(|l| l == "addr flush dev eth0").unwrap();
        let routes = c.iter().position(|l| l == "route flush dev eth0").unwrap();
        let port = c
            .iter()
            .position(|l| l == "link set eth0 master br0")
            .unwrap();
        assert!(routes < port && flush < port);
        for l in [
            "link set tap0 master br0",
            "link set eth0 type bridge_slave learning off",
            "link set tap0 mtu 1450",
            "link set br0 up",
            "link set tap0 up",
        ] {
            assert!(c.iter().any(|x| x == l), "{l} missing: {c:?}");
        }
    }

    #[test]
    fn the_mtu_is_read_from_ip_link() {
        let line = "3: eth0@if4: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue master br0 state UP";
        assert_eq!(parse_mtu(line), Some(1450));
        assert_eq!(parse_mtu("3: eth0: <UP> qdisc noqueue"), None);
        assert_eq!(parse_mtu("3: eth0: mtu x"), None);
    }

    #[test]
    fn macs_are_stable_local_and_unicast() {
        let a = mac("app.ns.vm.ns.instance.0");
        assert_eq!(a, mac("app.ns.vm.ns.instance.0"));
        assert_ne!(a, mac("app.ns.vm.ns.instance.1"));
        assert_eq!(a.len(), 17);
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "{a}");
    }

    #[test]
    fn the_kernel_gets_the_address_gateway_and_netmask() {
        assert_eq!(netmask(26), Ipv4Addr::new(255, 255, 255, 192));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            kernel_ip_arg(
                "10.18.0.5".parse().unwrap(),
                "10.18.0.1".parse().unwrap(),
                26
            ),
            "ip=10.18.0.5::10.18.0.1:255.255.255.192::eth0:off"
        );
        assert_eq!(
            kernel_net_args(
                "10.18.0.5".parse().unwrap(),
                "10.18.0.1".parse().unwrap(),
                26
            )
            .join(" "),
            "netdev.ipv4_addr=10.18.0.5 netdev.ipv4_gw_addr=10.18.0.1 \
             netdev.ipv4_subnet_mask=255.255.255.192 \
             ip=10.18.0.5::10.18.0.1:255.255.255.192::eth0:off"
        );
        assert_eq!(
            nsenter(Path::new("/run/netns/x")),
            ["nsenter", "--net=/run/netns/x"]
        );
    }
}
