//! The in-memory model (workers, services, instances, the report outbox), its load from the
//! store, and [`Change`]: the staging view every change is made through.
//!
//! A [`Change`] reads like the state as the change would leave it, but writes only to its own
//! overlays ([`Staged`]): it copies just the entries it touches, never the whole state. After
//! the store commit succeeds, [`State::apply`] moves the overlays in; on failure they are
//! dropped and memory is as it was.

use super::Effect;
use super::placement::PlacementIndex;
use crate::model::{Identity, Instance, Service, Worker, collections as col, instance_key};
use canopy_core::link::InstanceReport;
use canopy_core::{InstanceNumber, JobName, NodeId, ServiceId};
use canopy_proto::worker::NodeInformation;
use canopy_store::{Collection, SharedStore, Tx};
use serde::Serialize;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Extra time a restarted cluster gives known workers before the timeout applies.
const RESTART_GRACE: Duration = Duration::from_secs(7);

/// A moment as decisions see it: monotonic time for liveness, Unix seconds for what is
/// stored (back-off deadlines, timestamps).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub unix: f64,
}

/// One instance: its service and number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceKey {
    pub service: ServiceId,
    pub number: InstanceNumber,
}

impl InstanceKey {
    pub fn of(i: &Instance) -> Self {
        InstanceKey {
            service: i.service_id.clone(),
            number: i.number,
        }
    }

    pub fn of_report(r: &InstanceReport) -> Self {
        InstanceKey {
            service: r.service_id.clone(),
            number: r.instance,
        }
    }

    /// Its key in the store's `instances` collection.
    pub fn store_key(&self) -> String {
        instance_key(&self.service, self.number)
    }
}

/// A registered worker and what the cluster last heard from it (liveness is memory only).
#[derive(Debug, Clone)]
pub struct WorkerState {
    pub doc: Worker,
    pub info: NodeInformation,
    pub last_seen: Instant,
    pub online: bool,
    /// Instances placed on it since its last `information` report, which cannot show their
    /// load yet (the scheduler counts them, so a burst does not all land on one worker).
    pub unreported: u32,
}

impl WorkerState {
    /// How long the worker has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_seen)
    }

    /// Online and heard from within `timeout`.
    pub fn active(&self, timeout: Duration, now: Instant) -> bool {
        self.online && self.silent_for(now) <= timeout
    }
}

/// Everything the control plane knows, behind the cluster's one lock.
pub struct State {
    pub identity: Identity,
    pub workers: BTreeMap<NodeId, WorkerState>,
    /// Worker ids by host name.
    pub names: BTreeMap<String, NodeId>,
    pub services: BTreeMap<ServiceId, Service>,
    /// Service ids by job name (the name workers use).
    pub jobs: BTreeMap<JobName, ServiceId>,
    pub instances: BTreeMap<InstanceKey, Instance>,
    /// Reports not yet acknowledged by the root, by sequence number.
    pub outbox: BTreeMap<u64, InstanceReport>,
    pub outbox_by_instance: BTreeMap<InstanceKey, u64>,
    /// Derived from `instances` and `services`, for placement.
    pub placement: PlacementIndex,
}

impl State {
    /// Loads what the store holds. Known workers count as online with [`RESTART_GRACE`] to
    /// reconnect and report.
    pub async fn load(store: &SharedStore, now: Instant) -> canopy_store::Result<State> {
        let identity = Collection::<Identity>::new(store.clone(), col::IDENTITY)
            .get("cluster")
            .await?
            .unwrap_or_default();
        let mut st = State {
            identity,
            workers: BTreeMap::new(),
            names: BTreeMap::new(),
            services: BTreeMap::new(),
            jobs: BTreeMap::new(),
            instances: BTreeMap::new(),
            outbox: BTreeMap::new(),
            outbox_by_instance: BTreeMap::new(),
            placement: PlacementIndex::default(),
        };
        for (_, w) in Collection::<Worker>::new(store.clone(), col::WORKERS)
            .list()
            .await?
        {
            st.names.insert(w.name.clone(), w.id.clone());
            st.workers.insert(
                w.id.clone(),
                WorkerState {
                    doc: w,
                    info: NodeInformation::default(),
                    last_seen: now + RESTART_GRACE,
                    online: true,
                    unreported: 0,
                },
            );
        }
        for (_, s) in Collection::<Service>::new(store.clone(), col::SERVICES)
            .list()
            .await?
        {
            st.jobs.insert(s.spec.job_name.clone(), s.id.clone());
            st.services.insert(s.id.clone(), s);
        }
        for (_, i) in Collection::<Instance>::new(store.clone(), col::INSTANCES)
            .list()
            .await?
        {
            st.instances.insert(InstanceKey::of(&i), i);
        }
        for (_, r) in Collection::<InstanceReport>::new(store.clone(), col::REPORTS)
            .list()
            .await?
        {
            st.outbox_by_instance
                .insert(InstanceKey::of_report(&r), r.seq);
            st.outbox.insert(r.seq, r);
        }
        st.placement = PlacementIndex::of(&st.instances, &st.services);
        Ok(st)
    }

