//! The engine: the instances this worker was told to run, each watched by one supervisor
//! task, persisted so a restarted engine picks them up again.
//!
//! Layout:
//! - `mod.rs` (this file): the [`Engine`], its slots (one per instance), deploy and delete,
//!   graceful shutdown, the views the local API and the uplink read.
//! - [`supervisor`]: one instance's life as an explicit [`Phase`], and the pure
//!   [`classify_exit`] deciding what an exit means.
//! - [`recovery`]: picking instances up after a restart, and the periodic check that removes
//!   workloads nothing tracks.
//! - [`resources`]: the use and log tail of running instances (resource reports).
//! - the health probes of running instances are in [`crate::probes`]; the supervisor runs
//!   them, reports readiness changes and stops an instance whose liveness probe fails
//!   (`FAILED`, so the cluster restarts it with its back-off).
//!
//! An instance's life on the worker: `CREATING` (fetch and start) → `RUNNING` → it exits
//! (`COMPLETED` for a one-shot exit 0, `DEAD` otherwise) or fails to start (`FAILED` with the
//! reason). Restarting is the cluster's decision, as in Oakestra: an ended instance stays
//! recorded until the cluster deletes or redeploys it. A delete stops it and answers
//! `UNDEPLOYED`; a second delete while the first is still stopping waits for it.
//!
//! Nothing the engine started is ever left untracked: a slot stays in the table until its
//! workload is removed, a graceful shutdown waits for every start and stop in flight, and
//! `--remove-on-exit` also removes whatever the runtimes still hold in the engine's namespace.

mod recovery;
mod resources;
mod supervisor;

pub use supervisor::{Outcome, Phase, Stop, classify_exit};

use crate::metrics::Metrics;
use crate::runtime::{Runtime, Workload};
use canopy_core::{InstanceNumber, InstanceStatus, Virtualization};
use canopy_proto::worker::{DeployMessage, DeployOrder, JobStatus};
use canopy_store::{Collection, SharedStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use supervisor::Resume;
use tokio::sync::{Mutex, mpsc, watch};

/// Bytes of log sent with each resource report (Oakestra sends 1024).
pub const LOG_TAIL_BYTES: u64 = 1024;

/// How much longer than the stop grace a graceful shutdown waits for work in flight.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// What the engine keeps per instance across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub deploy: DeployMessage,
    pub status: InstanceStatus,
    #[serde(default)]
    pub detail: String,
}

/// An instance as the local API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceView {
    pub name: String,
    pub job_name: String,
    pub instance_number: u32,
    pub virtualization: String,
    pub runtime_id: String,
    pub status: String,
    pub status_detail: String,
    /// Its readiness probe passes (true without one).
    pub ready: bool,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Per-instance log files live here.
    pub log_dir: PathBuf,
    /// SIGTERM → SIGKILL grace when stopping.
    pub stop_grace: Duration,
    /// Reported as `publicip` with every status.
    pub public_ip: String,
    /// The worker's net manager; `None`: containers use the host's network.
    pub overlay: Option<crate::overlay::NetManager>,
}

/// One instance the engine holds: its workload, what it reports, and its supervisor's
/// controls. A slot leaves the table only after its workload is gone from the runtime.
struct Slot {
    workload: Workload,
    deploy: DeployMessage,
    status: InstanceStatus,
    detail: String,
    /// Why the supervisor should stop (`Stop::No` while nobody asked).
    stop: watch::Sender<Stop>,
    /// The supervisor's phase; the channel closes when the supervisor is finished.
    phase: watch::Receiver<Phase>,
    generation: u64,
    /// Its address on the overlay, once attached (reported with its status).
    ns_ip: Option<std::net::Ipv4Addr>,
    /// Its readiness probe passes (true without one; reported with its status).
    ready: bool,
}

impl Slot {
    /// A start or a stop of this slot is under way.
    fn in_flight(&self) -> bool {
        let alive = self.phase.has_changed().is_ok();
        alive && (*self.stop.borrow() != Stop::No || self.phase.borrow().in_flight())
    }

    /// Resolves when the slot's start or stop in flight is over: a stop ends with the
    /// supervisor, a start with the phase after it.
    fn settled(&self) -> impl Future<Output = ()> + use<> {
        let stopping = *self.stop.borrow() != Stop::No;
        let phase = self.phase.clone();
        async move {
            if stopping {
                supervisor::finished(phase).await;
            } else {
                let mut phase = phase;
                let _ = phase.wait_for(|p| !p.in_flight()).await;
            }
        }
    }
}

