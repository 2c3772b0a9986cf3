//! The root's control plane: the state behind the REST API and the cluster link, kept in memory
//! and written through to the store before anything is acknowledged.
//!
//! # Layout
//!
//! | file | holds |
//! |------|-------|
//! | `mod.rs` | the [`Root`] façade: open, settings, the lock, gauges, the ticker; [`Error`], [`Caller`], [`Now`] |
//! | `commit.rs` | group commit: changes applied in memory under the lock, written together by one task, acknowledged once durable |
//! | `state.rs` | the in-memory model, its load from the store, [`InstanceKey`], and the staged change |
//! | `accounts.rs` | users, organisations, passwords, login |
//! | `apps.rs` | applications, services, instances: SLA → spec, scale up and down |
//! | `operations.rs` | stop, start, restart one instance |
//! | `rollout.rs` | rolling updates: the next revision, instance by instance, rolled back by itself when a new instance fails (the pure [`rollout::step`]) |
//! | `quota.rs` | users' quotas, checked before a change that grows what they hold |
//! | `autoscale.rs` | the pure autoscaling step ([`autoscale::step`]): a service's instances and use → one more, one fewer, or nothing, with why; run on every tick |
//! | `logs.rs` | streamed instance logs: open through the instance's cluster, chunks in order to the reader, credit back |
//! | `feed.rs` | the change feed behind `GET /api/events` (kept items, resume, visibility) |
//! | `placement.rs` | the pure placement step ([`placement::plan`]): decide, assign, failover; the periodic tick |
//! | `overlay.rs` | worker subnets of the address plan; the overlay view sent to every cluster when it changes |
//! | `sessions.rs` | the cluster side: registration, sessions and their outbound channel, reports, acks, the outbox |
//! | `tests/` | `plan.rs`: the placement step case by case; `autoscale.rs`: the autoscaling step as scenarios, and through the tick; `mod.rs`: the whole `Root` on a paused clock |
//!
//! (The gRPC server the clusters talk to is [`crate::link`]; it calls into `sessions.rs`.)
//!
//! # One way to change state: stage → apply → write → acknowledge
//!
//! One lock ([`Root::state`]) orders every change, so address allocation, instance numbers and
//! placements never race (the store has no compare-and-swap). Under it, an operation reads the
//! state and stages its change in a `Change` (the documents to write, the commands to send, and
//! the same change for memory) without touching the state. The change is then applied to
//! memory and its writes queued (`commit.rs`); one task writes whatever is queued as one batch
//! through the shared [`canopy_store::Tx`], and only then are the commands sent to clusters and
//! the operation acknowledged. Operations on the hot paths (adding instances, reports from
//! clusters) wait for their write after releasing the lock, so changes staged meanwhile share
//! the sync to disk. A failed write fails every change queued behind it, and the state is
//! loaded again from the store, so memory is again what the store holds. Only what is never
//! stored is set directly: a cluster's liveness (`last_seen`), its last resource report and the
//! instances' live figures.
//!
//! # Placement
//!
//! A new instance is placed at once; if nothing fits, the instance keeps the negative status
//! and [`Root::tick`] tries again every tick. A cluster that has not reported for the grace
//! period is inactive; its instances are taken back (an undeploy is queued for the cluster,
//! delivered if it ever returns) and placed elsewhere. Every such decision is made by the pure
//! [`placement::plan`] over a snapshot and `now`; the async code gathers the snapshot and
//! stages the effects it returns.
//!
//! # Autoscaling
//!
//! After placement, each tick runs the pure [`autoscale::step`] for every service with an
//! SLA `autoscale` and carries out what it decides through the same staging as a user's
//! scale up or down, recorded as an `autoscale up`/`autoscale down` event with the reason.
//!
//! # Time
//!
//! Each operation reads the clocks once ([`Now::read`]) and passes that `now` on: liveness is
//! measured on tokio's clock, so tests can pause and advance it.

