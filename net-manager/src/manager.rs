//! The net manager's state and operations: this worker's node configuration (its subnet and
//! underlay address: the bridge and the tunnel), the instances attached to its overlay, and
//! the overlay view (translation table, names, peers), kept in its own store so that a
//! restart rebuilds nothing that runs (links, namespaces, the table and the peers stay;
//! established connections live in conntrack).
//!
//! Each operation changes the kernel first, then records the result, then updates memory; a
//! failure part way undoes what it did. At start, the stored node configuration and view are
//! applied again (idempotently), and what an earlier run left and no record names is removed:
//! veths with the net manager's prefix, namespace files, a bridge or tunnel it made under
//! another name (and its rules in iptables' `FORWARD`), routes through the tunnel to workers
//! no longer in the view.
//!
//! The node's links come with their rules in iptables' `FORWARD` ([`crate::firewall`]), so a
//! policy of drop there (Docker's) does not cut the overlay off; instances' bridge ports are
//! in hairpin mode, so an instance reaches itself through a service IP.
//!
//! The closest choices follow the measured round-trip times ([`Manager::measure`], with
//! [`crate::probe`]): when a ranking changes, the table is applied again.

use crate::firewall;
use crate::link::{self, Attachment, Peer, Tunnel};
use crate::metrics::Metrics;
use crate::netns;
use crate::nft::{self, Published, Translations};
use crate::plan::{self, WorkerNet};
use crate::probe;
use crate::view::{self, Me, Plan, View};
use canopy_core::addressing::Ipv4Pool;
use canopy_core::job::PortMapping;
use canopy_store::{Collection, SharedStore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, watch};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the caller (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// Bad input, with the field at fault (HTTP 400).
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// This worker has no node configuration yet (HTTP 409).
    #[error("not configured: {0}")]
    NotConfigured(String),
    /// A node configuration that cannot replace the current one now (HTTP 409).
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// The worker subnet has no free address (HTTP 409).
    #[error("the worker subnet {0} has no free address left")]
    Exhausted(String),
    /// A port another instance already publishes (HTTP 409).
    #[error("ports: {port} is already published by {by}")]
    PortTaken { port: String, by: String },
    #[error("links: {0}")]
    Link(#[from] link::LinkError),
    #[error("{0}")]
    Netns(#[from] netns::NetnsError),
    #[error("nftables: {0}")]
    Nft(#[from] crate::apply::NftError),
    #[error("{0}")]
    Firewall(#[from] firewall::FirewallError),
    #[error("state: {0}")]
    Store(#[from] canopy_store::StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn field(field: &str, message: impl Into<String>) -> Error {
    Error::Field {
        field: field.to_owned(),
        message: message.into(),
    }
}

const NOT_CONFIGURED: &str = "PUT /node first (this worker's subnet and underlay address)";

/// Where the net manager puts things.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bridge: String,
    /// The VXLAN device, its VNI and UDP port.
    pub tunnel: String,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Several workers in one network namespace: no tunnel, peers reached by the kernel's
    /// own routes between the bridges, and the table's lookup only for this bridge's traffic.
    pub same_host: bool,
    /// The nftables table (family `ip`) holding the translations.
    pub table: String,
    /// Instance namespaces are pinned here, one file per instance.
    pub netns_dir: PathBuf,
    pub mtu: u32,
}

/// This worker's place on the overlay: the body of `PUT /node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Its /26 worker subnet (the network address).
    pub subnet: Ipv4Addr,
    /// Its address on the network the tunnel runs over (the LAN).
    pub underlay: Ipv4Addr,
}

impl NodeConfig {
    /// The worker subnet, if both fields are usable.
    pub fn check(&self) -> Result<WorkerNet> {
        let net = WorkerNet::new(self.subnet).map_err(|m| field("subnet", m))?;
        let u = self.underlay;
        if u.is_unspecified() || u.is_multicast() || u.is_broadcast() {
            return Err(field("underlay", format!("{u} is not a unicast address")));
        }
        Ok(net)
    }
}

/// One instance on the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    pub name: String,
    pub address: Ipv4Addr,
    /// Its network namespace: what the container runtime joins.
    pub netns: PathBuf,
    pub host_if: String,
    /// Ports published on the worker for it.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// The answer to an attach: the attachment and the name server the instance uses (the
/// bridge's address, where the worker answers the names of the view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachAnswer {
    #[serde(flatten)]
    pub attached: Attached,
    pub dns: Ipv4Addr,
}

/// What `GET /view` answers: what is applied now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Applied {
    pub translations: Translations,
    pub names: BTreeMap<String, Ipv4Addr>,
    pub peers: Vec<PeerState>,
}

/// Another worker of the view, with its measured round-trip time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerState {
    pub subnet: Ipv4Addr,
    pub underlay: Ipv4Addr,
    /// Milliseconds; `null` while unknown (not measured yet, or lost).
    pub rtt_ms: Option<f64>,
}

