//! Links, addresses and routes through rtnetlink, in any network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that opened it, so work inside a
//! namespace runs on a thread of its own that joined it ([`in_netns`]); no tokio worker thread
//! ever changes namespace.
//!
//! The pieces a worker needs: its bridge ([`ensure_bridge`]) and, per instance, a veth pair
//! whose one end is on the bridge and whose other end is `eth0` inside the instance's
//! namespace ([`attach`], [`detach`]), in hairpin mode ([`set_hairpin`]). An instance's address is a /32 with the bridge as its
//! on-link default gateway: every packet it sends, to a neighbour on the same bridge too,
//! passes the worker's routing and conntrack, so service-IP translation and its reverse apply
//! to all of them and servers see their clients' own addresses.

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("network namespace {path}: {error}")]
    Namespace { path: String, error: String },
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("no link named {0}")]
    NoLink(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// Runs `f` with a netlink handle inside the network namespace at `ns` (a `/run/netns/NAME`
/// or `/proc/PID/ns/net` path; `None`: this process's own), on a thread of its own.
pub async fn in_netns<T, F, Fut>(ns: Option<&Path>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let ns: Option<PathBuf> = ns.map(Path::to_owned);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let _ = tx.send(run_in(ns, f));
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(LinkError::Io(std::io::Error::other(
            "the namespace thread ended without an answer",
        )))
    })
}

fn run_in<T, F, Fut>(ns: Option<PathBuf>, f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    if let Some(path) = &ns {
        enter(path)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        f(handle).await
    })
}

/// Moves this thread into the network namespace at `path`.
fn enter(path: &Path) -> Result<()> {
    let ns_err = |error: String| LinkError::Namespace {
        path: path.display().to_string(),
        error,
    };
    let file = std::fs::File::open(path).map_err(|e| ns_err(e.to_string()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(e.to_string()))
}

/// Writes a sysctl of the calling thread's network namespace (`net.ipv4.ip_forward` →
/// `/proc/sys/net/ipv4/ip_forward`). Call it inside [`in_netns`].
pub fn sysctl(name: &str, value: &str) -> Result<()> {
    // /proc/sys/net shows the namespace of the thread that opens it.
    std::fs::write(format!("/proc/sys/{}", name.replace('.', "/")), value)?;
    Ok(())
}

/// The index of link `name`.
pub async fn index(h: &Handle, name: &str) -> Result<u32> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(l.header.index),
        Ok(None) => Err(LinkError::NoLink(name.to_owned())),
        // A missing name is ENODEV, not an empty answer.
        Err(_) => Err(LinkError::NoLink(name.to_owned())),
    }
}

/// The names of every link in the namespace.
pub async fn names(h: &Handle) -> Result<Vec<String>> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = h.link().get().execute();
    let mut out = Vec::new();
    while let Some(l) = links.try_next().await? {
        if let Some(name) = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) {
            out.push(name);
        }
    }
    Ok(out)
}

/// Whether link `name` exists.
pub async fn exists(h: &Handle, name: &str) -> bool {
    index(h, name).await.is_ok()
}

/// The bridge `name` with `addr/prefix`, `mtu`, up. Idempotent: an existing bridge is kept
/// (and brought up); its address is added if missing, and any other IPv4 address it has is
/// removed (a worker given another subnet).
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<u32> {
    if !exists(h, name).await {
        h.link()
            .add(LinkBridge::new(name).mtu(mtu).build())
            .execute()
            .await?;
    }
    let idx = index(h, name).await?;
    ensure_only_address(h, idx, addr, prefix).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await?;
    Ok(idx)
}

