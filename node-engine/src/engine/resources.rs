//! The use and log tail of every running instance, for `nodes/<id>/jobs/resources`.

use super::{Engine, LOG_TAIL_BYTES};
use crate::runtime::Workload;
use canopy_core::InstanceStatus;
use canopy_proto::worker::{ResourcesReport, ServiceResources};
use std::time::Instant;

impl Engine {
    /// Use and log tail of every running instance. CPU is a percentage of the machine over
    /// the time since the previous report.
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
}