/// The links this net manager made, so that a later run removes those it no longer names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Owned {
    bridges: BTreeSet<String>,
    tunnels: BTreeSet<String>,
}

struct Node {
    config: NodeConfig,
    net: WorkerNet,
    pool: Ipv4Pool,
}

impl Node {
    fn new(config: NodeConfig, net: WorkerNet) -> Node {
        Node {
            config,
            net,
            pool: net.instance_pool(),
        }
    }

    fn me(&self) -> Me {
        Me {
            net: self.net,
            underlay: self.config.underlay,
        }
    }
}

struct Inner {
    node: Option<Node>,
    attached: BTreeMap<String, Attached>,
    /// The view as the cluster sent it, and as checked against the node.
    view: View,
    plan: Plan,
    /// Round-trip times by underlay address.
    rtts: BTreeMap<Ipv4Addr, Duration>,
    /// What the table holds now.
    translations: Translations,
    /// The peers the tunnel has now: subnet → underlay (none in same-host mode).
    peers: BTreeMap<Ipv4Addr, Ipv4Addr>,
}

impl Inner {
    /// Every published port, with the instance it goes to.
    fn published(&self) -> Vec<Published> {
        self.attached
            .values()
            .flat_map(|a| {
                a.ports.iter().map(|m| Published {
                    mapping: *m,
                    target: a.address,
                })
            })
            .collect()
    }

    /// The instance (other than `name`) that already publishes one of `ports`.
    fn port_taken(&self, name: &str, ports: &[PortMapping]) -> Option<(PortMapping, String)> {
        self.attached
            .values()
            .filter(|a| a.name != name)
            .find_map(|a| {
                ports
                    .iter()
                    .find(|p| {
                        a.ports
                            .iter()
                            .any(|q| q.host == p.host && q.protocol == p.protocol)
                    })
                    .map(|p| (*p, a.name.clone()))
            })
    }
}

pub struct Manager {
    settings: Settings,
    inner: Mutex<Inner>,
    records: Collection<Attached>,
    nodes: Collection<NodeConfig>,
    views: Collection<View>,
    owned: Collection<Owned>,
    names: watch::Sender<Arc<BTreeMap<String, Ipv4Addr>>>,
    /// Where probes are answered (`None`: not configured, or same-host mode).
    underlay: watch::Sender<Option<Ipv4Addr>>,
    /// The peers' underlay addresses, to probe.
    probed: watch::Sender<BTreeSet<Ipv4Addr>>,
    /// The bridge's address once configured: where the resolver answers.
    gateway: watch::Sender<Option<Ipv4Addr>>,
    pub metrics: Metrics,
}

const KEY: &str = "current";
const OWNED_KEY: &str = "links";

/// The tunnel's view of another worker (its MAC follows from its subnet).
fn link_peer(subnet: Ipv4Addr, underlay: Ipv4Addr) -> Peer {
    Peer {
        subnet,
        prefix: plan::SUBNET_PREFIX,
        tunnel_address: subnet,
        tunnel_mac: plan::tunnel_mac(subnet),
        underlay,
    }
}