mod accounts;
mod apps;
mod autoscale;
mod commit;
pub mod feed;
pub mod logs;
mod operations;
mod overlay;
mod placement;
mod quota;
pub mod rollout;
mod sessions;
mod state;
#[cfg(test)]
mod tests;

pub use accounts::{Login, NewUser, UserRoles};
pub use operations::Operation;
pub use sessions::{ClusterNode, ClusterView, Registered, Session};
pub use state::InstanceKey;

use crate::auth;
use crate::metrics::Metrics;
use canopy_core::link::Command;
use canopy_core::{ClusterId, InstanceStatus};
use canopy_store::{SharedStore, StoreError};
use state::State;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc};

/// What can go wrong in a control-plane operation; [`crate::api`] maps each to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    /// Well-formed but unacceptable (HTTP 422).
    #[error("{field}: {message}")]
    Unprocessable { field: String, message: String },
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("invalid credentials")]
    BadCredentials,
    #[error("You have not enough permissions!")]
    Forbidden,
    /// Over the owner's quota (HTTP 403, naming `quota.<what>`).
    #[error("{field}: {message}")]
    QuotaExceeded { field: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
}

fn not_found(what: &'static str, id: &str) -> Error {
    Error::NotFound {
        what,
        id: id.to_owned(),
    }
}

fn conflict(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Conflict {
        field: field.into(),
        message: message.into(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A fresh object id as a typed id (object ids are hex digits: always a valid id).
fn new_id<T: std::str::FromStr<Err = canopy_core::ids::IdError>>() -> Result<T> {
    crate::model::new_object_id()
        .parse()
        .map_err(|e: canopy_core::ids::IdError| StoreError::Backend(e.to_string()).into())
}

/// The time an operation runs at, read once where it starts and passed into every decision
/// and timestamp: tokio's clock for liveness and grace periods (paused and advanced in tests),
/// the wall clock for the Unix seconds stored in documents.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub at: Instant,
    pub unix: f64,
}

impl Now {
    pub fn read() -> Now {
        Now {
            at: tokio::time::Instant::now().into_std(),
            unix: crate::model::unix_now(),
        }
    }
}

/// Who is asking: the user name and whether the token carries `Admin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub admin: bool,
    pub organization: String,
}

impl Caller {
    fn may_touch(&self, owner: &str) -> bool {
        self.admin || self.name == owner
    }

    pub fn require_admin(&self) -> Result<()> {
        if self.admin {
            Ok(())
        } else {
            Err(Error::Forbidden)
        }
    }
}

/// Tunables of the control plane.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A cluster that has not reported for this long is inactive and loses its instances.
    pub cluster_grace: Duration,
    /// How often [`Root::tick`] runs.
    pub tick: Duration,
    /// The quota of users without one of their own (admins excepted).
    pub default_quota: canopy_api::Quota,
    /// How many changes `GET /api/events` can resume across.
    pub events_kept: usize,
    /// Bytes one log request gets at most.
    pub max_log_bytes: u64,
    /// A rolling update's new instance must be ready within this long of being added...
    pub rollout_deadline: Duration,
    /// ... and ready means RUNNING for this long.
    pub rollout_min_ready: Duration,
    /// The autoscaling windows of services whose SLA sets none.
    pub autoscale: canopy_core::autoscale::ResolvedWindows,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_grace: Duration::from_secs(30),
            tick: Duration::from_millis(500),
            default_quota: canopy_api::Quota::UNLIMITED,
            events_kept: 10_000,
            max_log_bytes: 64 << 20,
            rollout_deadline: Duration::from_secs(120),
            rollout_min_ready: Duration::from_secs(5),
            autoscale: Default::default(),
        }
    }
}

