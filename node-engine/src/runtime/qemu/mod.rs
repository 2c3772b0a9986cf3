//! Unikernels and micro-VMs under QEMU (`virtualization: unikernel`), in Oakestra's image
//! format (see [`image`]). Each VM is one QEMU process in its own process group, started
//! through a small `sh` that writes QEMU's exit status to a file, so a VM outlives the engine
//! and a restarted engine finds it again (pid file, QMP socket and exit file under
//! `<dir>/vm/<id>/`). The serial console is appended to the instance's log.
//!
//! On the overlay (the workload has a `netns` and an address from the net manager) the VM
//! joins it at L2: [`net::setup`] bridges the namespace's `eth0` with a tap, QEMU runs inside
//! the namespace (`nsenter --net=<netns>` before the binary, exec'd, so the pid is QEMU's)
//! with `-netdev tap,ifname=tap0` and a `virtio-net-device` whose MAC is derived from the
//! instance name and whose MTU is `eth0`'s, and the kernel command line starts with the instance address, the gateway
//! (the worker's bridge) and the subnet's netmask, as Oakestra passes them to Unikraft
//! (`netdev.ipv4_addr= …`) and as Linux's `ip=`, before the SLA's `cmd`. The tap and
//! bridge go with the namespace when the net manager detaches the instance; a restarted
//! engine re-attaches to a running VM without touching its network.
//!
//! Layout: [`command`] (pure: kernel by arch, accelerator, command line), [`net`] (the tap in
//! the instance's namespace), [`image`] (tarball cache), [`qmp`] (the control socket),
//! [`probe`] (KVM-or-TCG timing at start).

pub mod command;
pub mod image;
pub mod net;
pub mod probe;
pub mod qmp;

use super::fetch::Fetcher;
use super::{Exit, Result, RunState, Runtime, RuntimeError, Stats, Workload, open_log};
use async_trait::async_trait;
use canopy_core::{Architecture, Virtualization};
use command::{Accel, AccelMode, Vm, VmNet};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// QEMU 10's microvm firmware (Debian's qemu-system-data).
const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// How long QEMU may take from spawn to a running guest.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The wrapper shell's `$0`, how a restarted engine recognises it.
const WRAPPER: &str = "canopy-vm";
const POLL: Duration = Duration::from_millis(50);

pub struct QemuRuntime {
    dir: PathBuf,
    host: Architecture,
    /// The emulator, or why there is none.
    binary: std::result::Result<PathBuf, String>,
    bios: Option<PathBuf>,
    accel: Accel,
    images: image::Images,
}