impl Manager {
    /// Loads the state, configures the node (from `configure`, the flags, if given; else as
    /// stored), removes leftovers no record names and applies the view again.
    pub async fn start(
        settings: Settings,
        store: SharedStore,
        configure: Option<NodeConfig>,
    ) -> Result<Manager> {
        if !nft::valid_table_name(&settings.table) {
            return Err(Error::Invalid(format!(
                "nft table: {:?} is not a table name",
                settings.table
            )));
        }
        plan::check_link_name(&settings.bridge)
            .map_err(|m| Error::Invalid(format!("bridge: {m}")))?;
        plan::check_link_name(&settings.tunnel)
            .map_err(|m| Error::Invalid(format!("tunnel: {m}")))?;
        let records: Collection<Attached> = Collection::new(store.clone(), "attached");
        let nodes: Collection<NodeConfig> = Collection::new(store.clone(), "node");
        let views: Collection<View> = Collection::new(store.clone(), "view");
        let owned_records: Collection<Owned> = Collection::new(store.clone(), "owned");
        // What `PUT /translations` kept before views replaced it.
        let legacy: Collection<serde_json::Value> = Collection::new(store, "translations");

        let stored = nodes.get(KEY).await?;
        let mut attached: BTreeMap<String, Attached> = records.list().await?.into_iter().collect();
        let config = configure.or(stored);
        if let (Some(c), Some(s)) = (configure, stored)
            && c != s
            && !attached.is_empty()
        {
            return Err(in_use(&s, &c, attached.len()));
        }
        let mut owned = owned_records.get(OWNED_KEY).await?.unwrap_or_default();
        if !attached.is_empty() {
            if config.is_none() {
                return Err(Error::Invalid(format!(
                    "{} instances are recorded but the node is not configured: give --subnet and --underlay",
                    attached.len()
                )));
            }
            if let Some(other) = owned.bridges.iter().find(|b| **b != settings.bridge) {
                return Err(Error::Invalid(format!(
                    "bridge: instances are attached to {other}, not {}; start with --bridge={other} or detach them",
                    settings.bridge
                )));
            }
        }
        let mut node = match config {
            Some(c) => Some(Node::new(c, c.check()?)),
            None => None,
        };
        if let Some(n) = node.as_mut() {
            attached.retain(|name, a| {
                let ok = n.pool.reserve(a.address).is_ok();
                if !ok {
                    tracing::warn!(instance = %name, address = %a.address, "recorded address outside the subnet; dropped");
                }
                ok
            });
        }
        let mut view = views.get(KEY).await?.unwrap_or_default();
        let plan = match &node {
            Some(n) => view::check(&view, &n.me()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the stored view does not fit this worker; dropped");
                view = View::default();
                Plan::default()
            }),
            None => Plan::default(),
        };

