//! The cluster's control plane: workers, services, instances and the reports owed to the root,
//! in memory behind one lock and written through to the store before anything is
//! acknowledged. It runs whether or not the root is reachable (autonomy): placement, failure
//! detection and restarts happen here; the root link only carries commands in and reports out.
//! It receives domain values only: MQTT decoding happens in [`crate::mqtt`].
//!
//! # Layout
//!
//! - `mod.rs`: [`Cluster`] (open, the lock, commit), settings, errors, effects, the ticker;
//! - `state.rs`: the in-memory model, its load from the store, the staging view `Change`;
//! - `workers.rs`: registration, liveness, worker loss;
//! - `placement.rs`: placing waiting instances with [`crate::scheduler`];
//! - `instances.rs`: the instance lifecycle ([`crate::lifecycle`]), worker reports on
//!   instances, the root's deploy/undeploy commands;
//! - `overlay.rs`: worker subnets from the root's address plan; the overlay view published to
//!   every worker when it changes;
//! - `logs.rs`: streamed instance logs relayed between the root session and the workers;
//! - `reports.rs`: the report outbox to the root, the
//!   [`ClusterReport`](canopy_core::link::ClusterReport) aggregation;
//! - `tests.rs`: the façade end to end on an embedded store (paused time, a failing store).
//!
//! # One way to change state: stage → commit → apply
//!
//! Every change is staged in a `Change` (a view of the state plus the entries the change
//! touches, and a [`canopy_store::Tx`] of store writes and [`Effect`]s), committed to the
//! store, and only then applied to memory and its effects delivered. A failed commit leaves
//! memory as it was and sends nothing. In code: `self.change(&mut st, now, |ch| …)`, and every
//! staging helper takes `&mut Change`. The one exception is liveness (when a worker was last
//! heard from, its current load): memory only, recorded as each message arrives.
//!
//! Every instance change goes through [`crate::lifecycle::transition`]. Every status change
//! makes a report with the next sequence number; reports stay (in memory and in the store)
//! until the root acknowledges them, and only the newest report per instance is kept.
//!
//! Time is passed in (`Now`): decisions never read a clock, and the clock is tokio's, so
//! tests can pause and advance it.

mod instances;
mod logs;
mod overlay;
mod placement;
mod reports;
mod state;
#[cfg(test)]
mod tests;
mod workers;

pub use instances::UsageReport;
pub use overlay::AddressPlan;
pub use workers::{Registered, WorkerView};

use crate::metrics::Metrics;
use crate::model::unix_now;
use async_trait::async_trait;
use canopy_core::{ClusterId, InstanceStatus, NodeId};
use canopy_store::{SharedStore, StoreError};
use state::{Change, InstanceKey, Now, State};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::time::Instant;

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
    #[error("no worker subnet for the overlay: {0}")]
    AddressPlan(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tunables.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A worker with no message for this long is lost: a backstop to its last will, which
    /// the broker publishes after 1.5 keep-alives of silence (1.5 s by default). Idle workers
    /// report only when their load changes or every refresh (30 s by default), so this must
    /// be well above the workers' refresh interval.
    pub worker_timeout: Duration,
    /// How often [`Cluster::tick`] runs.
    pub tick: Duration,
    /// An undeployed RUNNING instance on the overlay is stopped this long after it left its
    /// service's addresses.
    pub drain: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            worker_timeout: Duration::from_secs(75),
            tick: Duration::from_millis(200),
            drain: Duration::from_secs(2),
        }
    }
}

/// An MQTT message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What a committed change sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// An MQTT message to a worker.
    Publish(Publish),
    /// A report was queued for the root.
    ReportsReady,
    /// Stop instance `key` on its worker after the drain time (`publish`: the delete).
    Drain { key: InstanceKey, publish: Publish },
}

/// The cluster control plane.
pub struct Cluster {
    store: SharedStore,
    state: Mutex<State>,
    settings: Settings,
    outgoing: mpsc::UnboundedSender<Publish>,
    reports_ready: Notify,
    auth: Arc<dyn NodeAuth>,
    /// One registration at a time (they may share a host name). Held instead of the state
    /// lock while the broker is asked: its answer comes in through the MQTT loop, which
    /// needs the state lock for every other message.
    registrations: Mutex<()>,
    /// When the cluster opened, on both clocks: Unix time is read off tokio's clock from here.
    opened: Now,
    pub metrics: Metrics,
    address_plan: std::sync::OnceLock<Arc<dyn AddressPlan>>,
    global_overlay: std::sync::Mutex<Arc<canopy_core::overlay::GlobalView>>,
    overlay_dirty: Notify,
    overlay_sent: std::sync::Mutex<overlay::Sent>,
    /// Streamed logs in flight (not stored).
    logs: std::sync::Mutex<logs::LogRelay>,
    /// Deletes waiting out the drain time, by instance (with a number telling each wait
    /// apart): whoever takes one out of here sends it.
    draining: Arc<std::sync::Mutex<HashMap<InstanceKey, (u64, Publish)>>>,
    drain_seq: std::sync::atomic::AtomicU64,
}