/// A deploy the engine refused: what to report and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub job_name: String,
    pub instance: u32,
    pub detail: String,
}

/// The workload is over on this worker (terminal, or waiting for the cluster to reschedule).
fn ended(s: InstanceStatus) -> bool {
    s.is_terminal() || s.needs_rescheduling()
}

/// The runtime's handle for an instance: its name when containerd accepts it (≤ 76 characters),
/// otherwise a digest of it.
pub fn runtime_id(name: &str) -> String {
    if name.len() <= 76 {
        name.to_owned()
    } else {
        let d = hex::encode(Sha256::digest(name.as_bytes()));
        format!("canopy-{}", &d[..32])
    }
}

pub struct Engine {
    runtimes: HashMap<Virtualization, Arc<dyn Runtime>>,
    records: Collection<Record>,
    slots: Mutex<HashMap<String, Slot>>,
    updates: mpsc::UnboundedSender<JobStatus>,
    config: EngineConfig,
    pub metrics: Metrics,
    cpu: std::sync::Mutex<HashMap<String, (Instant, u64)>>,
    generation: AtomicU64,
    /// Runs the instances' health probes.
    checker: Arc<dyn crate::probes::Checker>,
}

impl Engine {
    /// The engine and the stream of status changes it produces (for the uplink).
    pub fn new(
        runtimes: Vec<Arc<dyn Runtime>>,
        store: SharedStore,
        config: EngineConfig,
    ) -> (Arc<Engine>, mpsc::UnboundedReceiver<JobStatus>) {
        let (updates, rx) = mpsc::unbounded_channel();
        let engine = Engine {
            runtimes: runtimes.into_iter().map(|r| (r.kind(), r)).collect(),
            records: Collection::new(store, "instances"),
            slots: Mutex::new(HashMap::new()),
            updates,
            config,
            metrics: Metrics::default(),
            cpu: std::sync::Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            checker: Arc::new(crate::probes::Network),
        };
        (Arc::new(engine), rx)
    }

    /// The runtimes this engine offers, as Oakestra names them in registration.
    pub fn virtualizations(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for kind in Virtualization::ALL {
            if self.runtimes.get(kind).is_some_and(|rt| rt.offered()) {
                if *kind == Virtualization::Container {
                    v.push("docker".into());
                }
                v.push(kind.as_str().into());
            }
        }
        v
    }

    fn workload(&self, name: &str, msg: &DeployMessage) -> Result<Workload, Refused> {
        let refuse = |detail: String| Refused {
            job_name: msg.job_name.clone(),
            instance: msg.instance_number,
            detail,
        };
        let DeployOrder {
            instance: n, spec, ..
        } = msg.parse().map_err(|e| refuse(e.to_string()))?;
        if !self.runtimes.contains_key(&spec.virtualization) {
            return Err(refuse(format!(
                "virtualization: this worker does not run {}",
                spec.virtualization.as_str()
            )));
        }
        if let Some(field) = probe_field(&spec) {
            let why = match spec.virtualization {
                Virtualization::Wasm => Some("a wasm instance has no sockets to probe"),
                Virtualization::Unikernel if self.config.overlay.is_none() => Some(
                    "a unikernel has no network on a worker without the overlay (--no-overlay)",
                ),
                _ => None,
            };
            if let Some(why) = why {
                return Err(refuse(format!("{field}: {why}")));
            }
        }
        Ok(Workload {
            id: runtime_id(name),
            name: name.to_owned(),
            instance: n,
            spec,
            log_path: self.config.log_dir.join(format!("{name}.log")),
            netns: None,
            resolv_conf: None,
            overlay: None,
        })
    }

    fn status_message(
        &self,
        job: &str,
        n: u32,
        status: InstanceStatus,
        detail: &str,
        ns_ip: Option<std::net::Ipv4Addr>,
        ready: bool,
    ) -> JobStatus {
        JobStatus {
            ready,
            ns_ip: ns_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            sname: job.to_owned(),
            instance: n,
            status: status.as_str().to_owned(),
            status_detail: detail.to_owned(),
            publicip: self.config.public_ip.clone(),
        }
    }

    fn report(&self, job: &str, n: u32, status: InstanceStatus, detail: &str) {
        let _ = self
            .updates
            .send(self.status_message(job, n, status, detail, None, true));
    }

    /// Records where instance `name` is on the overlay (if the slot is still this
    /// generation's).
    async fn attached(&self, name: &str, generation: u64, address: std::net::Ipv4Addr) {
        if let Some(slot) = self
            .slots
            .lock()
            .await
            .get_mut(name)
            .filter(|s| s.generation == generation)
        {
            slot.ns_ip = Some(address);
        }
    }

