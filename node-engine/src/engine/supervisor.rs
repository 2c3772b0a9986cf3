//! One instance's supervisor: a task that starts (or re-attaches to) the workload, waits for
//! its exit or for a stop, reports what happened and removes the workload.
//!
//! ```text
//!   Starting ──start ok──▶ Running ──exits by itself──▶ Stopping ──▶ Ended ──stop asked──▶ Stopping ──▶ (finished)
//!      │                      │                                                                ▲
//!      └──start failed──▶ Ended          └───────────stop asked (delete / replace)────────────┘
//! ```
//!
//! The phase is published on a watch channel the engine reads; the channel closes when the
//! supervisor is finished, which is how a delete, a replacing deploy and a shutdown wait for
//! it. What an exit means is decided by the pure [`classify_exit`].
//!
//! While the workload runs, its health probes ([`crate::probes::watch`]) run beside the
//! wait: a readiness change is recorded and reported at once; a liveness failure stops the
//! workload, which then ends `FAILED` with the probe's detail.

use super::Engine;
use crate::probes::{self, Probes};
use crate::runtime::{Exit, RunState, Runtime, RuntimeError};
use canopy_core::InstanceStatus;
use canopy_core::span::{self, Hop};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the supervisor is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching and starting the workload.
    Starting,
    /// The workload runs; the supervisor waits for its exit or for a stop.
    Running,
    /// Stopping and removing the workload.
    Stopping,
    /// No workload runs; the record stays until the cluster deletes or replaces the instance.
    Ended,
}

impl Phase {
    /// A runtime operation is under way in this phase.
    pub fn in_flight(self) -> bool {
        matches!(self, Phase::Starting | Phase::Stopping)
    }
}

/// Why a supervisor is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    No,
    /// The cluster deleted the instance.
    Delete,
    /// A new deploy for the same instance replaces it.
    Replace,
}

/// How a supervisor begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resume {
    /// Start the workload.
    Start,
    /// The workload already runs (found after an engine restart).
    Attached,
    /// The instance already ended; only wait for its delete or replacement.
    Ended,
}

impl Resume {
    pub(super) fn first_phase(self) -> Phase {
        match self {
            Resume::Start => Phase::Starting,
            Resume::Attached => Phase::Running,
            Resume::Ended => Phase::Ended,
        }
    }
}

/// What the end of a workload means for its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It was stopped on purpose (delete or replace): the stop reports, not the exit.
    Stopped,
    /// It ended by itself: report this status.
    Ended {
        status: InstanceStatus,
        detail: String,
    },
}

/// The meaning of an exit: a stop asked for is not a crash; a workload stopped because its
/// liveness probe failed is `FAILED` with the probe's detail; a one-shot that exits 0 is
/// `COMPLETED`; any other exit is `DEAD` with its code.
pub fn classify_exit(exit: Exit, one_shot: bool, stop: Stop, liveness: Option<&str>) -> Outcome {
    if stop != Stop::No {
        return Outcome::Stopped;
    }
    if let Some(detail) = liveness {
        return Outcome::Ended {
            status: InstanceStatus::Failed,
            detail: detail.to_owned(),
        };
    }
    if exit.code == 0 && one_shot {
        Outcome::Ended {
            status: InstanceStatus::Completed,
            detail: String::new(),
        }
    } else {
        Outcome::Ended {
            status: InstanceStatus::Dead,
            detail: format!("exited with code {}", exit.code),
        }
    }
}

/// Resolves when the supervisor behind `phase` is finished (its channel closed).
pub(super) async fn finished(mut phase: watch::Receiver<Phase>) {
    while phase.changed().await.is_ok() {}
}

