//! The in-memory model of the root, its load from the store, and [`Change`]: a change staged
//! for the store and for memory at once, applied to memory only after its commit.

use super::{Delivery, Now, Result};
use crate::model::{
    Application, Cluster, Instance, Organization, PendingCommand, Service, ServiceEvent, Stamp,
    SubnetGrant, User, collections as col, outbox_key,
};
use canopy_api::FeedItem;
use canopy_core::addressing::{AddressError, Ipv4Pool, Taken};
use canopy_core::link::{ClusterReport, Command, CommandAction, NodeSummary};
use canopy_core::{ApplicationId, ClusterId, InstanceNumber, OrganizationId, ServiceId};
use canopy_store::{Collection, SharedStore, Tx};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// One instance of one service: the key of the `instances` collection and of every placement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    pub service: ServiceId,
    pub number: InstanceNumber,
}

impl InstanceKey {
    pub fn new(service: ServiceId, number: InstanceNumber) -> Self {
        InstanceKey { service, number }
    }

    /// The store key: zero-padded so the store lists a service's instances in number order.
    fn store_key(&self) -> String {
        format!("{}:{:010}", self.service, self.number.0)
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.service, self.number)
    }
}

/// A registered cluster with what the root knows of it beyond its stored document.
pub(super) struct ClusterEntry {
    pub doc: Cluster,
    /// The last report without its node list and usage (those are kept apart: the scheduler
    /// copies reports).
    pub report: Option<ClusterReport>,
    pub nodes: Vec<NodeSummary>,
    pub last_seen: Instant,
    pub last_report_unix: f64,
    /// Instances given to it since its last report (which cannot show them yet).
    pub unreported: u32,
}

impl ClusterEntry {
    pub fn new(doc: Cluster, now: Instant) -> Self {
        ClusterEntry {
            doc,
            report: None,
            nodes: Vec::new(),
            last_seen: now,
            last_report_unix: 0.0,
            unreported: 0,
        }
    }

    /// Has reported, and not longer ago than `grace`.
    pub fn active(&self, grace: Duration, now: Instant) -> bool {
        self.report.is_some() && !self.gone(grace, now)
    }

    /// Silent for longer than `grace`: its instances are taken back.
    pub fn gone(&self, grace: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen) > grace
    }
}

/// Everything the root holds in memory; changed only through [`State::apply`], except what is
/// never stored (liveness, last reports, live figures: see [`super`]).
pub(super) struct State {
    /// By user name.
    pub users: BTreeMap<String, User>,
    /// By organisation id.
    pub orgs: BTreeMap<OrganizationId, Organization>,
    pub apps: BTreeMap<ApplicationId, Application>,
    pub services: BTreeMap<ServiceId, Service>,
    pub clusters: BTreeMap<ClusterId, ClusterEntry>,
    pub outbox: BTreeMap<u64, PendingCommand>,
    pub next_command: u64,
    pub pool: Ipv4Pool,
    /// Worker subnets given out, by `<cluster>/<node>` ([`SubnetGrant::key`]).
    pub subnets: BTreeMap<String, SubnetGrant>,
    pub subnet_pool: Ipv4Pool,
    /// The latest [`EVENTS_KEPT`] events of each service, oldest first.
    pub events: BTreeMap<ServiceId, Vec<ServiceEvent>>,
    /// The last [`Stamp`] given to a changed instance.
    stamps: u64,
}

/// A new event (its `seq` is given by [`Change::record`]).
pub fn event(
    at: f64,
    instance: Option<InstanceNumber>,
    what: &str,
    why: impl Into<String>,
    outcome: impl Into<String>,
) -> ServiceEvent {
    ServiceEvent {
        seq: 0,
        at,
        instance: instance.map(|n| n.0),
        what: what.into(),
        why: why.into(),
        outcome: outcome.into(),
    }
}

/// How many events of one service are kept (older ones are deleted as new ones come).
pub const EVENTS_KEPT: usize = 100;

/// An event as stored (collection `events`, keyed `<service>:<seq>`).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    service_id: String,
    #[serde(flatten)]
    event: ServiceEvent,
}