    /// A registered worker spoke: it is online as of `now`. `None` for an unknown node.
    /// Liveness is an observation, not a stored change: it is recorded at once.
    pub fn heard_from(&mut self, node: &NodeId, now: Instant) -> Option<&mut WorkerState> {
        let w = self.workers.get_mut(node)?;
        if !w.online {
            tracing::info!(node = %node, "worker is back");
        }
        w.online = true;
        w.last_seen = now;
        Some(w)
    }

    /// Moves a committed change into memory.
    pub fn apply(&mut self, w: Writes) {
        if let Some(identity) = w.identity {
            self.identity = identity;
        }
        apply(&mut self.workers, w.workers);
        apply(&mut self.names, w.names);
        // A service's spec is what its instances without one of their own hold: when services
        // change (rarely: a new service or revision) the index is built again.
        let services_changed = !w.services.is_empty();
        apply(&mut self.services, w.services);
        apply(&mut self.jobs, w.jobs);
        if !services_changed {
            for (k, i) in &w.instances {
                let service = i.as_ref().and_then(|i| self.services.get(&i.service_id));
                self.placement.set(k, i.as_ref(), service);
            }
        }
        apply(&mut self.instances, w.instances);
        if services_changed {
            self.placement = PlacementIndex::of(&self.instances, &self.services);
        }
        apply(&mut self.outbox, w.outbox);
        apply(&mut self.outbox_by_instance, w.outbox_by_instance);
    }
}

/// A change being staged: reads see the change, writes stay here until it is committed.
pub struct Change<'a> {
    pub now: Now,
    pub identity: Cow<'a, Identity>,
    pub workers: Staged<'a, NodeId, WorkerState>,
    pub names: Staged<'a, String, NodeId>,
    pub services: Staged<'a, ServiceId, Service>,
    pub jobs: Staged<'a, JobName, ServiceId>,
    pub instances: Staged<'a, InstanceKey, Instance>,
    pub outbox: Staged<'a, u64, InstanceReport>,
    pub outbox_by_instance: Staged<'a, InstanceKey, u64>,
    /// The state's placement index, as of before this change (see [`Staged::touched`]).
    pub placement: &'a PlacementIndex,
    /// The store writes and the effects that go out once they are durable.
    pub tx: Tx<Effect>,
}

/// The memory half of a committed [`Change`].
pub struct Writes {
    identity: Option<Identity>,
    workers: Overlay<NodeId, WorkerState>,
    names: Overlay<String, NodeId>,
    services: Overlay<ServiceId, Service>,
    jobs: Overlay<JobName, ServiceId>,
    instances: Overlay<InstanceKey, Instance>,
    outbox: Overlay<u64, InstanceReport>,
    outbox_by_instance: Overlay<InstanceKey, u64>,
}

impl<'a> Change<'a> {
    pub fn new(st: &'a State, now: Now) -> Self {
        Change {
            now,
            identity: Cow::Borrowed(&st.identity),
            workers: Staged::new(&st.workers),
            names: Staged::new(&st.names),
            services: Staged::new(&st.services),
            jobs: Staged::new(&st.jobs),
            instances: Staged::new(&st.instances),
            outbox: Staged::new(&st.outbox),
            outbox_by_instance: Staged::new(&st.outbox_by_instance),
            placement: &st.placement,
            tx: Tx::new(),
        }
    }