/// Link `idx` has `addr/prefix` and no other IPv4 address.
async fn ensure_only_address(h: &Handle, idx: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut have = h.address().get().set_link_index_filter(idx).execute();
    let mut stale = Vec::new();
    let mut present = false;
    while let Some(a) = have.try_next().await? {
        let v4 = a.attributes.iter().find_map(|at| match at {
            AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        match v4 {
            Some(ip) if ip == addr && a.header.prefix_len == prefix => present = true,
            Some(_) => stale.push(a),
            None => {}
        }
    }
    for a in stale {
        h.address().del(a).execute().await?;
    }
    if !present {
        h.address().add(idx, addr.into(), prefix).execute().await?;
    }
    Ok(())
}

async fn ensure_address(h: &Handle, idx: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    let mut have = h
        .address()
        .get()
        .set_link_index_filter(idx)
        .set_address_filter(addr.into())
        .execute();
    if have.try_next().await?.is_none() {
        h.address().add(idx, addr.into(), prefix).execute().await?;
    }
    Ok(())
}

/// Deletes link `name`; a missing one is fine. (Deleting one end of a veth deletes both.)
pub async fn delete(h: &Handle, name: &str) -> Result<()> {
    match index(h, name).await {
        Ok(idx) => Ok(h.link().del(idx).execute().await?),
        Err(LinkError::NoLink(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One instance on the worker's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The worker's network namespace (`None`: the net manager's own).
    pub worker_ns: Option<PathBuf>,
    /// The instance's network namespace.
    pub instance_ns: PathBuf,
    pub bridge: String,
    /// The worker-side end of the veth (≤ 15 characters).
    pub host_if: String,
    /// The instance's address (from the worker subnet) and the bridge's, its gateway.
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// Name of the instance-side end inside the instance's namespace.
pub const INSTANCE_IF: &str = "eth0";

/// Connects an instance: veth `host_if` on the bridge, its peer `eth0` in the instance's
/// namespace with `address/32`, loopback up, default route via the gateway (on-link).
pub async fn attach(a: &Attachment) -> Result<()> {
    let peer = format!("{}p", &a.host_if[..a.host_if.len().min(14)]);
    let ns_file = std::fs::File::open(&a.instance_ns).map_err(|e| LinkError::Namespace {
        path: a.instance_ns.display().to_string(),
        error: e.to_string(),
    })?;
    let (host_if, bridge, mtu, peer2) = (a.host_if.clone(), a.bridge.clone(), a.mtu, peer.clone());
    in_netns(a.worker_ns.as_deref(), move |h| async move {
        delete(&h, &host_if).await?;
        h.link()
            .add(LinkVeth::new(&host_if, &peer2).mtu(mtu).build())
            .execute()
            .await?;
        let br = index(&h, &bridge).await?;
        let idx = index(&h, &host_if).await?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).controller(br).up().build())
            .execute()
            .await?;
        set_hairpin(&h, &host_if).await?;
        let peer_idx = index(&h, &peer2).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(peer_idx)
                    .setns_by_fd(ns_file.as_raw_fd())
                    .build(),
            )
            .execute()
            .await?;
        drop(ns_file);
        Ok(())
    })
    .await?;
    let (address, gateway, mtu) = (a.address, a.gateway, a.mtu);
    in_netns(Some(&a.instance_ns), move |h| async move {
        let lo = index(&h, "lo").await?;
        h.link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await?;
        let idx = index(&h, &peer).await?;
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .name(INSTANCE_IF)
                    .mtu(mtu)
                    .build(),
            )
            .execute()
            .await?;
        ensure_address(&h, idx, address, 32).await?;
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(idx)
            .gateway(gateway)
            .onlink()
            .build();
        h.route().add(route).replace().execute().await?;
        Ok(())
    })
    .await
}

/// Turns hairpin mode on for bridge port `port` (`bridge link set dev PORT hairpin on`): the
/// bridge may send a frame back out of the port it came in on. An instance reaching itself
/// through a service IP needs it when `br_netfilter` bridges the translated packet (see
/// [`crate::nft`]). Idempotent.
pub async fn set_hairpin(h: &Handle, port: &str) -> Result<()> {
    let idx = index(h, port).await?;
    // A port's settings need RTM_NEWLINK (`set_port`); RTM_SETLINK ignores them.
    h.link()
        .set_port(LinkBridgePort::new(idx).hairpin(true).build())
        .execute()
        .await?;
    Ok(())
}

/// Whether bridge port `port` has hairpin mode on (`false` for a link that is no port).
pub async fn hairpin(h: &Handle, port: &str) -> Result<bool> {
    use rtnetlink::packet_route::link::{InfoBridgePort, InfoPortData, LinkAttribute, LinkInfo};
    let mut links = h.link().get().match_name(port.to_owned()).execute();
    let link = links
        .try_next()
        .await
        .ok()
        .flatten()
        .ok_or_else(|| LinkError::NoLink(port.to_owned()))?;
    let on = link
        .attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(p)) => Some(p),
            _ => None,
        })
        .flatten()
        .any(|p| matches!(p, InfoBridgePort::HairpinMode(true)));
    Ok(on)
}