fn event_key(service: &ServiceId, seq: u64) -> String {
    format!("{service}:{seq:020}")
}

/// An instance as stored: the instance and the service it belongs to.
#[derive(Serialize, Deserialize)]
struct StoredInstance {
    /// Text, not [`ServiceId`]: one bad document is skipped at load instead of failing it.
    service_id: String,
    #[serde(flatten)]
    instance: Instance,
}

impl State {
    /// The organisation with id `id` (text from a token or a path), if there is one.
    pub fn org(&self, id: &str) -> Option<&Organization> {
        OrganizationId::parse(id)
            .ok()
            .and_then(|id| self.orgs.get(&id))
    }

    /// Reads every collection; `now` starts every cluster's grace period and seeds the
    /// command ids.
    pub async fn load(store: &SharedStore, now: Now) -> Result<State> {
        let mut st = State {
            users: BTreeMap::new(),
            orgs: BTreeMap::new(),
            apps: BTreeMap::new(),
            services: BTreeMap::new(),
            clusters: BTreeMap::new(),
            outbox: BTreeMap::new(),
            next_command: 0,
            pool: Ipv4Pool::service_addresses(),
            subnets: BTreeMap::new(),
            subnet_pool: Ipv4Pool::worker_subnets(),
            events: BTreeMap::new(),
            stamps: 0,
        };
        for (key, g) in Collection::<SubnetGrant>::new(store.clone(), col::SUBNETS)
            .list()
            .await?
        {
            if st.subnet_pool.reserve(g.subnet).is_err() {
                tracing::warn!(key, subnet = %g.subnet, "stored worker subnet outside the plan or given twice; ignored");
                continue;
            }
            st.subnets.insert(key, g);
        }
        for (_, u) in Collection::<User>::new(store.clone(), col::USERS)
            .list()
            .await?
        {
            st.users.insert(u.name.clone(), u);
        }
        for (_, o) in Collection::<Organization>::new(store.clone(), col::ORGANIZATIONS)
            .list()
            .await?
        {
            match OrganizationId::parse(o.id.as_str()) {
                Ok(id) => _ = st.orgs.insert(id, o),
                Err(e) => {
                    tracing::warn!(organization = %o.id, error = %e, "stored organization with a bad id skipped")
                }
            }
        }
        for (key, a) in Collection::<Application>::new(store.clone(), col::APPLICATIONS)
            .list()
            .await?
        {
            match ApplicationId::parse(a.id.as_str()) {
                Ok(id) => _ = st.apps.insert(id, a),
                Err(e) => tracing::warn!(key, error = %e, "application with a bad id ignored"),
            }
        }
        for (key, s) in Collection::<Service>::new(store.clone(), col::SERVICES)
            .list()
            .await?
        {
            let Ok(id) = ServiceId::parse(s.id.as_str()) else {
                tracing::warn!(key, "service with a bad id ignored");
                continue;
            };
            // A pinned or allocated service address that no longer fits the pool is kept anyway.
            let _ = st.pool.reserve(s.rr_ip);
            if let Some(ip) = s.spec.closest_ip {
                let _ = st.pool.reserve(ip);
            }
            st.services.insert(id, s);
        }
        for (key, i) in Collection::<StoredInstance>::new(store.clone(), col::INSTANCES)
            .list()
            .await?
        {
            let service = ServiceId::parse(i.service_id.as_str()).ok();
            match service.and_then(|id| st.services.get_mut(&id)) {
                Some(s) => {
                    let _ = st.pool.reserve(i.instance.ip);
                    s.instances.insert(i.instance.number, i.instance);
                }
                None => tracing::warn!(key, "instance of an unknown service ignored"),
            }
        }
        // Listed in key order: each service's events oldest first.
        for (key, e) in Collection::<StoredEvent>::new(store.clone(), col::EVENTS)
            .list()
            .await?
        {
            match ServiceId::parse(e.service_id.as_str()) {
                Ok(id) if st.services.contains_key(&id) => {
                    st.events.entry(id).or_default().push(e.event);
                }
                _ => tracing::warn!(key, "event of an unknown service ignored"),
            }
        }
        for list in st.events.values_mut() {
            let extra = list.len().saturating_sub(EVENTS_KEPT);
            list.drain(..extra);
        }
        for (_, c) in Collection::<Cluster>::new(store.clone(), col::CLUSTERS)
            .list()
            .await?
        {
            // A restarted root gives every cluster the full grace period to come back.
            st.clusters
                .insert(c.id.clone(), ClusterEntry::new(c, now.at));
        }
        for (_, p) in Collection::<PendingCommand>::new(store.clone(), col::OUTBOX)
            .list()
            .await?
        {
            st.outbox.insert(p.command.id, p);
        }
        let clock_micros = (now.unix * 1e6) as u64;
        st.next_command = st
            .outbox
            .keys()
            .next_back()
            .map_or(0, |id| id + 1)
            .max(clock_micros);
        Ok(st)
    }

