//! Keeping what the runtimes hold equal to what the engine tracks.
//!
//! - [`Engine::recover`], after a start: workloads in the runtime that no record names are
//!   removed; a record whose workload still runs is re-attached (not restarted); one whose
//!   workload died is started again, unless it is a one-shot that completed.
//! - [`Engine::remove_untracked`], periodically while the engine runs: a workload in the
//!   engine's namespace that no instance names is a bug (or an outside hand); it is logged as
//!   an error, removed and counted in `/metrics`, so such a bug cannot leave a workload behind
//!   silently.

use super::{Engine, Resume, ended, runtime_id};
use crate::runtime::{Exit, RunState};
use canopy_core::InstanceStatus;
use std::collections::HashSet;
use std::sync::Arc;

impl Engine {
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

    /// Removes every workload a runtime holds that no instance names; returns their ids.
    ///
    /// The runtime is listed and the untracked ones removed while the instance table is
    /// locked: a slot is added before its workload is created and dropped only after its
    /// workload is removed, so under the lock "listed but untracked" means untracked.
    pub async fn remove_untracked(&self) -> Vec<String> {
        let mut removed = Vec::new();
        let slots = self.slots.lock().await;
        let tracked: HashSet<&str> = slots.values().map(|s| s.workload.id.as_str()).collect();
        for rt in self.runtimes.values() {
            let kind = rt.kind().as_str();
            let listed = match rt.list_instances().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(runtime = kind, error = %e, "cannot list workloads");
                    continue;
                }
            };
            for id in listed
                .into_iter()
                .filter(|id| !tracked.contains(id.as_str()))
            {
                tracing::error!(
                    runtime = kind,
                    workload = %id,
                    "a workload nothing tracks is in the engine's namespace; removing it"
                );
                match rt.remove(&id).await {
                    Ok(()) => {
                        self.metrics.untracked_removed(kind);
                        removed.push(id);
                    }
                    Err(e) => {
                        tracing::error!(runtime = kind, workload = %id, error = %e, "cannot remove an untracked workload")
                    }
                }
            }
        }
        removed
    }
}
