//! The engine: the instances this worker was told to run, each watched by one supervisor
//! task, persisted so a restarted engine picks them up again.
//!
//! An instance's life on the worker: `CREATING` (fetch and start) → `RUNNING` → it exits
//! (`COMPLETED` for a one-shot exit 0, `DEAD` otherwise) or fails to start (`FAILED` with the
//! reason). Restarting is the cluster's decision, as in Oakestra: an ended instance stays
//! recorded until the cluster deletes or redeploys it. A delete stops it and answers
//! `UNDEPLOYED`.
//!
//! After a restart ([`Engine::recover`]): workloads in the runtime that no record names are
//! removed; a record whose workload still runs is re-attached (not restarted); one whose
//! workload died is started again, unless it is a one-shot that completed.

use crate::metrics::Metrics;
use crate::runtime::{Exit, RunState, Runtime, RuntimeError, Workload};
use canopy_core::{InstanceNumber, InstanceStatus, Virtualization};
use canopy_proto::worker::{
    DeleteMessage, DeployMessage, JobStatus, ResourcesReport, ServiceResources,
};
use canopy_store::{Collection, SharedStore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

/// Bytes of log sent with each resource report (Oakestra sends 1024).
pub const LOG_TAIL_BYTES: u64 = 1024;

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
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Per-instance log files live here.
    pub log_dir: PathBuf,
    /// SIGTERM → SIGKILL grace when stopping.
    pub stop_grace: Duration,
    /// Reported as `publicip` with every status.
    pub public_ip: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// The cluster deleted the instance.
    Delete,
    /// A new deploy for the same instance replaces it.
    Replace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    Start,
    Attached,
    Ended,
}