    /// A stamp for instances changed now: larger than every one given before.
    pub fn stamp(&mut self) -> Stamp {
        self.stamps += 1;
        Stamp(self.stamps)
    }

    pub fn instance(&self, key: &InstanceKey) -> Option<&Instance> {
        self.services.get(&key.service)?.instances.get(&key.number)
    }

    /// Applies a committed change.
    pub fn apply(&mut self, apply: Apply) {
        for op in apply.ops {
            match op {
                Op::User(name, Some(u)) => _ = self.users.insert(name, u),
                Op::User(name, None) => _ = self.users.remove(&name),
                Op::Org(id, Some(o)) => _ = self.orgs.insert(id, o),
                Op::Org(id, None) => _ = self.orgs.remove(&id),
                Op::App(id, Some(a)) => _ = self.apps.insert(id, a),
                Op::App(id, None) => _ = self.apps.remove(&id),
                Op::Service(id, Some(mut s)) => {
                    if let Some(old) = self.services.get_mut(&id) {
                        s.instances = std::mem::take(&mut old.instances);
                    }
                    self.services.insert(id, *s);
                }
                Op::Service(id, None) => {
                    self.services.remove(&id);
                    self.events.remove(&id);
                }
                Op::Event(id, e) => {
                    let list = self.events.entry(id).or_default();
                    list.push(e);
                    let extra = list.len().saturating_sub(EVENTS_KEPT);
                    list.drain(..extra);
                }
                Op::Instance(key, i) => {
                    let stamp = self.stamp();
                    if let Some(s) = self.services.get_mut(&key.service) {
                        match i {
                            Some(mut i) => {
                                i.stamp = stamp;
                                let to = i.cluster_id.clone();
                                let old = s.instances.insert(key.number, i);
                                let moved = old.is_none_or(|o| o.cluster_id != to);
                                if let Some(e) = to.and_then(|c| self.clusters.get_mut(&c))
                                    && moved
                                {
                                    e.unreported += 1;
                                }
                            }
                            None => _ = s.instances.remove(&key.number),
                        }
                    }
                }
                Op::Cluster(doc, now) => match self.clusters.get_mut(&doc.id) {
                    Some(e) => e.doc = doc,
                    None => {
                        _ = self
                            .clusters
                            .insert(doc.id.clone(), ClusterEntry::new(doc, now))
                    }
                },
                Op::Outbox(id, Some(p)) => _ = self.outbox.insert(id, p),
                Op::Outbox(id, None) => _ = self.outbox.remove(&id),
                Op::Subnet(key, Some(g)) => {
                    let _ = self.subnet_pool.reserve(g.subnet);
                    self.subnets.insert(key, g);
                }
                Op::Subnet(key, None) => {
                    if let Some(g) = self.subnets.remove(&key) {
                        self.subnet_pool.release(g.subnet);
                    }
                }
            }
        }
        self.next_command = apply.next_command;
        self.pool.apply(apply.taken);
        for ip in apply.released {
            self.pool.release(ip);
        }
    }
}