/// Disconnects an instance: removes its veth (both ends). Idempotent.
pub async fn detach(worker_ns: Option<&Path>, host_if: &str) -> Result<()> {
    let host_if = host_if.to_owned();
    in_netns(
        worker_ns,
        move |h| async move { delete(&h, &host_if).await },
    )
    .await
}

/// This worker's end of the tunnel between workers: a VXLAN device (VNI, UDP port) over the
/// LAN address `local`, with the worker subnet's network address as its own, so routes to
/// other workers' subnets can name their far ends (flannel's layout: no flooding, every far
/// end is a static neighbour and forwarding entry). Its MAC is set, not random
/// ([`crate::plan::tunnel_mac`]), so the far ends know it from the subnet alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// This worker's address on the LAN the tunnel runs over.
    pub local: Ipv4Addr,
    /// The tunnel device's own address (the worker subnet's network address).
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Another worker, as the tunnel reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its worker subnet and prefix (instances there are reached through it).
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// Its tunnel device's address and MAC.
    pub tunnel_address: Ipv4Addr,
    pub tunnel_mac: [u8; 6],
    /// Its LAN address (where its VXLAN packets go).
    pub underlay: Ipv4Addr,
}

/// Creates (or keeps) the tunnel device, up, with its address and MAC; returns the MAC. An
/// existing device with another VNI, port or local address is made anew (its forwarding
/// entries and routes go with it); one with another address or MAC is changed in place.
pub async fn ensure_tunnel(h: &Handle, t: &Tunnel) -> Result<[u8; 6]> {
    match vxlan_of(h, &t.name).await? {
        Some(have) if have == (t.vni, t.port, t.local) => {}
        Some(_) => delete(h, &t.name).await?,
        None if exists(h, &t.name).await => {
            return Err(LinkError::Io(std::io::Error::other(format!(
                "link {} exists and is not a VXLAN device",
                t.name
            ))));
        }
        None => {}
    }
    if !exists(h, &t.name).await {
        h.link()
            .add(
                rtnetlink::LinkVxlan::new(&t.name, t.vni)
                    .port(t.port)
                    .local(t.local)
                    .learning(false)
                    .mtu(t.mtu)
                    .address(t.mac.to_vec())
                    .build(),
            )
            .execute()
            .await?;
    }
    let idx = index(h, &t.name).await?;
    if mac(h, &t.name).await? != t.mac {
        h.link()
            .set(
                LinkUnspec::new_with_index(idx)
                    .address(t.mac.to_vec())
                    .build(),
            )
            .execute()
            .await?;
    }
    ensure_only_address(h, idx, t.address, 32).await?;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await?;
    mac(h, &t.name).await
}

