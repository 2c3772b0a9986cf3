//! Facts about this machine and its current load: what registration and the 2-second
//! `information` report carry (spec §5.1): CPU %, available memory, disk use, cores,
//! architecture, GPUs when `nvidia-smi` answers.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reading of the machine is reused: half the shortest report interval, so a worker's
/// own samples are always fresh; in benchmark mode the thousand virtual workers of one process
/// (one machine) share one reading instead of each making the same system calls.
const READING_KEPT: Duration = Duration::from_millis(50);

/// The last reading of something about the machine, and when it was taken.
type Reading<T> = Mutex<Option<(Instant, T)>>;

/// `read()`, or the value it gave less than [`READING_KEPT`] ago.
fn shared<T: Clone>(slot: &Reading<T>, read: impl FnOnce() -> T) -> T {
    let mut slot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, v)) = &*slot
        && at.elapsed() < READING_KEPT
    {
        return v.clone();
    }
    let v = read();
    *slot = Some((Instant::now(), v.clone()));
    v
}

/// A host name the cluster accepts (letters, digits, `-`, `_`; at most 63).
pub fn node_name(given: Option<&str>) -> String {
    let raw = given.map(str::to_owned).unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "worker".into())
    });
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if s.is_empty() {
        s = "worker".into();
    }
    s
}

/// The first non-loopback IPv4 address, else 127.0.0.1.
pub fn primary_ipv4() -> String {
    static LAST: Reading<String> = Mutex::new(None);
    shared(&LAST, read_primary_ipv4)
}

fn read_primary_ipv4() -> String {
    nix::ifaddrs::getifaddrs()
        .ok()
        .and_then(|addrs| {
            addrs
                .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
                .find(|ip| !ip.is_loopback())
        })
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

pub fn vcpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// `(total, available)` memory in bytes, from `/proc/meminfo`.
pub fn memory() -> (u64, u64) {
    static LAST: Reading<(u64, u64)> = Mutex::new(None);
    shared(&LAST, read_memory)
}

fn read_memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Used share of the filesystem holding `path`, in percent.
pub fn disk_used_percent(path: &Path) -> f64 {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) if s.blocks() > 0 => {
            let used = s.blocks().saturating_sub(s.blocks_free()) as f64;
            used / s.blocks() as f64 * 100.0
        }
        _ => 0.0,
    }
}

/// Set once `nvidia-smi` turned out not to exist, so it is not looked for every report.
static NO_NVIDIA_SMI: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// GPUs as `nvidia-smi` reports them: `(count, mean utilisation %)`; `(0, 0)` without it.
pub async fn gpus() -> (u32, f64) {
    use std::sync::atomic::Ordering;
    if NO_NVIDIA_SMI.load(Ordering::Relaxed) {
        return (0, 0.0);
    }
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
            ])
            .output(),
    )
    .await;
    let out = match out {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            NO_NVIDIA_SMI.store(true, Ordering::Relaxed);
            return (0, 0.0);
        }
        _ => return (0, 0.0),
    };
    if !out.status.success() {
        return (0, 0.0);
    }
    let utils: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if utils.is_empty() {
        return (0, 0.0);
    }
    let mean = utils.iter().sum::<f64>() / utils.len() as f64;
    (utils.len() as u32, mean)
}

/// Whole-machine CPU use between two calls, from `/proc/stat`.
#[derive(Debug, Default)]
pub struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    /// Percent busy since the previous call (0 on the first).
    pub fn sample(&mut self) -> f64 {
        let Some((busy, total)) = read_proc_stat() else {
            return 0.0;
        };
        let pct = match self.last {
            Some((b0, t0)) if total > t0 => {
                (busy.saturating_sub(b0)) as f64 / (total - t0) as f64 * 100.0
            }
            _ => 0.0,
        };
        self.last = Some((busy, total));
        pct.clamp(0.0, 100.0)
    }
}

fn read_proc_stat() -> Option<(u64, u64)> {
    static LAST: Reading<Option<(u64, u64)>> = Mutex::new(None);
    shared(&LAST, read_proc_stat_now)
}

fn read_proc_stat_now() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_cluster_safe() {
        assert_eq!(node_name(Some("edge.site-1")), "edge-site-1");
        assert_eq!(node_name(Some("")), "worker");
        assert_eq!(node_name(Some(&"x".repeat(80))).len(), 63);
    }

    #[test]
    fn a_reading_is_shared_only_while_it_is_fresh() {
        static SLOT: Reading<u32> = Mutex::new(None);
        let mut reads = 0;
        let mut read = || {
            reads += 1;
            reads
        };
        assert_eq!(shared(&SLOT, &mut read), 1);
        assert_eq!(shared(&SLOT, &mut read), 1, "fresh: shared");
        std::thread::sleep(READING_KEPT + Duration::from_millis(20));
        assert_eq!(shared(&SLOT, &mut read), 2, "old: read again");
    }

    #[test]
    fn machine_facts_are_plausible() {
        let (total, avail) = memory();
        assert!(total > 0 && avail <= total);
        assert!(vcpus() >= 1);
        let d = disk_used_percent(Path::new("/"));
        assert!((0.0..=100.0).contains(&d));
        let mut m = CpuMeter::default();
        assert_eq!(m.sample(), 0.0);
        std::thread::sleep(Duration::from_millis(50));
        assert!((0.0..=100.0).contains(&m.sample()));
    }
}