/// One change to memory, the twin of one staged store write.
enum Op {
    User(String, Option<User>),
    Org(OrganizationId, Option<Organization>),
    App(ApplicationId, Option<Application>),
    /// The service document; the instances held in memory are kept.
    Service(ServiceId, Option<Box<Service>>),
    Instance(InstanceKey, Option<Instance>),
    /// A cluster document; `Instant` starts the grace period of a new cluster.
    Cluster(Cluster, Instant),
    Outbox(u64, Option<PendingCommand>),
    Subnet(String, Option<SubnetGrant>),
    Event(ServiceId, ServiceEvent),
}

/// The memory half of a [`Change`], applied by [`State::apply`] after the commit.
pub(super) struct Apply {
    ops: Vec<Op>,
    next_command: u64,
    /// Addresses taken from the state's pool, added to it when applied.
    taken: Taken,
    released: Vec<Ipv4Addr>,
}

impl Apply {
    /// The change as feed items (unnumbered), read against `st` before it is applied: a
    /// deleted object's owner is still there, a new instance's service may be in this change.
    pub fn feed(&self, st: &State) -> Vec<FeedItem> {
        let action = |present: bool| if present { "put" } else { "delete" };
        // A service's owner and application: staged in this change, or in `st` (one map of
        // the staged ones: a commit can hold thousands of instances).
        let staged: BTreeMap<&ServiceId, &Service> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Service(id, Some(s)) => Some((id, &**s)),
                _ => None,
            })
            .collect();
        let service_of = |id: &ServiceId| -> Option<(String, String)> {
            staged
                .get(id)
                .copied()
                .or_else(|| st.services.get(id))
                .map(|s| (s.owner.clone(), s.application_id.clone()))
        };
        let mut out = Vec::new();
        for op in &self.ops {
            let item = match op {
                Op::App(id, a) => {
                    let mut f = FeedItem::new("application", action(a.is_some()), id.to_string());
                    let doc = a.as_ref().or_else(|| st.apps.get(id));
                    f.owner = doc.map(|a| a.owner.clone());
                    f.name = doc.map(|a| a.name.clone()).unwrap_or_default();
                    f.application_id = Some(id.to_string());
                    f
                }
                Op::Service(id, s) => {
                    let doc = s.as_deref().or_else(|| st.services.get(id));
                    let (owner, app) = doc
                        .map(|d| (d.owner.clone(), d.application_id.clone()))
                        .unzip();
                    // A deleted service's instances go with it.
                    if s.is_none() {
                        for n in doc.into_iter().flat_map(|d| d.instances.keys()) {
                            let mut f = FeedItem::new("instance", "delete", id.to_string());
                            (f.owner, f.application_id) = (owner.clone(), app.clone());
                            f.service_id = Some(id.to_string());
                            f.instance = Some(n.0);
                            out.push(f);
                        }
                    }
                    let mut f = FeedItem::new("service", action(s.is_some()), id.to_string());
                    (f.owner, f.application_id) = (owner, app);
                    f.name = doc.map(|s| s.spec.job_name.to_string()).unwrap_or_default();
                    f.service_id = Some(id.to_string());
                    f
                }
                Op::Instance(key, Some(i))
                    if st.instance(key).is_some_and(|old| {
                        (&old.status, &old.detail, &old.cluster_id, &old.node_id)
                            == (&i.status, &i.detail, &i.cluster_id, &i.node_id)
                    }) =>
                {
                    // A report with new usage figures only: not a change worth a message.
                    continue;
                }
                Op::Instance(key, i) => {
                    let mut f =
                        FeedItem::new("instance", action(i.is_some()), key.service.to_string());
                    let (owner, app) = service_of(&key.service).unzip();
                    (f.owner, f.application_id) = (owner, app);
                    f.service_id = Some(key.service.to_string());
                    f.instance = Some(key.number.0);
                    f.status = i.as_ref().map(|i| i.status.to_string());
                    f.detail = i.as_ref().map(|i| i.detail.clone());
                    f
                }
                Op::Cluster(doc, _) => {
                    let mut f = FeedItem::new("cluster", "put", doc.id.to_string());
                    f.name = doc.name.clone();
                    f
                }
                _ => continue,
            };
            out.push(item);
        }
        out
    }
}