        // Links: those no longer named go, the named ones are made (or kept).
        let wanted = Owned {
            bridges: node.iter().map(|_| settings.bridge.clone()).collect(),
            tunnels: node
                .iter()
                .filter(|_| !settings.same_host)
                .map(|_| settings.tunnel.clone())
                .collect(),
        };
        let unwanted = Owned {
            bridges: owned.bridges.difference(&wanted.bridges).cloned().collect(),
            tunnels: owned.tunnels.difference(&wanted.tunnels).cloned().collect(),
        };
        owned.bridges.extend(wanted.bridges.iter().cloned());
        owned.tunnels.extend(wanted.tunnels.iter().cloned());
        owned_records.put(OWNED_KEY, &owned).await?;
        let keep: Vec<String> = attached.values().map(|a| a.host_if.clone()).collect();
        let gone: Vec<String> = unwanted
            .bridges
            .iter()
            .chain(&unwanted.tunnels)
            .cloned()
            .collect();
        let removed = link::in_netns(None, move |h| async move {
            link::sysctl("net.ipv4.ip_forward", "1")?;
            let mut removed = Vec::new();
            for name in unwanted.bridges.iter().chain(&unwanted.tunnels) {
                if link::exists(&h, name).await {
                    link::delete(&h, name).await?;
                    removed.push(name.clone());
                }
            }
            for name in link::names(&h).await? {
                if !plan::is_host_if(&name) {
                    continue;
                }
                if !keep.contains(&name) {
                    link::delete(&h, &name).await?;
                    removed.push(name);
                } else if let Err(e) = link::set_hairpin(&h, &name).await {
                    // A veth an earlier version attached without it.
                    tracing::warn!(link = %name, error = %e, "cannot turn hairpin mode on");
                }
            }
            Ok(removed)
        })
        .await?;
        if !removed.is_empty() {
            tracing::info!(?removed, "removed links an earlier run left");
        }
        if !gone.is_empty() {
            // Their rules outlive the links: remove them whether the links were there or not.
            match unaccept(gone.clone()).await {
                Ok(outcome) => log_firewall(
                    &outcome,
                    &gone,
                    "removed the rules of links no longer named",
                ),
                Err(e) => {
                    tracing::warn!(links = ?gone, error = %e, "cannot remove the iptables rules of links no longer named")
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&settings.netns_dir) {
            for e in entries.flatten() {
                let path = e.path();
                if !attached.values().any(|a| a.netns == path) {
                    tracing::info!(netns = %path.display(), "removing a namespace an earlier run left");
                    netns::remove(&path)?;
                }
            }
        }

        let m = Manager {
            settings,
            inner: Mutex::new(Inner {
                node: None,
                attached,
                view,
                plan,
                rtts: BTreeMap::new(),
                translations: Translations::default(),
                peers: BTreeMap::new(),
            }),
            records,
            nodes,
            views,
            owned: owned_records,
            names: watch::channel(Arc::default()).0,
            underlay: watch::channel(None).0,
            probed: watch::channel(BTreeSet::new()).0,
            gateway: watch::channel(None).0,
            metrics: Metrics::default(),
        };
        {
            let mut inner = m.inner.lock().await;
            match node.take() {
                Some(n) => {
                    m.ensure_node(&n).await?;
                    let t = inner.plan.translations(&inner.rtts);
                    m.apply_table(&t, &inner.published())?;
                    inner.translations = t;
                    let want = m.peers_for(&inner.plan);
                    m.sync_peers(&want, None).await?;
                    inner.peers = want;
                    if stored != Some(n.config) {
                        m.nodes.put(KEY, &n.config).await?;
                    }
                    inner.node = Some(n);
                }
                None => {
                    crate::apply::nft(None, &nft::render_removal(&m.settings.table))?;
                }
            }
            m.owned.put(OWNED_KEY, &wanted).await?;
            if legacy.delete(KEY).await? {
                tracing::info!(
                    "dropped the translations of an earlier version; the next view brings them back"
                );
            }
            m.publish_state(&inner);
        }
        Ok(m)
    }

    /// Makes the bridge (and, but in same-host mode, the tunnel) of node `n`: created or kept,
    /// with their addresses; another subnet's address is replaced. Their traffic is accepted
    /// in iptables' `FORWARD` ([`firewall::ensure`]; nothing is done without iptables).
    async fn ensure_node(&self, n: &Node) -> Result<()> {
        let (bridge, gateway, mtu) = (
            self.settings.bridge.clone(),
            n.net.bridge(),
            self.settings.mtu,
        );
        let localnet = format!("net.ipv4.conf.{bridge}.route_localnet");
        let tunnel = (!self.settings.same_host).then(|| Tunnel {
            name: self.settings.tunnel.clone(),
            vni: self.settings.vni,
            port: self.settings.vxlan_port,
            local: n.config.underlay,
            address: n.net.tunnel(),
            mac: plan::tunnel_mac(n.net.subnet),
            mtu,
        });
        link::in_netns(None, move |h| async move {
            link::sysctl("net.ipv4.ip_forward", "1")?;
            link::ensure_bridge(&h, &bridge, gateway, plan::SUBNET_PREFIX, mtu).await?;
            // Published ports answer on 127.0.0.1 too (see `nft::render`).
            link::sysctl(&localnet, "1")?;
            if let Some(t) = tunnel {
                link::ensure_tunnel(&h, &t).await?;
            }
            Ok(())
        })
        .await?;
        let links = self.links();
        let outcome = accept(links.clone()).await?;
        log_firewall(&outcome, &links, "accepting the overlay's traffic");
        Ok(())
    }

    /// The links whose traffic this net manager forwards: the bridge, and the tunnel (but in
    /// same-host mode).
    fn links(&self) -> Vec<String> {
        let mut links = vec![self.settings.bridge.clone()];
        if !self.settings.same_host {
            links.push(self.settings.tunnel.clone());
        }
        links
    }

    /// The peers the tunnel should have for `plan` (none in same-host mode).
    fn peers_for(&self, plan: &Plan) -> BTreeMap<Ipv4Addr, Ipv4Addr> {
        if self.settings.same_host {
            BTreeMap::new()
        } else {
            plan.peers.clone()
        }
    }

    /// Makes the tunnel's peers `want`, changing only the difference from `have` (`None`:
    /// from what the kernel has, read from the tunnel's routes; every wanted peer is then
    /// added again, which replaces its entries).
    async fn sync_peers(
        &self,
        want: &BTreeMap<Ipv4Addr, Ipv4Addr>,
        have: Option<&BTreeMap<Ipv4Addr, Ipv4Addr>>,
    ) -> Result<()> {
        if self.settings.same_host {
            return Ok(());
        }
        let tunnel = self.settings.tunnel.clone();
        let want = want.clone();
        let have = have.cloned();
        link::in_netns(None, move |h| async move {
            let (remove, add): (Vec<Peer>, Vec<Peer>) = match have {
                Some(have) => (
                    have.iter()
                        .filter(|(s, u)| want.get(s) != Some(u))
                        .map(|(s, u)| link_peer(*s, *u))
                        .collect(),
                    want.iter()
                        .filter(|(s, u)| have.get(s) != Some(u))
                        .map(|(s, u)| link_peer(*s, *u))
                        .collect(),
                ),
                None => (
                    link::routes_via(&h, &tunnel)
                        .await?
                        .into_iter()
                        .filter(|(s, _)| !want.contains_key(s))
                        .map(|(s, _)| link_peer(s, Ipv4Addr::UNSPECIFIED))
                        .collect(),
                    want.iter().map(|(s, u)| link_peer(*s, *u)).collect(),
                ),
            };
            for p in &remove {
                link::remove_peer(&h, &tunnel, p).await?;
            }
            for p in &add {
                link::add_peer(&h, &tunnel, p).await?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    fn apply_table(&self, t: &Translations, published: &[Published]) -> Result<()> {
        let only_from = self
            .settings
            .same_host
            .then_some(self.settings.bridge.as_str());
        crate::apply::translations(None, &self.settings.table, t, published, only_from)?;
        Ok(())
    }

    /// Tells the watchers (names, probes) and the gauges what holds now.
    fn publish_state(&self, inner: &Inner) {
        let names = &inner.plan.names;
        self.names.send_if_modified(|cur| {
            if **cur == *names {
                false
            } else {
                *cur = Arc::new(names.clone());
                true
            }
        });
        let underlay = inner
            .node
            .as_ref()
            .filter(|_| !self.settings.same_host)
            .map(|n| n.config.underlay);
        self.underlay.send_if_modified(|cur| {
            let changed = *cur != underlay;
            *cur = underlay;
            changed
        });
        let gateway = inner
            .node
            .as_ref()
            .and_then(|n| WorkerNet::new(n.config.subnet).ok())
            .map(|w| w.bridge());
        self.gateway.send_if_modified(|cur| {
            let changed = *cur != gateway;
            *cur = gateway;
            changed
        });
        let probed = match (&inner.node, self.settings.same_host) {
            (Some(n), false) => inner.plan.underlays(n.config.underlay),
            _ => BTreeSet::new(),
        };
        self.probed.send_if_modified(|cur| {
            let changed = *cur != probed;
            *cur = probed;
            changed
        });
        self.metrics.set_sizes(
            inner.attached.len(),
            inner.translations.len(),
            inner.plan.peers.len(),
        );
    }

    /// The names of the view applied (service name, lowercase → its round-robin address),
    /// as they change.
    pub fn names(&self) -> watch::Receiver<Arc<BTreeMap<String, Ipv4Addr>>> {
        self.names.subscribe()
    }

    /// This worker's node configuration, if it has one.
    pub async fn node(&self) -> Option<NodeConfig> {
        self.inner.lock().await.node.as_ref().map(|n| n.config)
    }

    /// Configures this worker's place on the overlay (`PUT /node`): its bridge on the subnet
    /// and its tunnel over the underlay address. The same configuration again changes nothing
    /// (`Ok(false)`); another one is refused while instances are attached; with none, it
    /// replaces the current one (the bridge's address, the tunnel).
    pub async fn configure(&self, config: NodeConfig) -> Result<bool> {
        let net = config.check()?;
        let started = Instant::now();
        let mut inner = self.inner.lock().await;
        if let Some(old) = &inner.node {
            if old.config == config {
                return Ok(false);
            }
            if !inner.attached.is_empty() {
                return Err(in_use(&old.config, &config, inner.attached.len()));
            }
        }
        let node = Node::new(config, net);
        let (view, plan) = match view::check(&inner.view, &node.me()) {
            Ok(plan) => (inner.view.clone(), plan),
            Err(e) => {
                tracing::warn!(error = %e, "the view does not fit the new configuration; dropped until the next");
                (View::default(), Plan::default())
            }
        };
        let t = plan.translations(&inner.rtts);
        let want = self.peers_for(&plan);
        let mut owned = self.owned.get(OWNED_KEY).await?.unwrap_or_default();
        owned.bridges.insert(self.settings.bridge.clone());
        if !self.settings.same_host {
            owned.tunnels.insert(self.settings.tunnel.clone());
        }
        self.owned.put(OWNED_KEY, &owned).await?;
        let done = async {
            self.ensure_node(&node).await?;
            self.apply_table(&t, &inner.published())?;
            self.sync_peers(&want, None).await?;
            self.nodes.put(KEY, &config).await?;
            if view != inner.view {
                self.views.put(KEY, &view).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = done {
            self.restore(&inner).await;
            return Err(e);
        }
        tracing::info!(subnet = %config.subnet, underlay = %config.underlay, "node configured");
        inner.node = Some(node);
        inner.view = view;
        inner.plan = plan;
        inner.translations = t;
        inner.peers = want;
        self.metrics.table_updated(started.elapsed());
        self.publish_state(&inner);
        Ok(true)
    }

    /// Puts the kernel back to what `inner` says (after a failure part way). Best effort.
    async fn restore(&self, inner: &Inner) {
        let result = async {
            match &inner.node {
                Some(n) => {
                    self.ensure_node(n).await?;
                    self.apply_table(&inner.translations, &inner.published())?;
                    self.sync_peers(&inner.peers, None).await?;
                }
                None => self.remove_links().await?,
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot put the network back as it was");
        }
    }

    /// Applies an overlay view (`PUT /view`): checked first (nothing changes when it is
    /// refused), then the table (one transaction) and the tunnel's peers (the difference),
    /// then recorded.
    pub async fn set_view(&self, view: View) -> Result<()> {
        let started = Instant::now();
        let mut inner = self.inner.lock().await;
        let Some(node) = &inner.node else {
            return Err(Error::NotConfigured(NOT_CONFIGURED.to_owned()));
        };
        let plan = view::check(&view, &node.me()).map_err(|e| {
            self.metrics.view_rejected();
            Error::Field {
                field: e.field,
                message: e.message,
            }
        })?;
        let t = plan.translations(&inner.rtts);
        let want = self.peers_for(&plan);
        let done = async {
            self.apply_table(&t, &inner.published())?;
            self.sync_peers(&want, Some(&inner.peers)).await?;
            self.views.put(KEY, &view).await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = done {
            self.restore(&inner).await;
            return Err(e);
        }
        inner.view = view;
        inner.plan = plan;
        inner.translations = t;
        inner.peers = want;
        self.metrics.table_updated(started.elapsed());
        self.metrics.view_updated();
        self.publish_state(&inner);
        Ok(())
    }

    /// What is applied: the translations, names and peers (with their round-trip times).
    pub async fn applied(&self) -> Applied {
        let inner = self.inner.lock().await;
        Applied {
            translations: inner.translations.clone(),
            names: inner.plan.names.clone(),
            peers: inner
                .plan
                .peers
                .iter()
                .map(|(s, u)| PeerState {
                    subnet: *s,
                    underlay: *u,
                    rtt_ms: inner.rtts.get(u).map(|d| d.as_secs_f64() * 1000.0),
                })
                .collect(),
        }
    }

    /// New round-trip times: the table is applied again if a closest choice changes.
    pub async fn rtts_measured(&self, rtts: BTreeMap<Ipv4Addr, Duration>) {
        let started = Instant::now();
        self.metrics.set_rtts(&rtts);
        let mut inner = self.inner.lock().await;
        inner.rtts = rtts;
        if inner.node.is_none() {
            return;
        }
        let t = inner.plan.translations(&inner.rtts);
        if t == inner.translations {
            return;
        }
        match self.apply_table(&t, &inner.published()) {
            Ok(()) => {
                tracing::info!("a closest choice changed with the round-trip times");
                inner.translations = t;
                self.metrics.table_updated(started.elapsed());
                self.publish_state(&inner);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot apply the table for new round-trip times")
            }
        }
    }

    /// Answers and sends probes ([`probe::run`]) while this worker has an underlay address
    /// (not in same-host mode), following the peers of the view, and feeds the round-trip
    /// times back ([`Manager::rtts_measured`]), until `shutdown`.
    pub async fn measure(
        self: Arc<Self>,
        settings: probe::Settings,
        shutdown: impl Future<Output = ()>,
    ) {
        let (tx, mut rx) = watch::channel(BTreeMap::new());
        let probing = probe::run(
            settings,
            self.underlay.subscribe(),
            self.probed.subscribe(),
            tx,
            shutdown,
        );
        let following = async {
            while rx.changed().await.is_ok() {
                let rtts = rx.borrow_and_update().clone();
                self.rtts_measured(rtts).await;
            }
        };
        tokio::join!(probing, following);
    }

    /// Answers names on the bridge's address, port `port` ([`crate::dns`]): the service names
    /// of the view, every other name forwarded to `upstream` (the host's resolvers); follows
    /// the bridge's address as the node is configured, until `shutdown`.
    pub async fn resolve(
        self: Arc<Self>,
        port: u16,
        upstream: Vec<std::net::SocketAddr>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut gateway = self.gateway.subscribe();
        let mut serving: Option<(Ipv4Addr, tokio::task::JoinHandle<()>)> = None;
        let mut warned = None;
        tokio::pin!(shutdown);
        loop {
            let want = *gateway.borrow_and_update();
            if serving.as_ref().map(|(a, _)| *a) != want {
                if let Some((_, task)) = serving.take() {
                    task.abort();
                }
                if let Some(addr) = want {
                    match tokio::net::UdpSocket::bind((addr, port)).await {
                        Ok(sock) => {
                            let up: Vec<_> = upstream
                                .iter()
                                .copied()
                                .filter(|u| u.ip() != std::net::IpAddr::V4(addr))
                                .collect();
                            tracing::info!(address = %addr, port, upstream = ?up, "answering names");
                            let task = tokio::spawn(crate::dns::serve(sock, self.names(), up));
                            serving = Some((addr, task));
                            warned = None;
                        }
                        Err(e) => {
                            if warned != Some(addr) {
                                tracing::warn!(address = %addr, port, error = %e, "cannot answer names yet; retrying");
                                warned = Some(addr);
                            }
                        }
                    }
                }
            }
            let retry = want.is_some() && serving.is_none();
            tokio::select! {
                _ = &mut shutdown => break,
                r = gateway.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
            }
        }
        if let Some((_, task)) = serving {
            task.abort();
        }
    }

    /// Puts instance `name` on the overlay: its own namespace, a veth to the bridge, an
    /// address from the worker subnet. The same name again answers the same attachment.
    pub async fn attach(&self, name: &str, ports: &[PortMapping]) -> Result<AttachAnswer> {
        plan::check_instance_name(name).map_err(Error::Invalid)?;
        let mut guard = self.inner.lock().await;
        let inner = &mut *guard;
        let Some(net) = inner.node.as_ref().map(|n| n.net) else {
            return Err(Error::NotConfigured(NOT_CONFIGURED.to_owned()));
        };
        let dns = net.bridge();
        let answer = |a: &Attached| AttachAnswer {
            attached: a.clone(),
            dns,
        };
        if let Some(a) = inner.attached.get(name) {
            return Ok(answer(a));
        }
        if let Some((port, by)) = inner.port_taken(name, ports) {
            return Err(Error::PortTaken {
                port: port.to_string(),
                by,
            });
        }
        let address = inner
            .node
            .as_mut()
            .and_then(|n| n.pool.allocate().ok())
            .ok_or_else(|| Error::Exhausted(format!("{}/26", net.subnet)))?;
        let a = Attached {
            name: name.to_owned(),
            address,
            netns: self.settings.netns_dir.join(name),
            host_if: plan::host_if(name),
            ports: ports.to_vec(),
        };
        let release = |inner: &mut Inner| {
            if let Some(n) = inner.node.as_mut() {
                n.pool.release(address);
            }
        };
        if let Err(e) = self.plumb(&a, net).await {
            self.unplumb(&a).await;
            release(inner);
            return Err(e);
        }
        if let Err(e) = self.records.put(name, &a).await {
            self.unplumb(&a).await;
            release(inner);
            return Err(e.into());
        }
        inner.attached.insert(name.to_owned(), a.clone());
        if !a.ports.is_empty()
            && let Err(e) = self.apply_table(&inner.translations, &inner.published())
        {
            inner.attached.remove(name);
            self.apply_table(&inner.translations, &inner.published())?;
            let _ = self.records.delete(name).await;
            self.unplumb(&a).await;
            release(inner);
            return Err(e);
        }
        self.publish_state(inner);
        tracing::info!(instance = name, address = %a.address, "attached");
        Ok(answer(&a))
    }

    async fn plumb(&self, a: &Attached, net: WorkerNet) -> Result<()> {
        netns::create(&a.netns)?;
        link::attach(&Attachment {
            worker_ns: None,
            instance_ns: a.netns.clone(),
            bridge: self.settings.bridge.clone(),
            host_if: a.host_if.clone(),
            address: a.address,
            gateway: net.bridge(),
            mtu: self.settings.mtu,
        })
        .await?;
        Ok(())
    }

    /// Removes what [`Manager::plumb`] made; what is already gone is fine.
    async fn unplumb(&self, a: &Attached) {
        if let Err(e) = link::detach(None, &a.host_if).await {
            tracing::warn!(instance = %a.name, error = %e, "cannot remove the veth");
        }
        if let Err(e) = netns::remove(&a.netns) {
            tracing::warn!(instance = %a.name, error = %e, "cannot remove the namespace");
        }
    }

    /// Takes instance `name` off the overlay: its veth, namespace and address. Idempotent.
    pub async fn detach(&self, name: &str) -> Result<()> {
        plan::check_instance_name(name).map_err(Error::Invalid)?;
        let mut inner = self.inner.lock().await;
        let Some(a) = inner.attached.get(name).cloned() else {
            return Ok(());
        };
        link::detach(None, &a.host_if).await?;
        netns::remove(&a.netns)?;
        self.records.delete(name).await?;
        if let Some(n) = inner.node.as_mut() {
            n.pool.release(a.address);
        }
        inner.attached.remove(name);
        if !a.ports.is_empty()
            && let Err(e) = self.apply_table(&inner.translations, &inner.published())
        {
            tracing::error!(instance = name, error = %e, "cannot unpublish its ports");
        }
        self.publish_state(&inner);
        tracing::info!(instance = name, "detached");
        Ok(())
    }

    pub async fn attached(&self) -> Vec<Attached> {
        self.inner.lock().await.attached.values().cloned().collect()
    }

    /// Deletes the bridge and the tunnel (with the tunnel go its peers' routes, neighbour
    /// and forwarding entries), and their rules in iptables' `FORWARD` (tried also when the
    /// links cannot be deleted).
    async fn remove_links(&self) -> Result<()> {
        let (bridge, tunnel) = (self.settings.bridge.clone(), self.settings.tunnel.clone());
        let same_host = self.settings.same_host;
        let deleted = link::in_netns(None, move |h| async move {
            if !same_host {
                link::delete(&h, &tunnel).await?;
            }
            link::delete(&h, &bridge).await
        })
        .await;
        let links = self.links();
        let unaccepted = unaccept(links.clone()).await;
        if let Ok(outcome) = &unaccepted {
            log_firewall(outcome, &links, "removed the overlay's rules");
        }
        deleted?;
        unaccepted?;
        Ok(())
    }

    /// Removes everything this net manager made: every instance, the table, the tunnel with
    /// its peers, the bridge, and the records of the node and the view (for
    /// `--remove-on-exit`). Best effort: it goes on past errors and logs them.
    pub async fn remove_all(&self) {
        let names: Vec<String> = self.inner.lock().await.attached.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.detach(&name).await {
                tracing::error!(instance = %name, error = %e, "cannot detach");
            }
        }
        let mut inner = self.inner.lock().await;
        if let Err(e) = crate::apply::nft(None, &nft::render_removal(&self.settings.table)) {
            tracing::error!(error = %e, "cannot remove the nftables table");
        }
        if let Err(e) = self.remove_links().await {
            tracing::error!(error = %e, "cannot remove the bridge or the tunnel");
        }
        for result in [
            self.views.delete(KEY).await,
            self.nodes.delete(KEY).await,
            self.owned.delete(OWNED_KEY).await,
        ] {
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot forget the node or the view");
            }
        }
        inner.node = None;
        inner.view = View::default();
        inner.plan = Plan::default();
        inner.translations = Translations::default();
        inner.peers.clear();
        self.publish_state(&inner);
    }
}

/// [`firewall::ensure`] (`accept`) or [`firewall::remove`] for `links`, in this process's
/// namespace, off the async workers.
async fn firewall_links(links: Vec<String>, accept: bool) -> Result<firewall::Outcome> {
    let outcome = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = links.iter().map(String::as_str).collect();
        if accept {
            firewall::ensure(None, &names)
        } else {
            firewall::remove(None, &names)
        }
    })
    .await
    .map_err(|e| firewall::FirewallError::Run(std::io::Error::other(e)))??;
    Ok(outcome)
}

async fn accept(links: Vec<String>) -> Result<firewall::Outcome> {
    firewall_links(links, true).await
}

async fn unaccept(links: Vec<String>) -> Result<firewall::Outcome> {
    firewall_links(links, false).await
}

fn log_firewall(outcome: &firewall::Outcome, links: &[String], done: &str) {
    match outcome {
        firewall::Outcome::Skipped(why) => {
            tracing::info!(?links, "iptables FORWARD left alone: {why}")
        }
        firewall::Outcome::Changed(0) => {}
        firewall::Outcome::Changed(n) => {
            tracing::info!(?links, rules = n, "iptables FORWARD: {done}")
        }
    }
}

/// The conflict of configuration `new` with `old` while `n` instances are attached.
fn in_use(old: &NodeConfig, new: &NodeConfig, n: usize) -> Error {
    let (name, was, now) = if old.subnet != new.subnet {
        ("subnet", old.subnet, new.subnet)
    } else {
        ("underlay", old.underlay, new.underlay)
    };
    Error::Conflict {
        field: name.to_owned(),
        message: format!(
            "{now} cannot replace {was} while {n} instances are attached; detach them first"
        ),
    }
}