    /// Answers a deploy the engine cannot take (a malformed message or one [`Engine::deploy`]
    /// refused) with `FAILED` and the reason.
    pub fn refuse(&self, r: &Refused) {
        tracing::warn!(job = %r.job_name, instance = r.instance, detail = %r.detail, "deploy refused");
        self.report(&r.job_name, r.instance, InstanceStatus::Failed, &r.detail);
    }

    /// Starts an instance (or confirms it, when the same deploy arrives again). A different
    /// deploy of the same instance replaces it; a deploy of an instance that is being deleted
    /// waits for the delete to finish and then starts it anew.
    pub async fn deploy(self: &Arc<Self>, msg: DeployMessage) -> Result<(), Refused> {
        let name = instance_name(&msg.job_name, msg.instance_number).map_err(|detail| Refused {
            job_name: msg.job_name.clone(),
            instance: msg.instance_number,
            detail,
        })?;
        let workload = self.workload(&name, &msg)?;
        let mut slots = self.slots.lock().await;
        if let Some(slot) = slots.get_mut(&name) {
            let stopping = *slot.stop.borrow() != Stop::No;
            if !stopping && same_deploy(&slot.deploy, &msg) && !ended(slot.status) {
                self.report(
                    &msg.job_name,
                    msg.instance_number,
                    slot.status,
                    &slot.detail,
                );
                return Ok(());
            }
            if !stopping {
                slot.stop.send_replace(Stop::Replace);
            }
            let done = slot.phase.clone();
            drop(slots);
            supervisor::finished(done).await;
            slots = self.slots.lock().await;
        }
        let record = Record {
            deploy: msg.clone(),
            status: InstanceStatus::Creating,
            detail: String::new(),
        };
        if let Err(e) = self.records.put(&name, &record).await {
            return Err(Refused {
                job_name: msg.job_name,
                instance: msg.instance_number,
                detail: format!("cannot record the instance: {e}"),
            });
        }
        self.spawn(&mut slots, name, workload, record, Resume::Start);
        Ok(())
    }

