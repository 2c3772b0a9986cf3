//! The cluster's control plane: workers, services, instances and the reports owed to the root,
//! in memory behind one lock and written through to the store before anything is
//! acknowledged. It runs whether or not the root is reachable (autonomy): placement, failure
//! detection and restarts happen here; the root link only carries commands in and reports out.
//!
//! Every instance change goes through [`crate::lifecycle::transition`]. Every status change
//! makes a report with the next sequence number; reports stay (in memory and in the store)
//! until the root acknowledges them, and only the newest report per instance is kept.

use crate::lifecycle::{self, Event, Next};
use crate::metrics::Metrics;
use crate::model::{
    Identity, Instance, Service, Worker, collections as col, instance_key, new_node_id, report_key,
    sha256_hex, unix_now,
};
use crate::scheduler::{self, WorkerCandidate};
use async_trait::async_trait;
use canopy_core::link::{
    ClusterReport, Command, CommandAction, InstanceReport, InstanceUsage, NodeSummary,
    ResourceAggregate,
};
use canopy_core::{
    Architecture, ClusterId, InstanceNumber, InstanceStatus, NodeId, Resources, ServiceId,
    StatusClass,
};
use canopy_proto::worker::{
    DeleteMessage, DeployMessage, JobStatus, NodeInformation, NodeOffer, NodeRegistration,
    ResourcesReport, topics,
};
use canopy_store::{SharedStore, StoreError};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, mpsc};

/// Grants a worker its MQTT credentials at the broker in use.
#[async_trait]
pub trait NodeAuth: Send + Sync {
    async fn allow(&self, node: &NodeId, password: &str) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("the MQTT broker refused the worker's credentials: {0}")]
    Broker(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A worker with no message for this long is lost (a backstop to its last will).
    pub worker_timeout: Duration,
    /// How often [`Cluster::tick`] runs.
    pub tick: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            worker_timeout: Duration::from_secs(3),
            tick: Duration::from_millis(200),
        }
    }
}

/// Extra time a restarted cluster gives known workers before the timeout applies.
const RESTART_GRACE: Duration = Duration::from_secs(7);

/// An MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

struct WorkerState {
    doc: Worker,
    info: NodeInformation,
    last_seen: Instant,
    online: bool,
}

impl WorkerState {
    fn active(&self, timeout: Duration) -> bool {
        self.online && self.last_seen.elapsed() <= timeout
    }
}

type Key = (ServiceId, u32);

struct State {
    identity: Identity,
    workers: BTreeMap<NodeId, WorkerState>,
    names: HashMap<String, NodeId>,
    services: BTreeMap<ServiceId, Service>,
    jobs: HashMap<String, ServiceId>,
    instances: BTreeMap<Key, Instance>,
    /// Reports not yet acknowledged by the root, by sequence number.
    outbox: BTreeMap<u64, InstanceReport>,
    outbox_by_instance: HashMap<Key, u64>,
}

impl State {
    /// A registered worker spoke: it is online as of now. `None` for an unknown node.
    fn heard_from(&mut self, node: &NodeId) -> Option<&mut WorkerState> {
        let w = self.workers.get_mut(node)?;
        if !w.online {
            tracing::info!(node = %node, "worker is back");
        }
        w.online = true;
        w.last_seen = Instant::now();
        Some(w)
    }
}

