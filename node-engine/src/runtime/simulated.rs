//! The runtime of the benchmark mode (`--bench-virtual-workers`): instances "start" at once and
//! run until stopped, doing nothing. Everything around it — registration, MQTT, statuses,
//! reports, records — is the real engine, so a cluster cannot tell a virtual worker from a real
//! one except by its speed. Never offered by a normal engine.

use super::{Exit, Result, RunState, Runtime, RuntimeError, Stats, Workload};
use async_trait::async_trait;
use canopy_core::Virtualization;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Exit code of a simulated instance that was stopped (as for a SIGKILLed process).
const STOPPED: i32 = 137;

pub struct SimulatedRuntime {
    kind: Virtualization,
    /// Running instances; sending `true` stops one.
    running: Mutex<HashMap<String, Arc<watch::Sender<bool>>>>,
}

impl SimulatedRuntime {
    pub fn new(kind: Virtualization) -> SimulatedRuntime {
        SimulatedRuntime {
            kind,
            running: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, id: &str) -> Option<Arc<watch::Sender<bool>>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}

#[async_trait]
impl Runtime for SimulatedRuntime {
    fn kind(&self) -> Virtualization {
        self.kind
    }

    async fn start(&self, w: &Workload) -> Result<()> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(w.id.clone(), Arc::new(watch::channel(false).0));
        Ok(())
    }

    async fn wait(&self, id: &str) -> Result<Exit> {
        let stop = self
            .get(id)
            .ok_or_else(|| RuntimeError::Backend(format!("no simulated instance {id}")))?;
        let mut rx = stop.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
        Ok(Exit { code: STOPPED })
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<()> {
        if let Some(s) = self.get(id) {
            s.send_replace(true);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let removed = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(s) = removed {
            s.send_replace(true);
        }
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<RunState> {
        Ok(match self.get(id) {
            Some(s) if !*s.borrow() => RunState::Running,
            Some(_) => RunState::Exited(Exit { code: STOPPED }),
            None => RunState::Missing,
        })
    }

    async fn stats(&self, _id: &str) -> Result<Stats> {
        Ok(Stats::default())
    }

    async fn recover(&self, _w: &Workload) -> Result<RunState> {
        Ok(RunState::Missing)
    }

    async fn list(&self) -> Result<Vec<String>> {
        Ok(self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect())
    }
}