/// A change being staged: every method stages a store write (or a command) in the [`Tx`] and
/// the same change for memory. Nothing in [`State`] changes until [`super::Root::commit`].
pub(super) struct Change {
    tx: Tx<Delivery>,
    apply: Apply,
    /// Events staged per service: (the next sequence number, how many are staged).
    events: BTreeMap<ServiceId, (u64, usize)>,
}

impl Change {
    /// Starts a change of `st` (command ids continue from its counter).
    pub fn new(st: &State) -> Change {
        Change {
            tx: Tx::new(),
            apply: Apply {
                ops: Vec::new(),
                next_command: st.next_command,
                taken: Taken::default(),
                released: Vec::new(),
            },
            events: BTreeMap::new(),
        }
    }

    /// Records `event` on `service`, numbered after the ones in `st` and those staged (its
    /// `seq` is set here), and deletes the oldest kept one when the service would hold more
    /// than [`EVENTS_KEPT`].
    pub fn record(
        &mut self,
        st: &State,
        service: &ServiceId,
        mut event: ServiceEvent,
    ) -> Result<()> {
        let kept = st.events.get(service).map_or(&[][..], Vec::as_slice);
        let (next, staged) = self
            .events
            .entry(service.clone())
            .or_insert_with(|| (kept.last().map_or(0, |e| e.seq + 1), 0));
        event.seq = *next;
        *next += 1;
        *staged += 1;
        if let Some(oldest) = (kept.len() + *staged)
            .checked_sub(EVENTS_KEPT + 1)
            .and_then(|i| kept.get(i))
        {
            self.tx.delete(col::EVENTS, &event_key(service, oldest.seq));
        }
        let stored = StoredEvent {
            service_id: service.to_string(),
            event,
        };
        self.tx
            .put(col::EVENTS, &event_key(service, stored.event.seq), &stored)?;
        self.apply
            .ops
            .push(Op::Event(service.clone(), stored.event));
        Ok(())
    }

    pub fn split(self) -> (Tx<Delivery>, Apply) {
        (self.tx, self.apply)
    }

    pub fn put_user(&mut self, u: User) -> Result<()> {
        self.tx.put(col::USERS, &u.name, &u)?;
        self.apply.ops.push(Op::User(u.name.clone(), Some(u)));
        Ok(())
    }

    pub fn delete_user(&mut self, name: &str) {
        self.tx.delete(col::USERS, name);
        self.apply.ops.push(Op::User(name.to_owned(), None));
    }

    /// Stages organisation `o` under its id (which must be one: the root makes them).
    pub fn put_org(&mut self, o: Organization) -> Result<()> {
        let id = OrganizationId::parse(o.id.as_str()).map_err(|e| {
            canopy_store::StoreError::Backend(format!("organization id {:?}: {e}", o.id))
        })?;
        self.tx.put(col::ORGANIZATIONS, id.as_str(), &o)?;
        self.apply.ops.push(Op::Org(id, Some(o)));
        Ok(())
    }

    pub fn delete_org(&mut self, id: &OrganizationId) {
        self.tx.delete(col::ORGANIZATIONS, id.as_str());
        self.apply.ops.push(Op::Org(id.clone(), None));
    }

    pub fn put_app(&mut self, id: ApplicationId, a: Application) -> Result<()> {
        self.tx.put(col::APPLICATIONS, id.as_str(), &a)?;
        self.apply.ops.push(Op::App(id, Some(a)));
        Ok(())
    }

    pub fn delete_app(&mut self, id: &ApplicationId) {
        self.tx.delete(col::APPLICATIONS, id.as_str());
        self.apply.ops.push(Op::App(id.clone(), None));
    }

    /// Stages the service document `s` (its `instances` are not part of it: memory keeps its own).
    pub fn put_service(&mut self, id: ServiceId, s: Service) -> Result<()> {
        self.tx.put(col::SERVICES, id.as_str(), &s)?;
        self.apply.ops.push(Op::Service(id, Some(Box::new(s))));
        Ok(())
    }

