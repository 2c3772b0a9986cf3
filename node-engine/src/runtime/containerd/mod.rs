//! Containers through containerd 1.6 (`containerd-client`, runc v2 shim), in one containerd
//! namespace that the engine owns. The shim keeps a container running while the engine is
//! down; `recover` finds it again by its id.
//!
//! Start: lease → image (present / import / pull, unpack) → snapshot → container → task with
//! both output streams appended to the instance's log file → start.
//! Remove: kill → task → container → snapshot → lease.

pub mod client;
pub mod image;
pub mod oci;
pub mod registry;
pub mod spec;

use super::{Exit, Result, RunState, Runtime, RuntimeError, Stats, Workload, open_log};
use async_trait::async_trait;
use canopy_core::Virtualization;
use client::Containerd;
use containerd_client::types::v1::Status as TaskStatus;
use registry::Registry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Label on every container the engine creates: the instance name.
pub const INSTANCE_LABEL: &str = "canopy.instance";

const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

pub struct ContainerdRuntime {
    ctrd: Containerd,
    registry: Registry,
    scratch: PathBuf,
    /// One image preparation at a time: two unpacks of one layer would collide. Holds the
    /// archives imported so far.
    images: tokio::sync::Mutex<HashMap<PathBuf, image::Imported>>,
    /// The host mounts the unified cgroup v2 hierarchy (else v1, one tree per controller).
    cgroup_v2: bool,
}