#[derive(Default)]
struct Tx {
    puts: Vec<(&'static str, String, serde_json::Value)>,
    deletes: Vec<(&'static str, String)>,
    publishes: Vec<Publish>,
    reported: bool,
}

impl Tx {
    fn put<T: Serialize>(&mut self, collection: &'static str, key: &str, value: &T) -> Result<()> {
        let doc = canopy_store::encode(collection, key, value)?;
        self.puts.push((collection, key.to_owned(), doc));
        Ok(())
    }

    fn publish<T: Serialize>(&mut self, topic: String, payload: &T) {
        match serde_json::to_vec(payload) {
            Ok(payload) => self.publishes.push(Publish { topic, payload }),
            Err(e) => tracing::error!(error = %e, "cannot encode an MQTT payload"),
        }
    }
}

/// A worker as shown in status views.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    pub doc: Worker,
    pub active: bool,
    pub info: NodeInformation,
}

/// The cluster control plane.
pub struct Cluster {
    store: SharedStore,
    state: Mutex<State>,
    settings: Settings,
    outgoing: mpsc::UnboundedSender<Publish>,
    reports_ready: Notify,
    auth: Arc<dyn NodeAuth>,
    pub metrics: Metrics,
}

fn key(i: &Instance) -> Key {
    (i.service_id.clone(), i.number.0)
}

impl Cluster {
    /// Loads the state from `store`. MQTT messages to publish come out of the returned channel.
    pub async fn open(
        store: SharedStore,
        settings: Settings,
        auth: Arc<dyn NodeAuth>,
    ) -> Result<(Arc<Cluster>, mpsc::UnboundedReceiver<Publish>)> {
        let identity = canopy_store::Collection::<Identity>::new(store.clone(), col::IDENTITY)
            .get("cluster")
            .await?
            .unwrap_or_default();
        let mut st = State {
            identity,
            workers: BTreeMap::new(),
            names: HashMap::new(),
            services: BTreeMap::new(),
            jobs: HashMap::new(),
            instances: BTreeMap::new(),
            outbox: BTreeMap::new(),
            outbox_by_instance: HashMap::new(),
        };
        let now = Instant::now();
        for (_, w) in canopy_store::Collection::<Worker>::new(store.clone(), col::WORKERS)
            .list()
            .await?
        {
            st.names.insert(w.name.clone(), w.id.clone());
            st.workers.insert(
                w.id.clone(),
                WorkerState {
                    doc: w,
                    info: NodeInformation::default(),
                    // A restarted cluster gives every worker time to reconnect and report.
                    last_seen: now + RESTART_GRACE,
                    online: true,
                },
            );
        }
        for (_, s) in canopy_store::Collection::<Service>::new(store.clone(), col::SERVICES)
            .list()
            .await?
        {
            st.jobs.insert(s.spec.job_name.to_string(), s.id.clone());
            st.services.insert(s.id.clone(), s);
        }
        for (_, i) in canopy_store::Collection::<Instance>::new(store.clone(), col::INSTANCES)
            .list()
            .await?
        {
            st.instances.insert(key(&i), i);
        }
        for (_, r) in canopy_store::Collection::<InstanceReport>::new(store.clone(), col::REPORTS)
            .list()
            .await?
        {
            st.outbox_by_instance
                .insert((r.service_id.clone(), r.instance.0), r.seq);
            st.outbox.insert(r.seq, r);
        }
        let (outgoing, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            store,
            state: Mutex::new(st),
            settings,
            outgoing,
            reports_ready: Notify::new(),
            auth,
            metrics: Metrics::default(),
        });
        Ok((cluster, rx))
    }

    async fn commit(&self, tx: Tx) -> Result<()> {
        for (collection, key, doc) in &tx.puts {
            self.store.put(collection, key, doc).await?;
        }
        for (collection, key) in &tx.deletes {
            self.store.delete(collection, key).await?;
        }
        for p in tx.publishes {
            self.metrics.mqtt_message("out", topic_kind(&p.topic));
            let _ = self.outgoing.send(p);
        }
        if tx.reported {
            self.reports_ready.notify_one();
        }
        Ok(())
    }

    // ------------------------------------------------------------------ identity

    pub async fn cluster_id(&self) -> Option<ClusterId> {
        self.state.lock().await.identity.cluster_id.clone()
    }

    pub async fn set_cluster_id(&self, id: ClusterId) -> Result<()> {
        let mut st = self.state.lock().await;
        if st.identity.cluster_id.as_ref() == Some(&id) {
            return Ok(());
        }
        st.identity.cluster_id = Some(id);
        let mut tx = Tx::default();
        tx.put(col::IDENTITY, "cluster", &st.identity)?;
        self.commit(tx).await
    }

    // ------------------------------------------------------------------ workers