/// The VNI, UDP port and local address of VXLAN device `name`; `None` if there is no such
/// link or it is not a VXLAN device.
async fn vxlan_of(h: &Handle, name: &str) -> Result<Option<(u32, u16, Ipv4Addr)>> {
    use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    let Ok(Some(link)) = links.try_next().await else {
        return Ok(None);
    };
    let infos = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let Some(data) = infos.into_iter().flatten().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    }) else {
        return Ok(None);
    };
    let (mut vni, mut port, mut local) = (0, 0, Ipv4Addr::UNSPECIFIED);
    for d in data {
        match d {
            InfoVxlan::Id(v) => vni = *v,
            InfoVxlan::Port(p) => port = *p,
            InfoVxlan::Local(l) => local = *l,
            _ => {}
        }
    }
    Ok(Some((vni, port, local)))
}

/// The destinations (subnet, prefix) of the routes through link `name`, in the main table:
/// the peers a tunnel has now. No link: none.
pub async fn routes_via(h: &Handle, name: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
    let Ok(idx) = index(h, name).await else {
        return Ok(Vec::new());
    };
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    while let Some(r) = routes.try_next().await? {
        let via = r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == idx));
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let main =
            r.header.table == RouteHeader::RT_TABLE_MAIN && r.header.kind == RouteType::Unicast;
        if let (true, true, Some(dst)) = (main, via, dst) {
            out.push((dst, r.header.destination_prefix_length));
        }
    }
    Ok(out)
}

/// The hardware address of link `name`.
pub async fn mac(h: &Handle, name: &str) -> Result<[u8; 6]> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    let link = links
        .try_next()
        .await
        .ok()
        .flatten()
        .ok_or_else(|| LinkError::NoLink(name.to_owned()))?;
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
            _ => None,
        })
        .ok_or_else(|| LinkError::NoLink(format!("{name} (no hardware address)")))
}

/// Makes `peer`'s instances reachable through the tunnel: its far end as a permanent
/// neighbour, a forwarding entry sending that MAC to its LAN address, and a route to its
/// subnet via its far end. Idempotent (entries are replaced).
pub async fn add_peer(h: &Handle, tunnel: &str, peer: &Peer) -> Result<()> {
    use rtnetlink::packet_route::neighbour::NeighbourFlags;
    let idx = index(h, tunnel).await?;
    h.neighbours()
        .add(idx, peer.tunnel_address.into())
        .link_layer_address(&peer.tunnel_mac)
        .replace()
        .execute()
        .await?;
    h.neighbours()
        .add_bridge(idx, &peer.tunnel_mac)
        .destination(peer.underlay.into())
        .flags(NeighbourFlags::Own)
        .replace()
        .execute()
        .await?;
    h.route()
        .add(peer_route(idx, peer))
        .replace()
        .execute()
        .await?;
    Ok(())
}

/// The route to `peer`'s subnet through the tunnel device `idx`.
fn peer_route(idx: u32, peer: &Peer) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(peer.subnet, peer.prefix)
        .output_interface(idx)
        .gateway(peer.tunnel_address)
        .onlink()
        .build()
}

/// Forgets `peer`: its route, neighbour and forwarding entry (found by its subnet, tunnel
/// address and MAC; its underlay is not needed). Entries already gone are fine.
pub async fn remove_peer(h: &Handle, tunnel: &str, peer: &Peer) -> Result<()> {
    let idx = index(h, tunnel).await?;
    let _ = h.route().del(peer_route(idx, peer)).execute().await;
    let mut neighbours = h.neighbours().get().execute();
    let mut stale = Vec::new();
    while let Ok(Some(n)) = neighbours.try_next().await {
        if n.header.ifindex != idx {
            continue;
        }
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        // Its neighbour entry (by address or MAC) and its forwarding entry (by MAC): a MAC
        // is one worker's alone, an underlay address need not be.
        let ours = n.attributes.iter().any(|a| match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                *ip == peer.tunnel_address
            }
            NeighbourAttribute::LinkLayerAddress(m) => m.as_slice() == peer.tunnel_mac,
            _ => false,
        });
        if ours {
            stale.push(n);
        }
    }
    for n in stale {
        let _ = h.neighbours().del(n).execute().await;
    }
    Ok(())
}