    /// Removes a service with its instances and events, releasing their addresses. The
    /// caller undeploys.
    pub fn delete_service(&mut self, st: &State, id: &ServiceId, s: &Service) {
        self.tx.delete(col::SERVICES, id.as_str());
        for e in st.events.get(id).into_iter().flatten() {
            self.tx.delete(col::EVENTS, &event_key(id, e.seq));
        }
        self.apply.released.push(s.rr_ip);
        self.apply.released.extend(s.spec.closest_ip);
        for i in s.instances.values() {
            let key = InstanceKey::new(id.clone(), i.number);
            self.tx.delete(col::INSTANCES, &key.store_key());
            self.apply.released.push(i.ip);
        }
        self.apply.ops.push(Op::Service(id.clone(), None));
    }

    pub fn put_instance(&mut self, key: InstanceKey, i: Instance) -> Result<()> {
        let stored = StoredInstance {
            service_id: key.service.to_string(),
            instance: i,
        };
        self.tx.put(col::INSTANCES, &key.store_key(), &stored)?;
        self.apply
            .ops
            .push(Op::Instance(key, Some(stored.instance)));
        Ok(())
    }

    /// Removes an instance, releasing its address. The caller undeploys.
    pub fn delete_instance(&mut self, key: InstanceKey, i: &Instance) {
        self.tx.delete(col::INSTANCES, &key.store_key());
        self.apply.released.push(i.ip);
        self.apply.ops.push(Op::Instance(key, None));
    }

    /// Stages a cluster document; a new cluster's grace period starts at `now`.
    pub fn put_cluster(&mut self, doc: Cluster, now: Instant) -> Result<()> {
        self.tx.put(col::CLUSTERS, doc.id.as_str(), &doc)?;
        self.apply.ops.push(Op::Cluster(doc, now));
        Ok(())
    }

    /// Queues a command for a cluster: stored in the outbox, sent after the commit.
    pub fn send(&mut self, cluster: ClusterId, action: CommandAction) -> Result<()> {
        let id = self.apply.next_command;
        self.apply.next_command += 1;
        let p = PendingCommand {
            cluster_id: cluster.clone(),
            command: Command { id, action },
        };
        self.tx.put(col::OUTBOX, &outbox_key(id), &p)?;
        self.tx.effect((cluster, p.command.clone()));
        self.apply.ops.push(Op::Outbox(id, Some(p)));
        Ok(())
    }

    /// Queues an undeploy of one instance (or, with `None`, every instance) of a service.
    pub fn undeploy(
        &mut self,
        cluster: ClusterId,
        service: &ServiceId,
        instance: Option<InstanceNumber>,
    ) -> Result<()> {
        let action = CommandAction::Undeploy {
            service_id: service.clone(),
            instance,
        };
        self.send(cluster, action)
    }

    /// A command the cluster acknowledged leaves the outbox.
    pub fn acknowledged(&mut self, id: u64) {
        self.tx.delete(col::OUTBOX, &outbox_key(id));
        self.apply.ops.push(Op::Outbox(id, None));
    }

    /// Records worker subnet `g` (its address taken from the plan when applied).
    pub fn put_subnet(&mut self, g: SubnetGrant) -> Result<()> {
        let key = SubnetGrant::key(&g.cluster_id, &g.node_id);
        self.tx.put(col::SUBNETS, &key, &g)?;
        self.apply.ops.push(Op::Subnet(key, Some(g)));
        Ok(())
    }

    /// Returns a worker subnet to the plan.
    pub fn delete_subnet(&mut self, key: &str) {
        self.tx.delete(col::SUBNETS, key);
        self.apply.ops.push(Op::Subnet(key.to_owned(), None));
    }

    /// An address from `st`'s pool, free there and in this change.
    pub fn allocate(&mut self, st: &State) -> Result<Ipv4Addr, AddressError> {
        st.pool.allocate_in(&mut self.apply.taken)
    }

    pub fn reserve(&mut self, st: &State, ip: Ipv4Addr) -> Result<(), AddressError> {
        st.pool.reserve_in(&mut self.apply.taken, ip)
    }
}