impl Engine {
    pub(super) async fn timed<T>(
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
    pub(super) async fn supervise(
        self: Arc<Self>,
        name: String,
        generation: u64,
        mut stop: watch::Receiver<Stop>,
        phase: watch::Sender<Phase>,
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
        let mut w = w;
        let running = match resume {
            Resume::Start => {
                self.set(&name, generation, InstanceStatus::Creating, "")
                    .await;
                let started = match self.overlay_for(&w) {
                    Some(net) => match net.attach(&name, &w.spec.ports).await {
                        Ok(a) => {
                            w.overlay = Some(a.instance_net());
                            w.netns = Some(a.netns);
                            w.resolv_conf = a.resolv_conf;
                            self.attached(&name, generation, a.address).await;
                            Ok(())
                        }
                        Err(e) => Err(RuntimeError::bad("overlay", e.to_string())),
                    },
                    None => Ok(()),
                };
                let (job, n) = (&w.spec.job_name, w.instance.0);
                let started = match started {
                    Ok(()) => {
                        span::mark(Hop::EngineStarting, job, n);
                        self.timed(&*rt, "start", rt.start(&w)).await
                    }
                    Err(e) => Err(e),
                };
                match started {
                    Ok(()) => {
                        span::mark(Hop::EngineStarted, job, n);
                        self.set(&name, generation, InstanceStatus::Running, "")
                            .await;
                        true
                    }
                    Err(e) => {
                        self.set(&name, generation, InstanceStatus::Failed, &e.detail())
                            .await;
                        false
                    }
                }
            }
            Resume::Attached => {
                // The same name answers the same network: learn its address again.
                if let Some(net) = self.overlay_for(&w) {
                    match net.attach(&name, &w.spec.ports).await {
                        Ok(a) => self.attached(&name, generation, a.address).await,
                        Err(e) => {
                            tracing::warn!(instance = %name, error = %e, "cannot learn the instance's overlay address")
                        }
                    }
                }
                self.set(
                    &name,
                    generation,
                    InstanceStatus::Running,
                    "re-attached after an engine restart",
                )
                .await;
                true
            }
            Resume::Ended => false,
        };
        if running {
            phase.send_replace(Phase::Running);
            let probes = Probes::of(&w.spec);
            let host = if probes.is_empty() {
                None
            } else {
                self.probe_host(&name, &w).await
            };
            if !probes.is_empty() && host.is_none() {
                tracing::warn!(instance = %name, "its overlay address is unknown: its probes do not run");
            }
            let (ready_tx, mut ready_rx) = watch::channel(probes.readiness.is_none());
            let mut liveness_failed: Option<String> = None;
            let exit = {
                let wait = wait_for_exit(&*rt, &w.id);
                tokio::pin!(wait);
                let network = self.checker.clone();
                let checker = probes::InstanceChecker {
                    network: &*network,
                    runtime: &*rt,
                    workload: &w,
                };
                let probing = async {
                    match host {
                        Some(host) => probes::watch(&probes, host, &checker, ready_tx).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(probing);
                let mut stopping = false;
                loop {
                    tokio::select! {
                        e = &mut wait => break e,
                        detail = &mut probing, if !stopping => {
                            stopping = true;
                            tracing::warn!(instance = %name, %detail, "stopping the workload");
                            liveness_failed = Some(detail);
                            phase.send_replace(Phase::Stopping);
                            if let Err(e) = self.timed(&*rt, "stop", rt.stop(&w.id, self.config.stop_grace)).await {
                                tracing::warn!(instance = %name, error = %e, "stop failed");
                            }
                        }
                        changed = ready_rx.changed(), if !stopping => {
                            if changed.is_ok() {
                                let ready = *ready_rx.borrow_and_update();
                                self.set_ready(&name, generation, ready).await;
                            }
                        }
                        changed = stop.changed(), if !stopping => {
                            if changed.is_err() || *stop.borrow() != Stop::No {
                                stopping = true;
                                tracing::info!(instance = %name, reason = ?*stop.borrow(), "stopping the workload");
                                phase.send_replace(Phase::Stopping);
                                if let Err(e) = self.timed(&*rt, "stop", rt.stop(&w.id, self.config.stop_grace)).await {
                                    tracing::warn!(instance = %name, error = %e, "stop failed");
                                }
                            }
                        }
                    }
                }
            };
            let asked = *stop.borrow();
            let outcome = classify_exit(exit, one_shot, asked, liveness_failed.as_deref());
            if let Outcome::Ended { status, detail } = outcome {
                phase.send_replace(Phase::Stopping);
                if let Err(e) = self.timed(&*rt, "remove", rt.remove(&w.id)).await {
                    tracing::warn!(instance = %name, error = %e, "cleaning up failed");
                }
                self.set(&name, generation, status, &detail).await;
            }
        }
        // Ended: keep the record until the cluster deletes or replaces the instance.
        if *stop.borrow() == Stop::No {
            phase.send_replace(Phase::Ended);
        }
        let reason = match stop.wait_for(|s| *s != Stop::No).await {
            Ok(s) => *s,
            Err(_) => Stop::Delete,
        };
        phase.send_replace(Phase::Stopping);
        if let Err(e) = self.timed(&*rt, "remove", rt.remove(&w.id)).await {
            tracing::warn!(instance = %name, error = %e, "removing failed");
        }
        if reason == Stop::Delete {
            if let Some(net) = self.overlay_for(&w)
                && let Err(e) = net.detach(&name).await
            {
                tracing::warn!(instance = %name, error = %e, "cannot remove the instance's network");
            }
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
        // `phase` drops here: whoever waits for this supervisor goes on.
    }
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

    fn ended(status: InstanceStatus, detail: &str) -> Outcome {
        Outcome::Ended {
            status,
            detail: detail.into(),
        }
    }

    #[test]
    fn exits_are_classified() {
        use InstanceStatus::{Completed, Dead};
        let cases = [
            // (code, one_shot, stop asked) → outcome; no liveness failure
            (0, true, Stop::No, ended(Completed, "")),
            (0, false, Stop::No, ended(Dead, "exited with code 0")),
            (1, true, Stop::No, ended(Dead, "exited with code 1")),
            (137, false, Stop::No, ended(Dead, "exited with code 137")),
            (-1, false, Stop::No, ended(Dead, "exited with code -1")),
            (137, false, Stop::Delete, Outcome::Stopped),
            (0, true, Stop::Delete, Outcome::Stopped),
            (143, false, Stop::Replace, Outcome::Stopped),
        ];
        for (code, one_shot, stop, want) in cases {
            assert_eq!(
                classify_exit(Exit { code }, one_shot, stop, None),
                want,
                "code {code}, one_shot {one_shot}, {stop:?}"
            );
        }
        // Stopped because its liveness probe failed: FAILED with the probe's detail, unless
        // a delete or a replacement came meanwhile.
        let probe = "liveness probe failed 3 times: TCP connect 127.0.0.1:80 → connection refused";
        for (code, one_shot) in [(143, false), (0, true), (137, false)] {
            assert_eq!(
                classify_exit(Exit { code }, one_shot, Stop::No, Some(probe)),
                ended(InstanceStatus::Failed, probe)
            );
        }
        assert_eq!(
            classify_exit(Exit { code: 143 }, false, Stop::Delete, Some(probe)),
            Outcome::Stopped
        );
    }

    #[test]
    fn only_starting_and_stopping_are_in_flight() {
        assert!(Phase::Starting.in_flight());
        assert!(Phase::Stopping.in_flight());
        assert!(!Phase::Running.in_flight());
        assert!(!Phase::Ended.in_flight());
        assert_eq!(Resume::Start.first_phase(), Phase::Starting);
        assert_eq!(Resume::Attached.first_phase(), Phase::Running);
        assert_eq!(Resume::Ended.first_phase(), Phase::Ended);
    }
}
