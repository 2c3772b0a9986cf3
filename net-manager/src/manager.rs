//! The net manager's state and operations: the instances attached to this worker's overlay
//! and the translation table, kept in its own store so that a restart rebuilds nothing that
//! runs (links, namespaces and the table stay; established connections live in conntrack).
//!
//! Each operation changes the kernel first, then records the result, then updates memory; a
//! failure part way undoes what it did. At start, what an earlier run left and no record
//! names (veths with the net manager's prefix, namespace files) is removed.

use crate::link::{self, Attachment};
use crate::metrics::Metrics;
use crate::netns;
use crate::nft::{self, Published, Translations};
use crate::plan::{self, WorkerNet};
use canopy_core::addressing::Ipv4Pool;
use canopy_core::job::PortMapping;
use canopy_store::{Collection, SharedStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the caller (HTTP 400).
    #[error("{0}")]
    Invalid(String),
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
    #[error("state: {0}")]
    Store(#[from] canopy_store::StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the net manager puts things.
#[derive(Debug, Clone)]
pub struct Settings {
    pub net: WorkerNet,
    pub bridge: String,
    /// The nftables table (family `ip`) holding the translations.
    pub table: String,
    /// Instance namespaces are pinned here, one file per instance.
    pub netns_dir: PathBuf,
    pub mtu: u32,
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

struct Inner {
    attached: BTreeMap<String, Attached>,
    pool: Ipv4Pool,
    translations: Translations,
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
    tables: Collection<Translations>,
    pub metrics: Metrics,
}

const TABLE_KEY: &str = "current";

impl Manager {
    /// Loads the state, makes sure the bridge is there, removes leftovers no record names and
    /// applies the recorded translation table again.
    pub async fn start(settings: Settings, store: SharedStore) -> Result<Manager> {
        if !nft::valid_table_name(&settings.table) {
            return Err(Error::Invalid(format!(
                "nft table: {:?} is not a table name",
                settings.table
            )));
        }
        let records: Collection<Attached> = Collection::new(store.clone(), "attached");
        let tables: Collection<Translations> = Collection::new(store, "translations");
        let mut pool = settings.net.instance_pool();
        let mut attached = BTreeMap::new();
        for (name, a) in records.list().await? {
            if pool.reserve(a.address).is_err() {
                tracing::warn!(instance = %name, address = %a.address, "recorded address outside the subnet; dropped");
                continue;
            }
            attached.insert(name, a);
        }
        let translations = tables.get(TABLE_KEY).await?.unwrap_or_default();
        let (bridge, gateway, mtu) = (settings.bridge.clone(), settings.net.bridge(), settings.mtu);
        let localnet = format!("net.ipv4.conf.{}.route_localnet", settings.bridge);
        let keep: Vec<String> = attached.values().map(|a| a.host_if.clone()).collect();
        let removed = link::in_netns(None, move |h| async move {
            link::sysctl("net.ipv4.ip_forward", "1")?;
            link::ensure_bridge(&h, &bridge, gateway, plan::SUBNET_PREFIX, mtu).await?;
            // Published ports answer on 127.0.0.1 too (see `nft::render`).
            link::sysctl(&localnet, "1")?;
            let mut removed = Vec::new();
            for name in link::names(&h).await? {
                if plan::is_host_if(&name) && !keep.contains(&name) {
                    link::delete(&h, &name).await?;
                    removed.push(name);
                }
            }
            Ok(removed)
        })
        .await?;
        if !removed.is_empty() {
            tracing::info!(?removed, "removed veths an earlier run left");
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
        let inner = Inner {
            attached,
            pool,
            translations,
        };
        crate::apply::translations(
            None,
            &settings.table,
            &inner.translations,
            &inner.published(),
            None,
        )?;
        let m = Manager {
            settings,
            inner: Mutex::new(inner),
            records,
            tables,
            metrics: Metrics::default(),
        };
        m.refresh_gauges().await;
        Ok(m)
    }

    async fn refresh_gauges(&self) {
        let inner = self.inner.lock().await;
        self.metrics
            .set_sizes(inner.attached.len(), inner.translations.len());
    }

    /// Puts instance `name` on the overlay: its own namespace, a veth to the bridge, an
    /// address from the worker subnet. The same name again answers the same attachment.
    pub async fn attach(&self, name: &str, ports: &[PortMapping]) -> Result<Attached> {
        plan::check_instance_name(name).map_err(Error::Invalid)?;
        let mut inner = self.inner.lock().await;
        if let Some(a) = inner.attached.get(name) {
            return Ok(a.clone());
        }
        if let Some((port, by)) = inner.port_taken(name, ports) {
            return Err(Error::PortTaken {
                port: port.to_string(),
                by,
            });
        }
        let address = inner
            .pool
            .allocate()
            .map_err(|_| Error::Exhausted(format!("{}/26", self.settings.net.subnet)))?;
        let a = Attached {
            name: name.to_owned(),
            address,
            netns: self.settings.netns_dir.join(name),
            host_if: plan::host_if(name),
            ports: ports.to_vec(),
        };
        if let Err(e) = self.plumb(&a).await {
            self.unplumb(&a).await;
            inner.pool.release(address);
            return Err(e);
        }
        if let Err(e) = self.records.put(name, &a).await {
            self.unplumb(&a).await;
            inner.pool.release(address);
            return Err(e.into());
        }
        inner.attached.insert(name.to_owned(), a.clone());
        if !a.ports.is_empty()
            && let Err(e) = self.publish(&inner)
        {
            inner.attached.remove(name);
            if !a.ports.is_empty() {
                self.publish(&inner)?;
            }
            let _ = self.records.delete(name).await;
            self.unplumb(&a).await;
            inner.pool.release(address);
            return Err(e);
        }
        self.metrics
            .set_sizes(inner.attached.len(), inner.translations.len());
        tracing::info!(instance = name, address = %a.address, "attached");
        Ok(a)
    }

    async fn plumb(&self, a: &Attached) -> Result<()> {
        netns::create(&a.netns)?;
        link::attach(&Attachment {
            worker_ns: None,
            instance_ns: a.netns.clone(),
            bridge: self.settings.bridge.clone(),
            host_if: a.host_if.clone(),
            address: a.address,
            gateway: self.settings.net.bridge(),
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
        inner.pool.release(a.address);
        inner.attached.remove(name);
        self.metrics
            .set_sizes(inner.attached.len(), inner.translations.len());
        tracing::info!(instance = name, "detached");
        Ok(())
    }

    pub async fn attached(&self) -> Vec<Attached> {
        self.inner.lock().await.attached.values().cloned().collect()
    }

    /// Replaces the translation table (one nftables transaction).
    pub async fn set_translations(&self, t: Translations) -> Result<()> {
        let started = Instant::now();
        let mut inner = self.inner.lock().await;
        crate::apply::translations(None, &self.settings.table, &t, &inner.published(), None)?;
        self.tables.put(TABLE_KEY, &t).await?;
        inner.translations = t;
        self.metrics.table_updated(
            started.elapsed(),
            inner.attached.len(),
            inner.translations.len(),
        );
        Ok(())
    }

    /// Applies the table again with the ports published now.
    fn publish(&self, inner: &Inner) -> Result<()> {
        crate::apply::translations(
            None,
            &self.settings.table,
            &inner.translations,
            &inner.published(),
            None,
        )?;
        Ok(())
    }

    /// Removes everything this net manager made: every instance, the table, the bridge (for
    /// `--remove-on-exit`). Best effort: it goes on past errors and logs them.
    pub async fn remove_all(&self) {
        let names: Vec<String> = self.inner.lock().await.attached.keys().cloned().collect();
        for name in names {
            if let Err(e) = self.detach(&name).await {
                tracing::error!(instance = %name, error = %e, "cannot detach");
            }
        }
        if let Err(e) = crate::apply::nft(None, &nft::render_removal(&self.settings.table)) {
            tracing::error!(error = %e, "cannot remove the nftables table");
        }
        let _ = self.tables.delete(TABLE_KEY).await;
        let bridge = self.settings.bridge.clone();
        if let Err(e) = link::in_netns(
            None,
            move |h| async move { link::delete(&h, &bridge).await },
        )
        .await
        {
            tracing::error!(error = %e, "cannot remove the bridge");
        }
    }
}