    fn spawn(
        self: &Arc<Self>,
        slots: &mut HashMap<String, Slot>,
        name: String,
        workload: Workload,
        record: Record,
        resume: Resume,
    ) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let ready = workload.spec.readiness_probe.is_none();
        let (stop, stop_rx) = watch::channel(Stop::No);
        let (phase_tx, phase) = watch::channel(resume.first_phase());
        tokio::spawn(
            self.clone()
                .supervise(name.clone(), generation, stop_rx, phase_tx, resume),
        );
        slots.insert(
            name,
            Slot {
                workload,
                deploy: record.deploy,
                status: record.status,
                detail: record.detail,
                stop,
                phase,
                generation,
                ns_ip: None,
                ready,
            },
        );
    }

    /// Stops and forgets an instance; answers `UNDEPLOYED` (also for one it does not hold).
    /// Returns once the workload is gone, also when another delete of it is under way.
    pub async fn delete(&self, job: &str, n: u32) {
        let Ok(name) = instance_name(job, n) else {
            tracing::warn!(job, instance = n, "delete for a malformed job name dropped");
            return;
        };
        let done = {
            let slots = self.slots.lock().await;
            slots.get(&name).map(|slot| {
                slot.stop.send_replace(Stop::Delete);
                slot.phase.clone()
            })
        };
        match done {
            Some(done) => supervisor::finished(done).await,
            None => self.report(job, n, InstanceStatus::Undeployed, ""),
        }
    }

    /// Records a status change (if the slot is still this generation's) and reports it.
    /// Only ended statuses are written to disk: recovery asks the runtime whether a workload
    /// runs, so `CREATING`/`RUNNING` on disk would add a write to every start for nothing.
    /// Records that the readiness of instance `name` changed (if the slot is still this
    /// generation's) and, while it runs, reports it at once: the cluster puts it in or takes
    /// it out of its service's table, the root's rolling update counts it or not.
    async fn set_ready(&self, name: &str, generation: u64, ready: bool) {
        let msg = {
            let mut slots = self.slots.lock().await;
            let Some(slot) = slots.get_mut(name).filter(|s| s.generation == generation) else {
                return;
            };
            if slot.ready == ready {
                return;
            }
            slot.ready = ready;
            if slot.status != InstanceStatus::Running {
                return;
            }
            self.status_message(
                &slot.deploy.job_name,
                slot.deploy.instance_number,
                slot.status,
                &slot.detail,
                slot.ns_ip,
                ready,
            )
        };
        tracing::info!(instance = name, ready, "instance readiness");
        let _ = self.updates.send(msg);
    }

    /// Where the probes of `w` reach it: its overlay address, or the host's loopback for a
    /// workload on the host's network; `None` while its overlay address is unknown.
    async fn probe_host(&self, name: &str, w: &Workload) -> Option<std::net::Ipv4Addr> {
        if self.overlay_for(w).is_none() {
            return Some(std::net::Ipv4Addr::LOCALHOST);
        }
        self.slots.lock().await.get(name).and_then(|s| s.ns_ip)
    }

    async fn set(&self, name: &str, generation: u64, status: InstanceStatus, detail: &str) {
        let record = {
            let mut slots = self.slots.lock().await;
            let Some(slot) = slots.get_mut(name).filter(|s| s.generation == generation) else {
                return;
            };
            slot.status = status;
            slot.detail = detail.to_owned();
            (
                Record {
                    deploy: slot.deploy.clone(),
                    status,
                    detail: detail.to_owned(),
                },
                slot.ns_ip,
                slot.ready,
            )
        };
        let (record, ns_ip, ready) = record;
        tracing::info!(instance = name, status = %status, detail, "instance status");
        let _ = self.updates.send(self.status_message(
            &record.deploy.job_name,
            record.deploy.instance_number,
            status,
            detail,
            ns_ip.filter(|_| status == InstanceStatus::Running),
            ready,
        ));
        if ended(status)
            && let Err(e) = self.records.put(name, &record).await
        {
            tracing::error!(instance = name, error = %e, "cannot record a status");
        }
    }

    /// The worker's net manager, unless `--no-overlay`.
    pub fn net_manager(&self) -> Option<&crate::overlay::NetManager> {
        self.config.overlay.as_ref()
    }

    /// The net manager, when `w` goes on the overlay (containers and VMs do; wasm has no
    /// sockets).
    fn overlay_for(&self, w: &Workload) -> Option<&crate::overlay::NetManager> {
        self.config
            .overlay
            .as_ref()
            .filter(|_| on_overlay(w.spec.virtualization))
    }

    /// The runtime for `kind` (`workload()` refuses kinds without one, so it is present for
    /// every slot).
    fn runtime(&self, kind: Virtualization) -> Option<Arc<dyn Runtime>> {
        self.runtimes.get(&kind).cloned()
    }

    /// Resolves once no start or stop is in flight (new ones that begin meanwhile included).
    pub async fn settled(&self) {
        loop {
            let waits: Vec<_> = {
                let slots = self.slots.lock().await;
                slots
                    .values()
                    .filter(|s| s.in_flight())
                    .map(Slot::settled)
                    .collect()
            };
            if waits.is_empty() {
                return;
            }
            futures::future::join_all(waits).await;
        }
    }

    /// Ends the engine's work before the process exits. Waits (up to the stop grace plus a
    /// margin) for every start and stop in flight, so no workload is left half started or
    /// half removed. With `remove` (`--remove-on-exit`), then deletes every instance and
    /// removes whatever the runtimes still hold in the engine's namespace, tracked or not.
    /// Without it, running workloads stay up for the next engine to re-attach to.
    pub async fn shutdown(&self, remove: bool) {
        let bound = self.config.stop_grace + SHUTDOWN_MARGIN;
        if tokio::time::timeout(bound, self.settled()).await.is_err() {
            tracing::warn!(
                ?bound,
                "work in flight did not finish in time; exiting anyway"
            );
        }
        if !remove {
            return;
        }
        tracing::info!("removing every instance before exit");
        let names: Vec<(String, u32)> = self
            .slots
            .lock()
            .await
            .values()
            .map(|s| (s.deploy.job_name.clone(), s.deploy.instance_number))
            .collect();
        let deletes = names.iter().map(|(job, n)| self.delete(job, *n));
        if tokio::time::timeout(bound, futures::future::join_all(deletes))
            .await
            .is_err()
        {
            tracing::warn!(?bound, "some instances did not stop in time");
        }
        for rt in self.runtimes.values() {
            match rt.sweep(&[]).await {
                Ok(removed) if !removed.is_empty() => {
                    tracing::warn!(
                        runtime = rt.kind().as_str(),
                        ?removed,
                        "removed what was left in the runtime"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(runtime = rt.kind().as_str(), error = %e, "cannot empty the runtime")
                }
            }
        }
    }

    /// The current status of every instance (sent when the uplink (re)connects).
    pub async fn statuses(&self) -> Vec<JobStatus> {
        self.slots
            .lock()
            .await
            .values()
            .map(|s| {
                self.status_message(
                    &s.deploy.job_name,
                    s.deploy.instance_number,
                    s.status,
                    &s.detail,
                    s.ns_ip.filter(|_| s.status == InstanceStatus::Running),
                    s.ready,
                )
            })
            .collect()
    }

    pub async fn instances(&self) -> Vec<InstanceView> {
        let mut v: Vec<InstanceView> = self
            .slots
            .lock()
            .await
            .iter()
            .map(|(name, s)| InstanceView {
                name: name.clone(),
                job_name: s.deploy.job_name.clone(),
                instance_number: s.deploy.instance_number,
                virtualization: s.workload.spec.virtualization.as_str().into(),
                runtime_id: s.workload.id.clone(),
                status: s.status.as_str().into(),
                status_detail: s.detail.clone(),
                ready: s.ready,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Runtime ids of the workloads the engine holds as running (their supervisor waits on
    /// them), sorted.
    pub async fn running_workloads(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .slots
            .lock()
            .await
            .values()
            .filter(|s| *s.phase.borrow() == Phase::Running)
            .map(|s| s.workload.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Instances by status (for the metrics gauge).
    pub async fn count_by_status(&self) -> BTreeMap<InstanceStatus, i64> {
        let mut m = BTreeMap::new();
        for s in self.slots.lock().await.values() {
            *m.entry(s.status).or_insert(0) += 1;
        }
        m
    }

    /// The log file of instance `n` of `job`; `Err` says why there is none to stream.
    pub async fn log_file(&self, job: &str, n: u32) -> Result<std::path::PathBuf, String> {
        let name = instance_name(job, n)?;
        self.slots
            .lock()
            .await
            .get(&name)
            .map(|s| s.workload.log_path.clone())
            .ok_or_else(|| format!("no instance {name} on this worker"))
    }

    /// An instance's log (the last `max` bytes, or all); `None` for an unknown instance.
    pub async fn logs(
        &self,
        name: &str,
        max: Option<u64>,
    ) -> Option<Result<Vec<u8>, crate::runtime::RuntimeError>> {
        let w = self
            .slots
            .lock()
            .await
            .get(name)
            .map(|s| s.workload.clone())?;
        let rt = self.runtime(w.spec.virtualization)?;
        Some(rt.logs(&w, max).await)
    }
}

/// `<job>.instance.<n>` after checking the job name.
/// Whether instances of `kind` go on the overlay (containers and VMs; WASI preview 1 has no
/// sockets).
fn on_overlay(kind: Virtualization) -> bool {
    matches!(kind, Virtualization::Container | Virtualization::Unikernel)
}

/// The first probe `spec` has, by its SLA field name.
fn probe_field(spec: &canopy_core::ServiceSpec) -> Option<&'static str> {
    if spec.readiness_probe.is_some() {
        Some("readiness_probe")
    } else if spec.liveness_probe.is_some() {
        Some("liveness_probe")
    } else {
        None
    }
}

fn instance_name(job: &str, n: u32) -> Result<String, String> {
    let job: canopy_core::JobName = job.parse().map_err(|e| format!("job_name: {e}"))?;
    Ok(job.instance_name(InstanceNumber(n)))
}

/// The same instance with the same spec (the `status` field does not matter).
fn same_deploy(a: &DeployMessage, b: &DeployMessage) -> bool {
    let mut b = b.clone();
    b.status = a.status.clone();
    *a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_fit_containerd() {
        assert_eq!(runtime_id("a.b.c.d.instance.0"), "a.b.c.d.instance.0");
        let long = format!("{}.b.c.d.instance.0", "a".repeat(80));
        let id = runtime_id(&long);
        assert!(id.len() <= 76 && id.starts_with("canopy-"));
        assert_eq!(id, runtime_id(&long));
    }

    #[test]
    fn containers_and_vms_go_on_the_overlay_wasm_does_not() {
        assert!(on_overlay(Virtualization::Container));
        assert!(on_overlay(Virtualization::Unikernel));
        assert!(!on_overlay(Virtualization::Wasm));
    }

    #[test]
    fn instance_names_check_the_job() {
        assert_eq!(instance_name("a.b.c.d", 2).unwrap(), "a.b.c.d.instance.2");
        assert!(
            instance_name("../etc", 0)
                .unwrap_err()
                .starts_with("job_name")
        );
    }
}