    /// Registers a worker (the join token was checked by the caller). The same host name keeps
    /// its id; every registration issues a new MQTT password. Returns the id and the password.
    pub async fn register_worker(&self, reg: &NodeRegistration) -> Result<(NodeId, String)> {
        let offer: NodeOffer = reg.offer().map_err(|e| Error::Invalid {
            field: e.field,
            message: e.reason,
        })?;
        let password = canopy_store::secrets::random_token(16);
        let mut st = self.state.lock().await;
        let id = st.names.get(&reg.host).cloned().unwrap_or_else(new_node_id);
        self.auth
            .allow(&id, &password)
            .await
            .map_err(Error::Broker)?;
        let doc = Worker {
            id: id.clone(),
            name: reg.host.clone(),
            ip: reg.ip.clone(),
            architecture: offer.architecture,
            virtualizations: offer.virtualizations,
            capacity: offer.capacity,
            supported_addons: reg.supported_addons.clone(),
            mqtt_password_sha256: sha256_hex(&password),
            registered_at: unix_now(),
        };
        let mut tx = Tx::default();
        tx.put(col::WORKERS, id.as_str(), &doc)?;
        self.commit(tx).await?;
        st.names.insert(doc.name.clone(), id.clone());
        let info = NodeInformation {
            ip: reg.ip.clone(),
            cpu_percent: reg.cpu_percent,
            vcpus: reg.vcpus,
            memory_percent: reg.memory_percent,
            memory: reg.memory,
            vgpus: reg.vgpus,
            gpu_usage: 0.0,
        };
        st.workers.insert(
            id.clone(),
            WorkerState {
                doc,
                info,
                last_seen: Instant::now(),
                online: true,
            },
        );
        tracing::info!(node = %id, host = %reg.host, "worker registered");
        Ok((id, password))
    }

    /// Stored MQTT password hashes of every worker (for an embedded broker's auth).
    pub async fn worker_password_hashes(&self) -> Vec<(NodeId, String)> {
        let st = self.state.lock().await;
        st.workers
            .values()
            .map(|w| (w.doc.id.clone(), w.doc.mqtt_password_sha256.clone()))
            .collect()
    }

    pub async fn workers(&self) -> Vec<WorkerView> {
        let st = self.state.lock().await;
        st.workers
            .values()
            .map(|w| WorkerView {
                doc: w.doc.clone(),
                active: w.active(self.settings.worker_timeout),
                info: w.info.clone(),
            })
            .collect()
    }

    pub async fn instances(&self) -> Vec<Instance> {
        self.state
            .lock()
            .await
            .instances
            .values()
            .cloned()
            .collect()
    }

    /// `nodes/<id>/information`: the worker is alive and this loaded.
    pub async fn on_information(&self, node: &NodeId, info: NodeInformation) {
        self.metrics.mqtt_message("in", "information");
        let mut st = self.state.lock().await;
        let Some(w) = st.heard_from(node) else {
            tracing::debug!(node = %node, "information from an unregistered node dropped");
            return;
        };
        w.info = info;
    }

    /// `nodes/<id>/will`: the worker's connection died.
    pub async fn on_will(&self, node: &NodeId) {
        self.metrics.mqtt_message("in", "will");
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        if let Some(w) = st.workers.get(node)
            && w.online
        {
            let since = w.last_seen.elapsed();
            self.lose_worker(&mut st, &mut tx, node, "its connection died", since);
            self.place_waiting(&mut st, &mut tx);
        }
        self.finish(tx).await;
    }

