//! The runtime trait every workload kind implements (containerd, wasmtime, QEMU), and the types it
//! speaks. The engine drives instances only through this trait, so a new runtime is one new
//! module here.

pub mod containerd;
pub mod fetch;
pub mod qemu;
pub mod simulated;
pub mod wasm;

use async_trait::async_trait;
use canopy_core::{InstanceNumber, ServiceSpec, Virtualization};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a runtime says went wrong. `detail()` is what the cluster sees as `status_detail`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The SLA asks for something this runtime cannot do (names the field).
    #[error("{field}: {message}")]
    BadInput {
        field: &'static str,
        message: String,
    },
    /// The image, archive or module does not exist where the SLA says.
    #[error("code: {0}")]
    NotFound(String),
    /// A registry or download failed.
    #[error("fetching the code failed: {0}")]
    Fetch(String),
    /// The backend (containerd, wasmtime) refused or failed.
    #[error("{0}")]
    Backend(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl RuntimeError {
    pub fn bad(field: &'static str, message: impl Into<String>) -> Self {
        RuntimeError::BadInput {
            field,
            message: message.into(),
        }
    }

    pub fn backend(e: impl std::fmt::Display) -> Self {
        RuntimeError::Backend(e.to_string())
    }

    /// The text reported as `status_detail` with `FAILED`.
    pub fn detail(&self) -> String {
        self.to_string()
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// One instance as a runtime sees it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The runtime's handle: a containerd container id or a wasm instance key. Stable for the
    /// instance's lifetime and across engine restarts.
    pub id: String,
    /// `<job>.instance.<n>`.
    pub name: String,
    pub instance: InstanceNumber,
    pub spec: ServiceSpec,
    /// Where stdout and stderr go (appended).
    pub log_path: PathBuf,
    /// The network namespace to join (the instance's place on the overlay); `None`: the
    /// host's network.
    pub netns: Option<PathBuf>,
    /// The `/etc/resolv.conf` it sees (on the overlay: the net manager's resolver); `None`:
    /// the host's.
    pub resolv_conf: Option<PathBuf>,
    /// Its address on the overlay (with `netns`); a VM's guest configures it itself.
    pub overlay: Option<InstanceNet>,
}

/// An instance's address on the overlay, its gateway (the worker's bridge) and the prefix
/// length of the worker's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceNet {
    pub address: std::net::Ipv4Addr,
    pub gateway: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl Workload {
    /// The hostname the workload sees (Oakestra's `instance-<n>`).
    pub fn hostname(&self) -> String {
        format!("instance-{}", self.instance.0)
    }
}

/// How a workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
}

/// What a runtime knows about one of its workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Exited(Exit),
    /// The runtime holds nothing under this id.
    Missing,
}

/// Use of one workload at a moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Cumulative CPU time, nanoseconds (the engine turns two samples into a percentage).
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// A runtime: starts, watches and removes workloads of one kind.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> Virtualization;

    /// The worker advertises this kind (false when what it needs is not installed; deploys
    /// sent anyway fail naming what is missing).
    fn offered(&self) -> bool {
        true
    }

    /// Fetches what the workload needs and starts it; returns once it runs.
    async fn start(&self, w: &Workload) -> Result<()>;

    /// Waits until the workload ends.
    async fn wait(&self, id: &str) -> Result<Exit>;

    /// Asks the workload to end (SIGTERM, then SIGKILL after `grace`); `wait` sees the end.
    async fn stop(&self, id: &str, grace: Duration) -> Result<()>;

    /// Removes everything held for the workload. Idempotent: a missing workload is fine.
    async fn remove(&self, id: &str) -> Result<()>;

    async fn status(&self, id: &str) -> Result<RunState>;

    async fn stats(&self, id: &str) -> Result<Stats>;

    /// Runs `command` inside the running workload `w` (an exec probe), at most `timeout`:
    /// `Ok(Some(status))` is its exit status, `Ok(None)` that it did not end in time.
    async fn exec(
        &self,
        w: &Workload,
        command: &[String],
        timeout: Duration,
    ) -> Result<Option<u32>> {
        let _ = (w, command, timeout);
        Err(RuntimeError::bad(
            "exec",
            format!("a {} instance cannot run a command inside it", self.kind()),
        ))
    }

    /// After an engine restart: re-attaches to the workload if it still runs. Returns its
    /// state; `Missing` or `Exited` means the engine decides what to do next.
    async fn recover(&self, w: &Workload) -> Result<RunState>;

    /// Ids of every workload this runtime holds (to find leftovers).
    async fn list(&self) -> Result<Vec<String>>;

    /// Ids of the workloads this runtime holds that an engine created (for the periodic check
    /// for untracked ones, which must leave alone what an operator runs beside the engine).
    async fn list_instances(&self) -> Result<Vec<String>> {
        self.list().await
    }

    /// Removes every workload not in `keep` (leftovers of a crash, or not the engine's own);
    /// returns what was removed.
    async fn sweep(&self, keep: &[String]) -> Result<Vec<String>> {
        remove_all_but(self, keep).await
    }

    /// The last `max` bytes of the workload's log (all of it when `max` is `None`).
    async fn logs(&self, w: &Workload, max: Option<u64>) -> Result<Vec<u8>> {
        Ok(read_tail(&w.log_path, max)?)
    }
}

/// Removes every listed workload whose id is not in `keep`.
pub async fn remove_all_but<R: Runtime + ?Sized>(rt: &R, keep: &[String]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for id in rt.list().await? {
        if !keep.contains(&id) {
            rt.remove(&id).await?;
            removed.push(id);
        }
    }
    Ok(removed)
}

/// The last `max` bytes of a file (all when `None`); a missing file is empty.
pub fn read_tail(path: &Path, max: Option<u64>) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if let Some(max) = max
        && len > max
    {
        f.seek(SeekFrom::Start(len - max))?;
    }
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Opens (creating) a log file for appending, with its directory.
pub fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_the_end_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/log");
        assert!(read_tail(&p, Some(4)).unwrap().is_empty());
        use std::io::Write;
        open_log(&p).unwrap().write_all(b"hello world").unwrap();
        assert_eq!(read_tail(&p, Some(5)).unwrap(), b"world");
        assert_eq!(read_tail(&p, None).unwrap(), b"hello world");
        assert_eq!(read_tail(&p, Some(100)).unwrap(), b"hello world");
    }
}