impl ContainerdRuntime {
    /// Connects to containerd at `socket`, using `namespace`. `scratch` holds archive imports.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        insecure_registries: Vec<String>,
        scratch: PathBuf,
    ) -> Result<ContainerdRuntime> {
        let ctrd = Containerd::connect(socket, namespace).await?;
        ctrd.ensure_namespace().await?;
        Ok(ContainerdRuntime {
            ctrd,
            registry: Registry::new(insecure_registries)?,
            scratch,
            images: tokio::sync::Mutex::new(HashMap::new()),
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        })
    }

    pub fn containerd(&self) -> &Containerd {
        &self.ctrd
    }

    fn cgroups_path(&self, id: &str) -> String {
        format!("/canopy/{}/{id}", self.ctrd.namespace())
    }

    fn snapshot_key(id: &str) -> String {
        format!("{id}-snapshot")
    }

    fn lease(id: &str) -> String {
        format!("canopy-{id}")
    }

    /// Makes the image runnable without starting anything (used by `start`, and by tools
    /// that want an image ready ahead of time).
    pub async fn prepare_image(&self, code: &str, lease: &str) -> Result<image::Ready> {
        let mut imported = self.images.lock().await;
        image::Images {
            ctrd: &self.ctrd,
            registry: &self.registry,
            scratch: &self.scratch,
            imported: &mut imported,
        }
        .ensure(code, lease)
        .await
    }

    async fn create_and_start(&self, w: &Workload, lease: &str) -> Result<()> {
        let ready = self.prepare_image(&w.spec.code, lease).await?;
        let key = Self::snapshot_key(&w.id);
        let mounts = self
            .ctrd
            .snapshot_prepare(lease, &key, &ready.top_chain_id)
            .await?;
        let spec = spec::build(w, &ready.config, &self.cgroups_path(&w.id))?;
        let labels = HashMap::from([(INSTANCE_LABEL.to_owned(), w.name.clone())]);
        self.ctrd
            .container_create(lease, &w.id, &ready.name, &key, spec, labels)
            .await?;
        drop(open_log(&w.log_path)?);
        self.ctrd.task_create(&w.id, mounts, &w.log_path).await?;
        self.ctrd.task_start(&w.id).await?;
        Ok(())
    }

    /// Ids of the namespace's containers that `keep` selects.
    async fn container_ids(
        &self,
        keep: impl Fn(&containerd_client::services::v1::Container) -> bool,
    ) -> Result<Vec<String>> {
        Ok(self
            .ctrd
            .container_list()
            .await?
            .into_iter()
            .filter(|c| keep(c))
            .map(|c| c.id)
            .collect())
    }

    fn cgroup_file(&self, v1_controller: &str, id: &str, file: &str) -> PathBuf {
        let rel = self.cgroups_path(id);
        if self.cgroup_v2 {
            PathBuf::from(format!("/sys/fs/cgroup{rel}/{file}"))
        } else {
            PathBuf::from(format!("/sys/fs/cgroup/{v1_controller}{rel}/{file}"))
        }
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    fn kind(&self) -> Virtualization {
        Virtualization::Container
    }

    async fn start(&self, w: &Workload) -> Result<()> {
        let lease = Self::lease(&w.id);
        if self.ctrd.container_get(&w.id).await?.is_some() {
            if self.status(&w.id).await? == RunState::Running {
                return Ok(());
            }
            self.remove(&w.id).await?;
        } else {
            // No container, so no task: only a snapshot or the lease of an earlier attempt
            // can be left over (two calls at once; a new instance has neither).
            let key = Self::snapshot_key(&w.id);
            let (snapshot, leased) = tokio::join!(
                self.ctrd.snapshot_remove(&key),
                self.ctrd.lease_delete(&lease)
            );
            snapshot?;
            leased?;
        }
        self.ctrd.lease_create(&lease).await?;
        let r = self.create_and_start(w, &lease).await;
        if r.is_err() {
            let _ = self.remove(&w.id).await;
        }
        r
    }

    async fn wait(&self, id: &str) -> Result<Exit> {
        let code = self.ctrd.task_wait(id).await?;
        Ok(Exit {
            code: i32::try_from(code).unwrap_or(i32::MAX),
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        self.ctrd.task_kill(id, SIGTERM).await?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.status(id).await? != RunState::Running {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ctrd.task_kill(id, SIGKILL).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        if let Some(task) = self.ctrd.task_get(id).await? {
            if task.status() != TaskStatus::Stopped {
                self.ctrd.task_kill(id, SIGKILL).await?;
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), self.ctrd.task_wait(id)).await;
            }
            self.ctrd.task_delete(id).await?;
        }
        self.ctrd.container_delete(id).await?;
        self.ctrd.snapshot_remove(&Self::snapshot_key(id)).await?;
        self.ctrd.lease_delete(&Self::lease(id)).await
    }

    async fn status(&self, id: &str) -> Result<RunState> {
        if self.ctrd.container_get(id).await?.is_none() {
            return Ok(RunState::Missing);
        }
        Ok(match self.ctrd.task_get(id).await? {
            None => RunState::Missing,
            Some(t) => match t.status() {
                TaskStatus::Stopped => RunState::Exited(Exit {
                    code: i32::try_from(t.exit_status).unwrap_or(i32::MAX),
                }),
                TaskStatus::Unknown => RunState::Missing,
                _ => RunState::Running,
            },
        })
    }

    async fn stats(&self, id: &str) -> Result<Stats> {
        let (memory_bytes, cpu_ns) = if self.cgroup_v2 {
            let cpu_us = std::fs::read_to_string(self.cgroup_file("", id, "cpu.stat"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("usage_usec "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                });
            (
                read_u64(&self.cgroup_file("", id, "memory.current")),
                cpu_us.map(|us| us * 1000),
            )
        } else {
            (
                read_u64(&self.cgroup_file("memory", id, "memory.usage_in_bytes")),
                read_u64(&self.cgroup_file("cpuacct", id, "cpuacct.usage")),
            )
        };
        let (memory_bytes, cpu_ns) = (memory_bytes.unwrap_or(0), cpu_ns.unwrap_or(0));
        let disk_bytes = self.ctrd.snapshot_usage(&Self::snapshot_key(id)).await?;
        Ok(Stats {
            cpu_ns,
            memory_bytes,
            disk_bytes,
        })
    }

    async fn exec(
        &self,
        w: &Workload,
        command: &[String],
        timeout: Duration,
    ) -> Result<Option<u32>> {
        // The container's own process (user, environment, directory, capabilities) with
        // these arguments.
        let container = self
            .ctrd
            .container_get(&w.id)
            .await?
            .ok_or_else(|| RuntimeError::Backend(format!("no container {}", w.id)))?;
        let spec = container.spec.map(|a| a.value).unwrap_or_default();
        let mut spec: serde_json::Value = serde_json::from_slice(&spec)
            .map_err(|e| RuntimeError::Backend(format!("the container's spec: {e}")))?;
        let mut process = spec["process"].take();
        process["args"] = serde_json::json!(command);
        process["terminal"] = serde_json::json!(false);
        let process =
            serde_json::to_vec(&process).map_err(|e| RuntimeError::Backend(e.to_string()))?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exec_id = format!("probe-{}-{n}", std::process::id());
        self.ctrd.task_exec(&w.id, &exec_id, process, timeout).await
    }

    async fn recover(&self, w: &Workload) -> Result<RunState> {
        self.status(&w.id).await
    }

    async fn list(&self) -> Result<Vec<String>> {
        self.container_ids(|_| true).await
    }

    async fn list_instances(&self) -> Result<Vec<String>> {
        self.container_ids(|c| c.labels.contains_key(INSTANCE_LABEL))
            .await
    }

    async fn sweep(&self, keep: &[String]) -> Result<Vec<String>> {
        let mut removed = super::remove_all_but(self, keep).await?;
        // Snapshots of containers that are gone, and unpacks interrupted by a crash.
        for key in self.ctrd.snapshot_list().await? {
            let orphan = key
                .strip_suffix("-snapshot")
                .is_some_and(|id| !keep.iter().any(|k| k == id))
                || key.starts_with("canopy-extract-");
            if orphan {
                self.ctrd.snapshot_remove(&key).await?;
                removed.push(key);
            }
        }
        Ok(removed)
    }
}