    /// `nodes/<id>/job`: an instance on the worker changed state.
    pub async fn on_job_status(&self, node: &NodeId, msg: JobStatus) {
        self.metrics.mqtt_message("in", "job");
        let (job, n, status) = match msg.parse() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "bad job status dropped");
                return;
            }
        };
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        if st.heard_from(node).is_none() {
            return;
        }
        let Some(k) = self.owned_by(&mut st, &mut tx, node, &job.to_string(), n, status) else {
            self.finish(tx).await;
            return;
        };
        if let Err(e) = self.apply(
            &mut st,
            &mut tx,
            &k,
            Event::Reported(status),
            Some(msg.status_detail),
        ) {
            tracing::error!(error = %e, "cannot record a job status");
        }
        self.place_waiting(&mut st, &mut tx);
        self.finish(tx).await;
    }

    /// `nodes/<id>/jobs/resources`: the worker's running instances and their use.
    pub async fn on_resources(&self, node: &NodeId, report: ResourcesReport) {
        self.metrics.mqtt_message("in", "resources");
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        if st.heard_from(node).is_none() {
            return;
        }
        for r in report.services {
            let n = InstanceNumber(r.instance);
            let Some(k) = self.owned_by(
                &mut st,
                &mut tx,
                node,
                &r.job_name,
                n,
                InstanceStatus::Running,
            ) else {
                continue;
            };
            if let Some(i) = st.instances.get_mut(&k) {
                i.cpu_percent = r.cpu_percent;
                i.memory_mb = r.memory;
                i.logs = tail(&r.logs, 1024);
            }
            // A resource report means the instance runs (Oakestra's rule).
            let running = st.instances.get(&k).map(|i| i.status);
            if matches!(
                running,
                Some(
                    InstanceStatus::NodeScheduled
                        | InstanceStatus::Creating
                        | InstanceStatus::Created
                )
            ) && let Err(e) = self.apply(
                &mut st,
                &mut tx,
                &k,
                Event::Reported(InstanceStatus::Running),
                None,
            ) {
                tracing::error!(error = %e, "cannot record a resource report");
            }
        }
        self.finish(tx).await;
    }

    /// The instance a worker reports on, if the cluster placed it on that worker. Otherwise
    /// the worker holds a copy it should not (failover, undeploy while away): it is told to
    /// delete it, and `None` is returned.
    fn owned_by(
        &self,
        st: &mut State,
        tx: &mut Tx,
        node: &NodeId,
        job: &str,
        n: InstanceNumber,
        status: InstanceStatus,
    ) -> Option<Key> {
        let sid = st.jobs.get(job).cloned();
        let k = sid.map(|s| (s, n.0));
        let ours = k
            .as_ref()
            .and_then(|k| st.instances.get(k))
            .is_some_and(|i| i.node.as_ref() == Some(node));
        if ours {
            return k;
        }
        if !matches!(
            status,
            InstanceStatus::Undeployed | InstanceStatus::Dead | InstanceStatus::Failed
        ) {
            tracing::info!(node = %node, job, instance = n.0, "worker holds a copy it should not; deleting it");
            tx.publish(
                topics::delete(node),
                &DeleteMessage {
                    id: k.map(|k| k.0.to_string()).unwrap_or_default(),
                    job_name: job.to_owned(),
                    virtualization: String::new(),
                    instance_number: n.0,
                },
            );
        }
        None
    }

    async fn finish(&self, tx: Tx) {
        if let Err(e) = self.commit(tx).await {
            tracing::error!(error = %e, "cannot store a change");
        }
    }

    // ------------------------------------------------------------------ lifecycle

    /// Applies one lifecycle event to an instance and does what the transition says.
    fn apply(
        &self,
        st: &mut State,
        tx: &mut Tx,
        k: &Key,
        event: Event,
        detail: Option<String>,
    ) -> Result<()> {
        let Some(i) = st.instances.get(k) else {
            return Ok(());
        };
        let Some(t) = lifecycle::transition(i.status, &event, i.restarts) else {
            return Ok(());
        };
        let old_node = i.node.clone();
        let Some(i) = st.instances.get_mut(k) else {
            return Ok(());
        };
        let now = unix_now();
        let changed = i.status != t.status;
        if t.status == InstanceStatus::Running && i.status != InstanceStatus::Running {
            i.running_since = now;
        }
        i.status = t.status;
        if let Some(d) = detail {
            i.detail = d;
        } else if changed {
            i.detail.clear();
        }
        i.updated_at = now;
        match t.next {
            Next::PlaceAfter(_) => {
                if i.running_since > 0.0
                    && now - i.running_since >= lifecycle::STABLE_AFTER.as_secs_f64()
                {
                    i.restarts = 0;
                }
                i.retry_at = now + lifecycle::backoff(i.restarts).as_secs_f64();
                i.restarts = i.restarts.saturating_add(1);
                i.running_since = 0.0;
                i.node = None;
                self.metrics.reschedule();
            }
            Next::PlaceNow => {
                i.retry_at = 0.0;
                i.running_since = 0.0;
                i.node = None;
                self.metrics.reschedule();
            }
            Next::Wait | Next::PlaceWhenPossible => {}
        }
        if t.delete_on_worker
            && let Some(node) = &old_node
            && st.workers.get(node).is_some_and(|w| w.online)
        {
            tell_delete(st, tx, node, k);
        }
        self.store_instance(st, tx, k)?;
        if changed {
            self.report(st, tx, k)?;
        }
        Ok(())
    }

    fn store_instance(&self, st: &State, tx: &mut Tx, k: &Key) -> Result<()> {
        if let Some(i) = st.instances.get(k) {
            tx.put(col::INSTANCES, &i.key(), i)?;
        }
        Ok(())
    }

    /// Queues a report of the instance's state for the root (replacing an older pending one).
    fn report(&self, st: &mut State, tx: &mut Tx, k: &Key) -> Result<()> {
        let Some(i) = st.instances.get(k) else {
            return Ok(());
        };
        st.identity.last_seq += 1;
        let seq = st.identity.last_seq;
        let r = i.report(seq);
        if let Some(old) = st.outbox_by_instance.insert(k.clone(), seq) {
            st.outbox.remove(&old);
            tx.deletes.push((col::REPORTS, report_key(old)));
        }
        tx.put(col::REPORTS, &report_key(seq), &r)?;
        tx.put(col::IDENTITY, "cluster", &st.identity)?;
        st.outbox.insert(seq, r);
        tx.reported = true;
        Ok(())
    }

    fn lose_worker(&self, st: &mut State, tx: &mut Tx, node: &NodeId, why: &str, since: Duration) {
        if let Some(w) = st.workers.get_mut(node) {
            w.online = false;
        }
        self.metrics.worker_lost(since);
        tracing::warn!(node = %node, why, "worker lost; moving its instances");
        let keys: Vec<Key> = st
            .instances
            .values()
            .filter(|i| i.node.as_ref() == Some(node))
            .map(key)
            .collect();
        for k in keys {
            let detail = format!("worker {node} lost: {why}");
            if let Err(e) = self.apply(st, tx, &k, Event::WorkerLost, Some(detail)) {
                tracing::error!(error = %e, "cannot record a worker loss");
            }
        }
    }

    fn candidates(&self, st: &State) -> Vec<WorkerCandidate> {
        let mut used: HashMap<&NodeId, Resources> = HashMap::new();
        for i in st.instances.values() {
            if let Some(n) = &i.node
                && i.status.occupies_worker()
                && let Some(s) = st.services.get(&i.service_id)
            {
                let u = used.entry(n).or_insert(Resources::ZERO);
                *u = u.saturating_add(&s.spec.resources);
            }
        }
        st.workers
            .values()
            .map(|w| WorkerCandidate {
                id: w.doc.id.clone(),
                name: w.doc.name.clone(),
                active: w.active(self.settings.worker_timeout),
                architecture: w.doc.architecture,
                virtualizations: w.doc.virtualizations.iter().copied().collect(),
                free: w
                    .doc
                    .capacity
                    .saturating_sub(used.get(&w.doc.id).unwrap_or(&Resources::ZERO)),
                cpu_percent: w.info.cpu_percent,
                memory_percent: w.info.memory_percent,
            })
            .collect()
    }

    /// Places every instance that waits for a worker and whose back-off has passed.
    fn place_waiting(&self, st: &mut State, tx: &mut Tx) {
        let now = unix_now();
        let waiting: Vec<Key> = st
            .instances
            .values()
            .filter(|i| {
                i.node.is_none()
                    && !i.status.is_terminal()
                    && (i.status == InstanceStatus::Requested
                        || i.status.class() == StatusClass::NegativeScheduling
                        || (i.status.needs_rescheduling() && i.retry_at <= now))
            })
            .map(key)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let mut candidates = self.candidates(st);
        for k in waiting {
            let Some(spec) = st.services.get(&k.0).map(|s| s.spec.clone()) else {
                continue;
            };
            let decision = scheduler::schedule(&spec, &candidates, &BTreeSet::new());
            self.metrics.schedule_decision(decision.is_ok());
            let result = match decision {
                Ok(node) => {
                    if let Some(c) = candidates.iter_mut().find(|c| c.id == node) {
                        c.free = c.free.saturating_sub(&spec.resources);
                    }
                    let ip = st.instances.get(&k).and_then(|i| i.ip);
                    if let Some(i) = st.instances.get_mut(&k) {
                        i.node = Some(node.clone());
                    }
                    tx.publish(
                        topics::deploy(&node),
                        &DeployMessage::new(&k.0, InstanceNumber(k.1), &spec, ip),
                    );
                    self.apply(st, tx, &k, Event::Placed, Some(String::new()))
                }
                Err(rejection) => {
                    let unchanged = st
                        .instances
                        .get(&k)
                        .is_some_and(|i| i.status == rejection.status);
                    if unchanged {
                        Ok(())
                    } else {
                        self.apply(
                            st,
                            tx,
                            &k,
                            Event::NotPlaced(rejection.status),
                            Some(rejection.detail),
                        )
                    }
                }
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot record a placement");
            }
        }
    }

    /// Periodic work: workers silent for the timeout are lost; waiting instances are placed.
    pub async fn tick(&self) {
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        let timeout = self.settings.worker_timeout;
        let silent: Vec<(NodeId, Duration)> = st
            .workers
            .values()
            .filter(|w| w.online && w.last_seen.elapsed() > timeout)
            .map(|w| (w.doc.id.clone(), w.last_seen.elapsed()))
            .collect();
        for (node, since) in silent {
            self.lose_worker(&mut st, &mut tx, &node, "it stopped reporting", since);
        }
        self.place_waiting(&mut st, &mut tx);
        drop(st);
        self.finish(tx).await;
    }

    /// Sets the gauges from the current state (when metrics are scraped).
    pub async fn refresh_metrics(&self) {
        let st = self.state.lock().await;
        let active = st
            .workers
            .values()
            .filter(|w| w.active(self.settings.worker_timeout))
            .count();
        let mut by_status: BTreeMap<InstanceStatus, i64> = BTreeMap::new();
        for i in st.instances.values() {
            *by_status.entry(i.status).or_default() += 1;
        }
        self.metrics
            .set_workers(active as i64, (st.workers.len() - active) as i64);
        self.metrics.set_instances(&by_status);
    }

    pub async fn run_ticker(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let mut every = tokio::time::interval(self.settings.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = every.tick() => self.tick().await,
            }
        }
    }

    // ------------------------------------------------------------------ root link

    /// Applies a command from the root. Idempotent: a deploy of an instance the cluster already
    /// has, or an undeploy of one it does not, changes nothing.
    pub async fn apply_command(&self, cmd: &Command) -> Result<()> {
        let mut st = self.state.lock().await;
        let mut tx = Tx::default();
        match &cmd.action {
            CommandAction::Deploy {
                service_id,
                instance,
                spec,
                instance_ip,
            } => {
                let service = Service {
                    id: service_id.clone(),
                    spec: (**spec).clone(),
                };
                if st.services.get(service_id) != Some(&service) {
                    tx.put(col::SERVICES, service_id.as_str(), &service)?;
                    st.jobs
                        .insert(service.spec.job_name.to_string(), service_id.clone());
                    st.services.insert(service_id.clone(), service);
                }
                let k = (service_id.clone(), instance.0);
                if !st.instances.contains_key(&k) {
                    let i = Instance::new(service_id.clone(), *instance, *instance_ip);
                    st.instances.insert(k.clone(), i);
                    self.store_instance(&st, &mut tx, &k)?;
                    self.report(&mut st, &mut tx, &k)?;
                    self.place_waiting(&mut st, &mut tx);
                }
            }
            CommandAction::Undeploy {
                service_id,
                instance,
            } => {
                let keys: Vec<Key> = st
                    .instances
                    .keys()
                    .filter(|k| &k.0 == service_id && instance.is_none_or(|n| n.0 == k.1))
                    .cloned()
                    .collect();
                for k in keys {
                    self.remove_instance(&mut st, &mut tx, &k);
                }
                let left = st.instances.keys().any(|k| &k.0 == service_id);
                if !left && let Some(s) = st.services.remove(service_id) {
                    st.jobs.remove(&s.spec.job_name.to_string());
                    tx.deletes.push((col::SERVICES, service_id.to_string()));
                }
            }
        }
        self.commit(tx).await
    }

    fn remove_instance(&self, st: &mut State, tx: &mut Tx, k: &Key) {
        let Some(i) = st.instances.remove(k) else {
            return;
        };
        tx.deletes
            .push((col::INSTANCES, instance_key(&k.0, i.number)));
        if let Some(seq) = st.outbox_by_instance.remove(k) {
            st.outbox.remove(&seq);
            tx.deletes.push((col::REPORTS, report_key(seq)));
        }
        if let Some(node) = &i.node {
            tell_delete(st, tx, node, k);
        }
    }

    /// Reports the root has not acknowledged, oldest first.
    pub async fn pending_reports(&self) -> Vec<InstanceReport> {
        self.state.lock().await.outbox.values().cloned().collect()
    }

    /// The root's welcome: it has stored every report up to `seq`. If the root knows higher
    /// numbers than this cluster made (the cluster's state was reset), pending reports are
    /// renumbered above it so the root does not take them for old ones.
    pub async fn root_has(&self, seq: u64) {
        let mut st = self.state.lock().await;
        if seq > st.identity.last_seq {
            let mut tx = Tx::default();
            let pending: Vec<InstanceReport> =
                std::mem::take(&mut st.outbox).into_values().collect();
            st.outbox_by_instance.clear();
            st.identity.last_seq = seq;
            for mut r in pending {
                tx.deletes.push((col::REPORTS, report_key(r.seq)));
                st.identity.last_seq += 1;
                r.seq = st.identity.last_seq;
                if let Err(e) = tx.put(col::REPORTS, &report_key(r.seq), &r) {
                    tracing::error!(error = %e, "cannot renumber a report");
                }
                st.outbox_by_instance
                    .insert((r.service_id.clone(), r.instance.0), r.seq);
                st.outbox.insert(r.seq, r);
            }
            if let Err(e) = tx.put(col::IDENTITY, "cluster", &st.identity) {
                tracing::error!(error = %e, "cannot store the identity");
            }
            drop(st);
            self.finish(tx).await;
        } else {
            drop(st);
        }
        self.reports_acked(seq).await;
    }

    /// The root stored every report up to `seq`.
    pub async fn reports_acked(&self, seq: u64) {
        let mut st = self.state.lock().await;
        let done: Vec<u64> = st.outbox.range(..=seq).map(|(s, _)| *s).collect();
        let mut tx = Tx::default();
        for s in done {
            if let Some(r) = st.outbox.remove(&s) {
                let k = (r.service_id.clone(), r.instance.0);
                if st.outbox_by_instance.get(&k) == Some(&s) {
                    st.outbox_by_instance.remove(&k);
                }
            }
            tx.deletes.push((col::REPORTS, report_key(s)));
        }
        drop(st);
        self.finish(tx).await;
    }

    /// Wakes when a new report is queued.
    pub fn reports_ready(&self) -> &Notify {
        &self.reports_ready
    }

    /// The cluster's resources for the root: active workers, free capacity after placements.
    pub async fn resource_report(&self) -> ClusterReport {
        let st = self.state.lock().await;
        let candidates = self.candidates(&st);
        let mut total = Aggregator::default();
        let mut per_arch: BTreeMap<Architecture, Aggregator> = BTreeMap::new();
        for (c, w) in candidates.iter().zip(st.workers.values()) {
            if !c.active {
                continue;
            }
            total.add(c, &w.doc.supported_addons);
            per_arch
                .entry(c.architecture)
                .or_default()
                .add(c, &w.doc.supported_addons);
        }
        let mut placed: HashMap<&NodeId, u32> = HashMap::new();
        let mut usage = Vec::new();
        for i in st.instances.values() {
            if let Some(n) = &i.node
                && i.status.occupies_worker()
            {
                *placed.entry(n).or_default() += 1;
            }
            if i.status == InstanceStatus::Running {
                usage.push(InstanceUsage {
                    service_id: i.service_id.clone(),
                    instance: i.number,
                    cpu_percent: i.cpu_percent,
                    memory_mb: i.memory_mb,
                    logs: i.logs.clone(),
                });
            }
        }
        let nodes = candidates
            .iter()
            .map(|c| NodeSummary {
                id: c.id.clone(),
                name: c.name.clone(),
                active: c.active,
                architecture: c.architecture,
                virtualizations: c.virtualizations.iter().copied().collect(),
                cpu_percent: c.cpu_percent.clamp(0.0, 100.0),
                memory_percent: c.memory_percent.clamp(0.0, 100.0),
                instances: placed.get(&c.id).copied().unwrap_or(0),
            })
            .collect();
        ClusterReport {
            total: total.finish(),
            per_architecture: per_arch.into_iter().map(|(a, g)| (a, g.finish())).collect(),
            nodes,
            usage,
        }
    }
}