impl Cluster {
    /// Loads the state from `store`. MQTT messages to publish come out of the returned channel.
    pub async fn open(
        store: SharedStore,
        settings: Settings,
        auth: Arc<dyn NodeAuth>,
    ) -> Result<(Arc<Cluster>, mpsc::UnboundedReceiver<Publish>)> {
        let opened = Now {
            at: Instant::now(),
            unix: unix_now(),
        };
        let st = State::load(&store, opened.at).await?;
        let (outgoing, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            store,
            state: Mutex::new(st),
            settings,
            outgoing,
            reports_ready: Notify::new(),
            auth,
            registrations: Mutex::new(()),
            opened,
            metrics: Metrics::default(),
            address_plan: std::sync::OnceLock::new(),
            global_overlay: std::sync::Mutex::new(Arc::default()),
            overlay_dirty: Notify::new(),
            overlay_sent: std::sync::Mutex::new(overlay::Sent::default()),
            logs: std::sync::Mutex::default(),
            draining: Arc::default(),
            drain_seq: std::sync::atomic::AtomicU64::new(0),
        });
        Ok((cluster, rx))
    }

    /// The time now, from tokio's clock.
    fn now(&self) -> Now {
        let at = Instant::now();
        Now {
            at,
            unix: self.opened.unix + at.duration_since(self.opened.at).as_secs_f64(),
        }
    }

    /// Stages a change with `stage`, commits its store writes, then applies it to memory and
    /// delivers its effects. Nothing is applied or sent when staging or the commit fails.
    async fn change<T>(
        &self,
        st: &mut State,
        now: Now,
        stage: impl FnOnce(&mut Change<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut ch = Change::new(st, now);
        let out = stage(&mut ch)?;
        let (tx, writes) = ch.finish();
        let effects = tx.commit(self.store.as_ref()).await?;
        st.apply(writes);
        debug_assert_eq!(
            st.placement,
            placement::PlacementIndex::of(&st.instances, &st.services),
            "the placement index follows the instances"
        );
        self.overlay_changed();
        let mut reported = false;
        for e in effects {
            match e {
                Effect::Publish(p) => {
                    let _ = self.outgoing.send(p);
                }
                Effect::ReportsReady => reported = true,
                Effect::Drain { key, publish } => self.drain(key, publish),
            }
        }
        if reported {
            self.reports_ready.notify_one();
        }
        Ok(out)
    }

    fn draining(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceKey, (u64, Publish)>> {
        self.draining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `delete` (instance `key`'s) after the drain time. Not stored: a delete lost to a
    /// crash is found again as a copy the worker should not hold.
    fn drain(&self, key: InstanceKey, delete: Publish) {
        let seq = self
            .drain_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((_, older)) = self.draining().insert(key.clone(), (seq, delete)) {
            let _ = self.outgoing.send(older);
        }
        let (out, map, wait) = (
            self.outgoing.clone(),
            self.draining.clone(),
            self.settings.drain,
        );
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let mut m = map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.get(&key).is_some_and(|(s, _)| *s == seq)
                && let Some((_, delete)) = m.remove(&key)
            {
                let _ = out.send(delete);
            }
        });
    }

    /// Instance `key` is deployed again while its old copy drains: the old copy's delete goes
    /// now, before the new deploy.
    fn end_drain(&self, key: &InstanceKey) {
        let waiting = self.draining().remove(key);
        if let Some((_, delete)) = waiting {
            let _ = self.outgoing.send(delete);
        }
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
        let now = self.now();
        self.change(&mut st, now, |ch| {
            let identity = ch.identity.to_mut();
            identity.cluster_id = Some(id);
            ch.tx.put(
                crate::model::collections::IDENTITY,
                "cluster",
                &*ch.identity,
            )?;
            Ok(())
        })
        .await
    }

    // ------------------------------------------------------------------ periodic work

    /// Periodic work: workers silent for the timeout are lost; waiting instances are placed.
    pub async fn tick(&self) {
        let mut st = self.state.lock().await;
        let now = self.now();
        let silent = workers::silent(&st, self.settings.worker_timeout, now.at);
        let result = self
            .change(&mut st, now, |ch| {
                for (node, since) in silent {
                    self.lose_worker(ch, &node, "it stopped reporting", since);
                }
                self.place_waiting(ch);
                Ok(())
            })
            .await;
        logged(result);
    }

    /// Runs [`Cluster::tick`] every tick until `shutdown` resolves.
    pub async fn run_ticker(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        canopy_daemon::every(self.settings.tick, shutdown, || self.tick()).await;
    }

    /// Sets the gauges from the current state (when metrics are scraped).
    pub async fn refresh_metrics(&self) {
        let st = self.state.lock().await;
        let now = self.now();
        let active = st
            .workers
            .values()
            .filter(|w| w.active(self.settings.worker_timeout, now.at))
            .count();
        let mut by_status: BTreeMap<InstanceStatus, i64> = BTreeMap::new();
        for i in st.instances.values() {
            *by_status.entry(i.status).or_default() += 1;
        }
        self.metrics
            .set_workers(active as i64, (st.workers.len() - active) as i64);
        self.metrics.set_instances(&by_status);
    }
}

/// Logs a change that failed where there is no caller to tell.
fn logged(result: Result<()>) {
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot store a change");
    }
}