/// Something to send down a cluster session.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Command(Command),
    /// The whole overlay, when it changed (each replaces the one before).
    Overlay(Arc<canopy_core::overlay::GlobalView>),
    /// Streamed logs ([`logs`]).
    LogOpen(canopy_core::logs::LogOpen),
    LogCredit(canopy_core::logs::LogCredit),
    LogClose(canopy_core::logs::LogClose),
}

/// What a committed change sends: a command for a cluster.
type Delivery = (ClusterId, Command);

struct SessionHandle {
    generation: u64,
    tx: mpsc::UnboundedSender<Outbound>,
}

/// The root's control plane.
pub struct Root {
    store: SharedStore,
    state: Mutex<State>,
    sessions: std::sync::Mutex<HashMap<ClusterId, SessionHandle>>,
    session_generation: std::sync::atomic::AtomicU64,
    settings: Settings,
    pub metrics: Metrics,
    /// The overlay view last sent to the clusters.
    overlay_sent: std::sync::Mutex<Arc<canopy_core::overlay::GlobalView>>,
    overlay_dirty: tokio::sync::Notify,
    /// Every committed change, for `GET /api/events`.
    pub feed: feed::Feed,
    /// Log streams open to readers.
    logs: std::sync::Mutex<logs::LogStreams>,
    /// The autoscaler's windows per service (memory only: [`autoscale`]).
    autoscale: std::sync::Mutex<BTreeMap<canopy_core::ServiceId, autoscale::Track>>,
    /// Changes applied to memory, waiting to be written (`commit.rs`).
    commits: mpsc::UnboundedSender<commit::Queued>,
    /// A write failed: memory is ahead of the store until the state is loaded again.
    write_failed: std::sync::atomic::AtomicBool,
    /// How many times the state was loaded again after a failed write.
    epoch: std::sync::atomic::AtomicU64,
}

impl Root {
    /// Loads the state from `store`.
    pub async fn open(store: SharedStore, settings: Settings) -> Result<Arc<Root>> {
        let st = State::load(&store, Now::read()).await?;
        let events_kept = settings.events_kept;
        let (commits, queued) = mpsc::unbounded_channel();
        let root = Arc::new(Root {
            store,
            state: Mutex::new(st),
            sessions: std::sync::Mutex::new(HashMap::new()),
            session_generation: std::sync::atomic::AtomicU64::new(0),
            settings,
            metrics: Metrics::default(),
            overlay_sent: std::sync::Mutex::new(Arc::default()),
            overlay_dirty: tokio::sync::Notify::new(),
            feed: feed::Feed::new(events_kept, (Now::read().unix * 1e6) as u64),
            logs: std::sync::Mutex::default(),
            autoscale: std::sync::Mutex::default(),
            commits,
            write_failed: Default::default(),
            epoch: Default::default(),
        });
        tokio::spawn(commit::run(Arc::downgrade(&root), queued));
        root.overlay_changed();
        root.refresh_gauges().await;
        Ok(root)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterId, SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the cluster and instance gauges from the current state.
    pub async fn refresh_gauges(&self) {
        let now = Now::read().at;
        let st = self.state.lock().await;
        let grace = self.settings.cluster_grace;
        let active = st
            .clusters
            .values()
            .filter(|e| e.active(grace, now))
            .count();
        let mut by_status: BTreeMap<InstanceStatus, i64> = BTreeMap::new();
        for s in st.services.values() {
            for i in s.instances.values() {
                *by_status.entry(i.status).or_default() += 1;
            }
        }
        self.metrics
            .set_clusters(active as i64, (st.clusters.len() - active) as i64);
        self.metrics.set_instances(&by_status);
        self.metrics.set_addresses(st.pool.in_use() as i64);
    }

    /// Runs [`Root::tick`] every tick until `shutdown` resolves.
    pub async fn run_ticker(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        canopy_daemon::every(self.settings.tick, shutdown, || async {
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "control loop tick failed");
            }
            if let Err(e) = self.advance_rollouts().await {
                tracing::error!(error = %e, "rolling updates could not go on");
            }
        })
        .await;
    }
}