    /// Stages an MQTT message.
    pub fn publish<T: Serialize>(&mut self, topic: String, payload: &T) {
        match serde_json::to_vec(payload) {
            Ok(payload) => self
                .tx
                .effect(Effect::Publish(super::Publish { topic, payload })),
            Err(e) => tracing::error!(error = %e, "cannot encode an MQTT payload"),
        }
    }

    /// Splits into what goes to the store (with the effects) and what goes to memory after.
    pub fn finish(self) -> (Tx<Effect>, Writes) {
        let identity = match self.identity {
            Cow::Owned(i) => Some(i),
            Cow::Borrowed(_) => None,
        };
        let writes = Writes {
            identity,
            workers: self.workers.over,
            names: self.names.over,
            services: self.services.over,
            jobs: self.jobs.over,
            instances: self.instances.over,
            outbox: self.outbox.over,
            outbox_by_instance: self.outbox_by_instance.over,
        };
        (self.tx, writes)
    }
}

/// Staged entries: `Some` is the new value, `None` a removal.
type Overlay<K, V> = BTreeMap<K, Option<V>>;

fn apply<K: Ord, V>(base: &mut BTreeMap<K, V>, over: Overlay<K, V>) {
    for (k, v) in over {
        match v {
            Some(v) => base.insert(k, v),
            None => base.remove(&k),
        };
    }
}

/// A map as a change would leave it: the state's map plus the entries the change touched.
/// An entry is copied into the overlay on its first write only.
pub struct Staged<'a, K, V> {
    base: &'a BTreeMap<K, V>,
    over: Overlay<K, V>,
}

impl<'a, K: Ord + Clone, V: Clone> Staged<'a, K, V> {
    fn new(base: &'a BTreeMap<K, V>) -> Self {
        Staged {
            base,
            over: BTreeMap::new(),
        }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        match self.over.get(k) {
            Some(v) => v.as_ref(),
            None => self.base.get(k),
        }
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if !self.over.contains_key(k) {
            let v = self.base.get(k)?.clone();
            self.over.insert(k.clone(), Some(v));
        }
        self.over.get_mut(k)?.as_mut()
    }

    /// Sets `k`; returns the value it replaces.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let old = self.get(&k).cloned();
        self.over.insert(k, Some(v));
        old
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let old = self.get(k).cloned();
        if old.is_some() {
            self.over.insert(k.clone(), None);
        }
        old
    }

    /// Every entry in key order, as the change leaves it.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        let mut base = self.base.iter().peekable();
        let mut over = self.over.iter().peekable();
        std::iter::from_fn(move || {
            loop {
                let from_over = match (base.peek(), over.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => return base.next(),
                    (None, Some(_)) => over.next(),
                    (Some((b, _)), Some((o, _))) => match b.cmp(o) {
                        Ordering::Less => return base.next(),
                        Ordering::Greater => over.next(),
                        Ordering::Equal => {
                            base.next();
                            over.next()
                        }
                    },
                };
                if let Some((k, Some(v))) = from_over {
                    return Some((k, v));
                }
            }
        })
    }

    /// The entries this change wrote, as it leaves them (`None`: removed).
    pub fn touched(&self) -> impl Iterator<Item = (&K, Option<&V>)> + '_ {
        self.over.iter().map(|(k, v)| (k, v.as_ref()))
    }

    /// This change wrote `k`.
    pub fn touches(&self, k: &K) -> bool {
        self.over.contains_key(k)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_map_reads_its_own_writes_and_leaves_the_base_alone() {
        let base: BTreeMap<u32, &str> = [(1, "a"), (3, "c"), (5, "e")].into();
        let mut s = Staged::new(&base);
        s.insert(2, "b");
        *s.get_mut(&3).unwrap() = "C";
        assert_eq!(s.remove(&5), Some("e"));
        assert_eq!(s.remove(&9), None);
        assert_eq!(s.get(&5), None);
        let seen: Vec<(u32, &str)> = s.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(seen, [(1, "a"), (2, "b"), (3, "C")]);
        assert_eq!(base.get(&3), Some(&"c"), "the base is untouched");

        let mut applied = base.clone();
        apply(&mut applied, s.over);
        assert_eq!(applied, [(1, "a"), (2, "b"), (3, "C")].into());
    }
}