impl QemuRuntime {
    /// A runtime keeping its state under `dir`. Without QEMU it still answers (deploys fail
    /// naming what is missing) but [`Runtime::offered`] is false.
    pub async fn new(dir: PathBuf, mode: AccelMode) -> Result<QemuRuntime> {
        let host = host_arch();
        let binary = match command::qemu_binary(host) {
            None => Err(format!("unikernel: no QEMU for {}", std::env::consts::ARCH)),
            Some(name) => find_on_path(name).ok_or_else(|| {
                format!("unikernel: {name} is not installed (Debian package qemu-system-x86 or qemu-system-arm)")
            }),
        };
        for sub in ["vm", "qmp", "images"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let bios = Some(PathBuf::from(QBOOT)).filter(|p| p.is_file());
        let accel = match &binary {
            Ok(bin) => pick_accel(mode, host, bin, bios.as_deref(), &dir).await,
            Err(why) => {
                tracing::info!(%why, "unikernels are not offered");
                Accel::Tcg
            }
        };
        let images = image::Images::new(dir.join("images"), Fetcher::new()?);
        images.clean_partial();
        Ok(QemuRuntime {
            dir,
            host,
            binary,
            bios,
            accel,
            images,
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.dir.join("vm").join(id)
    }

    /// The QMP socket: named by a digest so the path stays under the 108 bytes of a socket
    /// address whatever the id.
    fn qmp_socket(&self, id: &str) -> PathBuf {
        let d = hex::encode(Sha256::digest(id.as_bytes()));
        self.dir.join("qmp").join(&d[..16])
    }

    /// QEMU's pid, while it runs.
    fn qemu_pid(&self, id: &str) -> Option<i32> {
        read_pid(&self.vm_dir(id).join("pid")).filter(|&p| alive(p, &command::name_arg(id)))
    }

    fn state(&self, id: &str) -> RunState {
        let dir = self.vm_dir(id);
        if !dir.is_dir() {
            return RunState::Missing;
        }
        if let Some(code) = read_exit(&dir.join("exit")) {
            return RunState::Exited(Exit { code });
        }
        if self.qemu_pid(id).is_some() {
            return RunState::Running;
        }
        // QEMU is gone; the wrapper may be about to write its status. Once the wrapper is gone
        // too, whatever it wrote is there.
        match read_pid(&dir.join("wrapper")) {
            Some(w) if alive(w, WRAPPER) => RunState::Running,
            _ => RunState::Exited(Exit {
                code: read_exit(&dir.join("exit")).unwrap_or(-1),
            }),
        }
    }

    async fn spawn(&self, w: &Workload) -> Result<()> {
        let binary = self
            .binary
            .as_ref()
            .map_err(|m| RuntimeError::Backend(m.clone()))?;
        let code = command::select_code(&w.spec.code, &w.spec.architectures, self.host)?;
        let memory_mb = command::memory_mb(w.spec.resources.memory_mb)?;
        let image = self.images.get(&code).await?;
        let dir = self.vm_dir(&w.id);
        std::fs::create_dir_all(&dir)?;
        drop(open_log(&w.log_path)?);
        let qmp = self.qmp_socket(&w.id);
        // On the overlay: the namespace's eth0 bridged with a tap, QEMU inside the namespace.
        let (vm_net, netns) = match (&w.netns, w.overlay) {
            (Some(netns), Some(o)) => {
                let mtu = net::setup(netns).await?;
                let vm_net = VmNet {
                    tap: net::TAP.to_owned(),
                    mac: net::mac(&w.name),
                    vhost: net::vhost_available(),
                    mtu,
                    address: o.address,
                    gateway: o.gateway,
                    prefix: o.prefix,
                };
                (Some(vm_net), net::nsenter(netns))
            }
            _ => (None, Vec::new()),
        };
        let vm = Vm {
            name: &w.id,
            host: self.host,
            accel: self.accel,
            bios: self.bios.as_deref(),
            image: &image,
            memory_mb,
            vcpus: w.spec.resources.vcpus,
            cmd: &w.spec.cmd,
            serial_log: &w.log_path,
            qmp: Some(&qmp),
            pid_file: &dir.join("pid"),
            net: vm_net.as_ref(),
        };
        let err = std::fs::File::create(dir.join("stderr"))?;
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            // `exit` last, so the shell does not exec `mv` and stays recognisable until the end.
            .arg(r#""$@"; echo $? >"$CANOPY_EXIT.tmp" && mv "$CANOPY_EXIT.tmp" "$CANOPY_EXIT"; exit 0"#)
            .arg(WRAPPER)
            .args(&netns)
            .arg(binary)
            .args(command::args(&vm))
            .env("CANOPY_EXIT", dir.join("exit"))
            .stdin(std::process::Stdio::null())
            .stdout(err.try_clone()?)
            .stderr(err)
            .process_group(0)
            .spawn()?;
        if let Some(pid) = child.id() {
            // Until the fork has exec'd the shell, its arguments are not yet the wrapper's.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !alive(pid as i32, WRAPPER)
                && child.try_wait()?.is_none()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            std::fs::write(dir.join("wrapper"), pid.to_string())?;
        }
        // Reaps the wrapper while this engine lives; a restarted engine polls files instead.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        self.wait_started(&w.id).await
    }

    /// Returns once QEMU has built the machine (its pid file is written and a vCPU thread
    /// runs), or once it ended by itself without a complaint (a quick guest). QEMU ending
    /// with a complaint on stderr is a failed start. No QMP here: connecting to a QEMU whose
    /// guest is shutting down can wedge it (seen with QEMU 10 under load).
    async fn wait_started(&self, id: &str) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.state(id) {
                RunState::Exited(exit) => {
                    let err =
                        std::fs::read_to_string(self.vm_dir(id).join("stderr")).unwrap_or_default();
                    let err = err.trim();
                    if err.is_empty() {
                        return Ok(());
                    }
                    return Err(RuntimeError::Backend(format!(
                        "QEMU exited with code {}: {}",
                        exit.code,
                        tail(err, 600)
                    )));
                }
                RunState::Missing => {
                    return Err(RuntimeError::Backend("the VM's directory vanished".into()));
                }
                RunState::Running => {
                    if self.qemu_pid(id).is_some_and(has_vcpu_thread) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Backend(format!(
                    "QEMU did not start the guest within {START_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the VM is no longer running, up to `within`; true when it stopped.
    async fn ended_within(&self, id: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.state(id) != RunState::Running {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `mode` resolved on this host; `auto` times the probe under both accelerators (amd64).
async fn pick_accel(
    mode: AccelMode,
    host: Architecture,
    binary: &Path,
    bios: Option<&Path>,
    dir: &Path,
) -> Accel {
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let (kvm_ms, tcg_ms) = if mode == AccelMode::Auto && kvm_usable && host == Architecture::Amd64 {
        (
            probe::time_boot(binary, bios, Accel::Kvm, dir).await,
            probe::time_boot(binary, bios, Accel::Tcg, dir).await,
        )
    } else if mode == AccelMode::Auto && kvm_usable {
        (Some(0), None)
    } else {
        (None, None)
    };
    let accel = command::choose_accel(mode, kvm_usable, kvm_ms, tcg_ms);
    tracing::info!(
        ?mode,
        kvm_usable,
        ?kvm_ms,
        ?tcg_ms,
        ?accel,
        "unikernel accelerator"
    );
    accel
}

fn host_arch() -> Architecture {
    match std::env::consts::ARCH {
        "aarch64" => Architecture::Arm64,
        "arm" => Architecture::Arm,
        "x86" => Architecture::I386,
        "riscv64" => Architecture::Riscv64,
        _ => Architecture::Amd64,
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_exit(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The process runs (not a zombie) and has `arg` among its arguments.
fn alive(pid: i32, arg: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
}

/// QEMU (with `debug-threads=on`) names its vCPU threads `CPU <n>/<accel>`.
fn has_vcpu_thread(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("CPU "))
        })
}

fn kill(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

fn tail(s: &str, max: usize) -> &str {
    let mut i = s.len().saturating_sub(max);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// CPU time (ns) and resident memory (bytes) of a process, from /proc.
fn proc_stats(pid: i32) -> Stats {
    // /proc counts in USER_HZ, which Linux fixes at 100.
    const TICKS: u64 = 100;
    let cpu_ns = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<u64> = s
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            (f.len() == 2).then(|| (f[0] + f[1]) * 1_000_000_000 / TICKS)
        })
        .unwrap_or(0);
    let memory_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Stats {
        cpu_ns,
        memory_bytes,
        disk_bytes: 0,
    }
}

#[async_trait]
impl Runtime for QemuRuntime {
    fn kind(&self) -> Virtualization {
        Virtualization::Unikernel
    }

    fn offered(&self) -> bool {
        self.binary.is_ok()
    }

    async fn start(&self, w: &Workload) -> Result<()> {
        if self.state(&w.id) == RunState::Running {
            return Ok(());
        }
        self.remove(&w.id).await?;
        let r = self.spawn(w).await;
        if r.is_err() {
            let _ = self.remove(&w.id).await;
        }
        r
    }

    async fn wait(&self, id: &str) -> Result<Exit> {
        loop {
            match self.state(id) {
                RunState::Running => tokio::time::sleep(POLL).await,
                RunState::Exited(e) => return Ok(e),
                RunState::Missing => {
                    return Err(RuntimeError::Backend(format!("no VM {id}")));
                }
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let qmp = self.qmp_socket(id);
        if qmp::execute(&qmp, "system_powerdown").await.is_ok()
            && self.ended_within(id, grace).await
        {
            return Ok(());
        }
        if qmp::execute(&qmp, "quit").await.is_ok()
            && self.ended_within(id, Duration::from_secs(2)).await
        {
            return Ok(());
        }
        if let Some(pid) = self.qemu_pid(id) {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let dir = self.vm_dir(id);
        if let Some(pid) = self.qemu_pid(id) {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.ended_within(id, Duration::from_secs(5)).await;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let _ = std::fs::remove_file(self.qmp_socket(id));
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<RunState> {
        Ok(self.state(id))
    }

    async fn stats(&self, id: &str) -> Result<Stats> {
        Ok(self.qemu_pid(id).map(proc_stats).unwrap_or_default())
    }

    async fn recover(&self, w: &Workload) -> Result<RunState> {
        Ok(self.state(&w.id))
    }

    async fn list(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(self.dir.join("vm"))? {
            let e = e?;
            if e.file_type()?.is_dir() {
                ids.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(ids)
    }
}
