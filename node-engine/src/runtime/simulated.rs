//! The runtime of the benchmark mode (`--bench-virtual-workers`): instances "start" at once and
//! run until stopped, doing nothing. Everything around it — registration, MQTT, statuses,
//! reports, records — is the real engine, so a cluster cannot tell a virtual worker from a real
//! one except by its speed. Never offered by a normal engine.
//!
//! Tests of the engine's logic use it too: it outlives an engine (as containerd does), so a
//! new engine over the same runtime re-attaches to what still "runs"; [`SimulatedRuntime::exit`]
//! makes a workload end by itself, and [`SimulatedRuntime::ignoring_sigterm`] makes stops take
//! the whole grace, like a PID 1 that ignores SIGTERM.

use super::{Exit, Result, RunState, Runtime, RuntimeError, Stats, Workload};
use async_trait::async_trait;
use canopy_core::Virtualization;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Exit code of a simulated instance that was stopped (as for a SIGKILLed process).
const STOPPED: i32 = 137;

/// One simulated workload: `None` while it runs, its exit code once it ended.
type Workloads = HashMap<String, Arc<watch::Sender<Option<i32>>>>;

pub struct SimulatedRuntime {
    kind: Virtualization,
    workloads: Mutex<Workloads>,
    /// Stops wait the whole grace before the workload ends.
    ignore_sigterm: bool,
}

impl SimulatedRuntime {
    pub fn new(kind: Virtualization) -> SimulatedRuntime {
        SimulatedRuntime {
            kind,
            workloads: Mutex::new(HashMap::new()),
            ignore_sigterm: false,
        }
    }

    /// A runtime whose workloads ignore SIGTERM: a stop ends them only after its grace.
    pub fn ignoring_sigterm(kind: Virtualization) -> SimulatedRuntime {
        SimulatedRuntime {
            ignore_sigterm: true,
            ..SimulatedRuntime::new(kind)
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Workloads> {
        self.workloads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<Arc<watch::Sender<Option<i32>>>> {
        self.table().get(id).cloned()
    }

    /// Makes a running workload end by itself with `code` (a crash, or a one-shot's end).
    /// Returns whether it was running.
    pub fn exit(&self, id: &str, code: i32) -> bool {
        self.get(id)
            .is_some_and(|w| w.send_if_modified(|s| s.is_none() && s.replace(code).is_none()))
    }
}

#[async_trait]
impl Runtime for SimulatedRuntime {
    fn kind(&self) -> Virtualization {
        self.kind
    }

    async fn start(&self, w: &Workload) -> Result<()> {
        self.table()
            .insert(w.id.clone(), Arc::new(watch::channel(None).0));
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<Exit> {
        let w = self
            .get(id)
            .ok_or_else(|| RuntimeError::Backend(format!("no simulated instance {id}")))?;
        let mut rx = w.subscribe();
        let code = match rx.wait_for(Option::is_some).await {
            Ok(code) => code.unwrap_or(STOPPED),
            Err(_) => STOPPED,
        };
        Ok(Exit { code })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        if self.ignore_sigterm {
            tokio::time::sleep(grace).await;
        }
        if let Some(w) = self.get(id) {
            w.send_if_modified(|s| s.is_none() && s.replace(STOPPED).is_none());
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let removed = self.table().remove(id);
        if let Some(w) = removed {
            w.send_if_modified(|s| s.is_none() && s.replace(STOPPED).is_none());
        }
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<RunState> {
        Ok(match self.get(id).map(|w| *w.borrow()) {
            Some(None) => RunState::Running,
            Some(Some(code)) => RunState::Exited(Exit { code }),
            None => RunState::Missing,
        })
    }

    async fn stats(&self, _id: &str) -> Result<Stats> {
        Ok(Stats::default())
    }

    async fn recover(&self, w: &Workload) -> Result<RunState> {
        self.status(&w.id).await
    }

    async fn list(&self) -> Result<Vec<String>> {
        Ok(self.table().keys().cloned().collect())
    }
}