#[derive(Default)]
struct Aggregator {
    agg: ResourceAggregate,
    cpu_sum: f64,
    mem_sum: f64,
}

impl Aggregator {
    /// Adds one active worker (`candidates` and `workers` are built in the same order).
    fn add(&mut self, c: &WorkerCandidate, addons: &[String]) {
        self.agg.supported_addons.extend(addons.iter().cloned());
        self.agg.active_nodes += 1;
        self.agg.free = self.agg.free.saturating_add(&c.free);
        self.cpu_sum += c.cpu_percent;
        self.mem_sum += c.memory_percent;
        self.agg
            .virtualizations
            .extend(c.virtualizations.iter().copied());
    }

    fn finish(mut self) -> ResourceAggregate {
        let n = f64::from(self.agg.active_nodes.max(1));
        self.agg.cpu_percent = (self.cpu_sum / n).clamp(0.0, 100.0);
        self.agg.memory_percent = (self.mem_sum / n).clamp(0.0, 100.0);
        self.agg
    }
}

/// Tells `node` to stop and remove instance `k`.
fn tell_delete(st: &State, tx: &mut Tx, node: &NodeId, k: &Key) {
    let job = st
        .services
        .get(&k.0)
        .map(|s| s.spec.job_name.to_string())
        .unwrap_or_default();
    tx.publish(
        topics::delete(node),
        &DeleteMessage {
            id: k.0.to_string(),
            job_name: job,
            virtualization: String::new(),
            instance_number: k.1,
        },
    );
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

fn topic_kind(topic: &str) -> &'static str {
    if topic.ends_with("/control/deploy") {
        "deploy"
    } else if topic.ends_with("/control/delete") {
        "delete"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AllowAll;

    #[async_trait]
    impl NodeAuth for AllowAll {
        async fn allow(&self, _: &NodeId, _: &str) -> Result<(), String> {
            Ok(())
        }
    }

    fn registration(
        host: &str,
        arch: &str,
        vcpus: u32,
        memory: u64,
        addons: &[&str],
    ) -> NodeRegistration {
        serde_json::from_value(serde_json::json!({
            "host": host, "architecture": arch, "vcpus": vcpus, "memory": memory,
            "cpu_percent": 20.0, "memory_percent": 40.0,
            "virtualization": ["docker"], "supported_addons": addons, "token": "t"
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_root_sees_sums_averages_and_architectures_after_placements() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            Arc::new(canopy_store::EmbeddedStore::open(dir.path()).await.unwrap());
        let (cluster, mut out) = Cluster::open(store, Settings::default(), Arc::new(AllowAll))
            .await
            .unwrap();
        cluster
            .register_worker(&registration("a", "amd64", 4, 4000, &["gpu-share"]))
            .await
            .unwrap();
        cluster
            .register_worker(&registration("b", "arm64", 2, 1000, &[]))
            .await
            .unwrap();
        let r = cluster.resource_report().await;
        assert_eq!(r.total.active_nodes, 2);
        assert_eq!((r.total.free.vcpus, r.total.free.memory_mb), (6, 5000));
        assert_eq!((r.total.cpu_percent, r.total.memory_percent), (20.0, 40.0));
        assert!(r.total.supported_addons.contains("gpu-share"));
        assert_eq!(
            r.per_architecture[&Architecture::Arm64].free.memory_mb,
            1000
        );

        // One instance asking for 3 vcpus and 3000 MB fits only on "a"; afterwards "a" offers
        // what is left.
        let mut spec = canopy_core::ServiceSpec::new(
            "app.ns.web.ns".parse().unwrap(),
            canopy_core::Virtualization::Container,
            "img",
        );
        spec.resources = Resources {
            vcpus: 3,
            memory_mb: 3000,
            vgpus: 0,
        };
        let cmd = Command {
            id: 1,
            action: CommandAction::Deploy {
                service_id: ServiceId::parse("svc").unwrap(),
                instance: InstanceNumber(0),
                spec: Box::new(spec),
                instance_ip: None,
            },
        };
        cluster.apply_command(&cmd).await.unwrap();
        cluster.apply_command(&cmd).await.unwrap(); // idempotent
        let deploys: Vec<Publish> = std::iter::from_fn(|| out.try_recv().ok()).collect();
        assert_eq!(deploys.len(), 1, "{deploys:?}");
        let r = cluster.resource_report().await;
        assert_eq!(r.per_architecture[&Architecture::Amd64].free.vcpus, 1);
        assert_eq!(r.total.free.memory_mb, 2000);
        let reports = cluster.pending_reports().await;
        assert_eq!(
            reports.last().unwrap().status,
            InstanceStatus::NodeScheduled
        );
        assert_eq!(
            reports.len(),
            1,
            "only the newest report per instance is kept"
        );
    }
}