struct Slot {
    workload: Workload,
    deploy: DeployMessage,
    status: InstanceStatus,
    detail: String,
    stop: watch::Sender<Stop>,
    task: Option<JoinHandle<()>>,
    generation: u64,
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
        };
        (Arc::new(engine), rx)
    }

    /// The runtimes this engine offers, as Oakestra names them in registration.
    pub fn virtualizations(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for kind in Virtualization::ALL {
            if self.runtimes.contains_key(kind) {
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
        let canopy_proto::worker::DeployOrder {
            instance: n, spec, ..
        } = msg.parse().map_err(|e| refuse(e.to_string()))?;
        if !self.runtimes.contains_key(&spec.virtualization) {
            return Err(refuse(format!(
                "virtualization: this worker does not run {}",
                spec.virtualization.as_str()
            )));
        }
        Ok(Workload {
            id: runtime_id(name),
            name: name.to_owned(),
            instance: n,
            spec,
            log_path: self.config.log_dir.join(format!("{name}.log")),
        })
    }

    fn status_message(&self, job: &str, n: u32, status: InstanceStatus, detail: &str) -> JobStatus {
        JobStatus {
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
            .send(self.status_message(job, n, status, detail));
    }

    /// Handles a `control/deploy` payload. Anything wrong with it is answered with `FAILED`
    /// and a detail naming the field; nothing here can stop the engine.
    pub async fn deploy_payload(self: &Arc<Self>, payload: &[u8]) {
        self.metrics.mqtt_message("in", "deploy");
        let value: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "deploy message is not JSON; dropped");
                return;
            }
        };
        let job = value
            .get("job_name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let n = value
            .get("instance_number")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| u32::try_from(n).ok());
        let msg = match canopy_daemon::json_body::<DeployMessage>(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(field = %e.field, error = %e.message, "bad deploy message");
                if let (Some(job), Some(n)) = (job, n) {
                    self.report(
                        &job,
                        n,
                        InstanceStatus::Failed,
                        &format!("{}: {}", e.field, e.message),
                    );
                }
                return;
            }
        };
        if let Err(r) = self.deploy(msg).await {
            tracing::warn!(job = %r.job_name, instance = r.instance, detail = %r.detail, "deploy refused");
            self.report(&r.job_name, r.instance, InstanceStatus::Failed, &r.detail);
        }
    }

    /// Handles a `control/delete` payload.
    pub async fn delete_payload(self: &Arc<Self>, payload: &[u8]) {
        self.metrics.mqtt_message("in", "delete");
        match canopy_daemon::json_body::<DeleteMessage>(payload) {
            Ok(m) => self.delete(&m.job_name, m.instance_number).await,
            Err(e) => {
                tracing::warn!(field = %e.field, error = %e.message, "bad delete message dropped")
            }
        }
    }

    /// Starts an instance (or confirms it, when the same deploy arrives again).
    pub async fn deploy(self: &Arc<Self>, msg: DeployMessage) -> Result<(), Refused> {
        let name = instance_name(&msg.job_name, msg.instance_number).map_err(|detail| Refused {
            job_name: msg.job_name.clone(),
            instance: msg.instance_number,
            detail,
        })?;
        let workload = self.workload(&name, &msg)?;
        let mut slots = self.slots.lock().await;
        if let Some(slot) = slots.get_mut(&name) {
            if same_deploy(&slot.deploy, &msg) && !ended(slot.status) {
                self.report(
                    &msg.job_name,
                    msg.instance_number,
                    slot.status,
                    &slot.detail,
                );
                return Ok(());
            }
            slot.stop.send_replace(Stop::Replace);
            let task = slot.task.take();
            drop(slots);
            if let Some(t) = task {
                let _ = t.await;
            }
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
        let (stop, stop_rx) = watch::channel(Stop::No);
        let task = tokio::spawn(
            self.clone()
                .supervise(name.clone(), generation, stop_rx, resume),
        );
        slots.insert(
            name,
            Slot {
                workload,
                deploy: record.deploy,
                status: record.status,
                detail: record.detail,
                stop,
                task: Some(task),
                generation,
            },
        );
    }

    /// Stops and forgets an instance; answers `UNDEPLOYED` (also for one it does not hold).
    pub async fn delete(&self, job: &str, n: u32) {
        let Ok(name) = instance_name(job, n) else {
            tracing::warn!(job, instance = n, "delete for a malformed job name dropped");
            return;
        };
        let task = {
            let mut slots = self.slots.lock().await;
            match slots.get_mut(&name) {
                Some(slot) => {
                    slot.stop.send_replace(Stop::Delete);
                    slot.task.take()
                }
                None => None,
            }
        };
        match task {
            Some(t) => {
                let _ = t.await;
            }
            None => self.report(job, n, InstanceStatus::Undeployed, ""),
        }
    }

    /// Records a status change (if the slot is still this generation's) and reports it.
    /// Only ended statuses are written to disk: recovery asks the runtime whether a workload
    /// runs, so `CREATING`/`RUNNING` on disk would add a write to every start for nothing.
    async fn set(&self, name: &str, generation: u64, status: InstanceStatus, detail: &str) {
        let record = {
            let mut slots = self.slots.lock().await;
            let Some(slot) = slots.get_mut(name).filter(|s| s.generation == generation) else {
                return;
            };
            slot.status = status;
            slot.detail = detail.to_owned();
            Record {
                deploy: slot.deploy.clone(),
                status,
                detail: detail.to_owned(),
            }
        };
        tracing::info!(instance = name, status = %status, detail, "instance status");
        self.report(
            &record.deploy.job_name,
            record.deploy.instance_number,
            status,
            detail,
        );
        if ended(status)
            && let Err(e) = self.records.put(name, &record).await
        {
            tracing::error!(instance = name, error = %e, "cannot record a status");
        }
    }

    /// The runtime for `kind` (`workload()` refuses kinds without one, so it is present for
    /// every slot).
    fn runtime(&self, kind: Virtualization) -> Option<Arc<dyn Runtime>> {
        self.runtimes.get(&kind).cloned()
    }

    async fn timed<T>(
        &self,
        rt: &dyn Runtime,
        op: &str,
        f: impl Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        let t = Instant::now();
        let r = f.await;
        self.metrics
            .operation(rt.kind().as_str(), op, r.is_ok(), t.elapsed());
        r
    }

    /// One instance, from start (or re-attach) to its removal.
    async fn supervise(
        self: Arc<Self>,
        name: String,
        generation: u64,
        mut stop: watch::Receiver<Stop>,
        resume: Resume,
    ) {
        let Some((w, one_shot)) = self
            .slots
            .lock()
            .await
            .get(&name)
            .map(|s| (s.workload.clone(), s.deploy.one_shot))
        else {
            return;
        };
        let Some(rt) = self.runtime(w.spec.virtualization) else {
            return;
        };
        let mut running = false;
        match resume {
            Resume::Start => {
                self.set(&name, generation, InstanceStatus::Creating, "")
                    .await;
                match self.timed(&*rt, "start", rt.start(&w)).await {
                    Ok(()) => {
                        running = true;
                        self.set(&name, generation, InstanceStatus::Running, "")
                            .await;
                    }
                    Err(e) => {
                        self.set(&name, generation, InstanceStatus::Failed, &e.detail())
                            .await;
                    }
                }
            }
            Resume::Attached => {
                running = true;
                self.set(
                    &name,
                    generation,
                    InstanceStatus::Running,
                    "re-attached after an engine restart",
                )
                .await;
            }
            Resume::Ended => {}
        }
        if running {
            let exit = {
                let wait = wait_for_exit(&*rt, &w.id);
                tokio::pin!(wait);
                let mut stopping = false;
                loop {
                    tokio::select! {
                        e = &mut wait => break e,
                        changed = stop.changed(), if !stopping => {
                            if changed.is_err() || *stop.borrow() != Stop::No {
                                stopping = true;
                                if let Err(e) = self.timed(&*rt, "stop", rt.stop(&w.id, self.config.stop_grace)).await {
                                    tracing::warn!(instance = %name, error = %e, "stop failed");
                                }
                            }
                        }
                    }
                }
            };
            if *stop.borrow() == Stop::No {
                let (status, detail) = if exit.code == 0 && one_shot {
                    (InstanceStatus::Completed, String::new())
                } else {
                    (
                        InstanceStatus::Dead,
                        format!("exited with code {}", exit.code),
                    )
                };
                if let Err(e) = self.timed(&*rt, "remove", rt.remove(&w.id)).await {
                    tracing::warn!(instance = %name, error = %e, "cleaning up failed");
                }
                self.set(&name, generation, status, &detail).await;
            }
        }
        // Ended: keep the record until the cluster deletes or replaces the instance.
        let reason = match stop.wait_for(|s| *s != Stop::No).await {
            Ok(s) => *s,
            Err(_) => Stop::Delete,
        };
        if let Err(e) = self.timed(&*rt, "remove", rt.remove(&w.id)).await {
            tracing::warn!(instance = %name, error = %e, "removing failed");
        }
        if reason == Stop::Delete {
            if let Err(e) = self.records.delete(&name).await {
                tracing::error!(instance = %name, error = %e, "cannot forget the instance");
            }
            let _ = tokio::fs::remove_file(&w.log_path).await;
            self.cpu
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&w.id);
            let mut slots = self.slots.lock().await;
            if slots.get(&name).is_some_and(|s| s.generation == generation) {
                slots.remove(&name);
            }
            drop(slots);
            tracing::info!(instance = %name, "instance undeployed");
            self.report(
                &w.spec.job_name.to_string(),
                w.instance.0,
                InstanceStatus::Undeployed,
                "",
            );
        }
    }

    /// After a start: removes workloads no record names, re-attaches to the ones still
    /// running, starts again the ones that died. Runs without any cluster.
    pub async fn recover(self: &Arc<Self>) -> Result<(), canopy_store::StoreError> {
        let records = self.records.list().await?;
        let keep: Vec<String> = records.iter().map(|(name, _)| runtime_id(name)).collect();
        for rt in self.runtimes.values() {
            match rt.sweep(&keep).await {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(runtime = rt.kind().as_str(), ?removed, "removed leftovers")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(runtime = rt.kind().as_str(), error = %e, "cannot sweep leftovers")
                }
            }
        }
        let mut slots = self.slots.lock().await;
        for (name, mut record) in records {
            let w = match self.workload(&name, &record.deploy) {
                Ok(w) => w,
                Err(r) => {
                    tracing::warn!(instance = %name, detail = %r.detail, "recorded instance cannot run here; dropped");
                    let _ = self.records.delete(&name).await;
                    continue;
                }
            };
            let resume = if ended(record.status) {
                Resume::Ended
            } else if let Some(rt) = self.runtime(w.spec.virtualization) {
                match self.timed(&*rt, "recover", rt.recover(&w)).await {
                    Ok(RunState::Running) => Resume::Attached,
                    Ok(RunState::Exited(Exit { code: 0 })) if record.deploy.one_shot => {
                        let _ = rt.remove(&w.id).await;
                        record.status = InstanceStatus::Completed;
                        record.detail.clear();
                        let _ = self.records.put(&name, &record).await;
                        self.report(
                            &record.deploy.job_name,
                            record.deploy.instance_number,
                            record.status,
                            "",
                        );
                        Resume::Ended
                    }
                    Ok(_) => Resume::Start,
                    Err(e) => {
                        tracing::warn!(instance = %name, error = %e, "cannot recover; starting again");
                        Resume::Start
                    }
                }
            } else {
                Resume::Start
            };
            tracing::info!(instance = %name, ?resume, "recovered instance");
            self.spawn(&mut slots, name, w, record, resume);
        }
        Ok(())
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
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
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

    /// An instance's log (the last `max` bytes, or all); `None` for an unknown instance.
    pub async fn logs(
        &self,
        name: &str,
        max: Option<u64>,
    ) -> Option<Result<Vec<u8>, RuntimeError>> {
        let w = self
            .slots
            .lock()
            .await
            .get(name)
            .map(|s| s.workload.clone())?;
        let rt = self.runtime(w.spec.virtualization)?;
        Some(rt.logs(&w, max).await)
    }

    /// Use and log tail of every running instance.
    pub async fn resources(&self) -> ResourcesReport {
        let running: Vec<Workload> = self
            .slots
            .lock()
            .await
            .values()
            .filter(|s| s.status == InstanceStatus::Running)
            .map(|s| s.workload.clone())
            .collect();
        let (total_mem, _) = crate::host::memory();
        let cores = f64::from(crate::host::vcpus());
        let mut services = Vec::with_capacity(running.len());
        for w in running {
            let Some(rt) = self.runtime(w.spec.virtualization) else {
                continue;
            };
            let stats = rt.stats(&w.id).await.unwrap_or_default();
            let now = Instant::now();
            let cpu_percent = {
                let mut cpu = self.cpu.lock().unwrap_or_else(|p| p.into_inner());
                let pct = match cpu.get(&w.id) {
                    Some((t0, c0)) if now > *t0 && stats.cpu_ns >= *c0 => {
                        (stats.cpu_ns - c0) as f64
                            / now.duration_since(*t0).as_nanos() as f64
                            / cores
                            * 100.0
                    }
                    _ => 0.0,
                };
                cpu.insert(w.id.clone(), (now, stats.cpu_ns));
                pct.clamp(0.0, 100.0)
            };
            let logs = rt.logs(&w, Some(LOG_TAIL_BYTES)).await.unwrap_or_default();
            services.push(ServiceResources {
                job_name: w.spec.job_name.to_string(),
                instance: w.instance.0,
                cpu_percent,
                memory_percent: if total_mem > 0 {
                    stats.memory_bytes as f64 / total_mem as f64 * 100.0
                } else {
                    0.0
                },
                memory: stats.memory_bytes >> 20,
                disk: stats.disk_bytes,
                logs: String::from_utf8_lossy(&logs).into_owned(),
                virtualization: w.spec.virtualization.as_str().into(),
            });
        }
        ResourcesReport { services }
    }

    /// Stops and removes every instance (for an all-in-one `canopy up` shutting down).
    pub async fn remove_all(&self) {
        let names: Vec<(String, u32)> = self
            .slots
            .lock()
            .await
            .values()
            .map(|s| (s.deploy.job_name.clone(), s.deploy.instance_number))
            .collect();
        for (job, n) in names {
            self.delete(&job, n).await;
        }
    }
}

/// `<job>.instance.<n>` after checking the job name.
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

/// Waits for the workload's exit, riding out a lost connection to the runtime.
async fn wait_for_exit(rt: &dyn Runtime, id: &str) -> Exit {
    loop {
        match rt.wait(id).await {
            Ok(e) => return e,
            Err(e) => {
                tracing::warn!(id, error = %e, "waiting for the workload failed; checking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                match rt.status(id).await {
                    Ok(RunState::Exited(e)) => return e,
                    Ok(RunState::Missing) => return Exit { code: -1 },
                    _ => {}
                }
            }
        }
    }
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
    fn instance_names_check_the_job() {
        assert_eq!(instance_name("a.b.c.d", 2).unwrap(), "a.b.c.d.instance.2");
        assert!(
            instance_name("../etc", 0)
                .unwrap_err()
                .starts_with("job_name")
        );
    }
}
