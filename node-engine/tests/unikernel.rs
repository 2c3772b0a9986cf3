//! Unikernels under real QEMU (software emulation or KVM, as `auto` picks), with tiny PVH
//! kernels built by `scripts/unikernel-image.sh`: served over HTTP on loopback, the serial
//! console in the logs, one-shot completion, exit codes, bad input, and a node engine killed
//! with SIGKILL that re-attaches to its VMs (same QEMU pid) and starts the dead ones again;
//! and the Linux micro-VM booting to its init, which reads the image's `files/` over 9p.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const JOB: &str = "app.ns.uni.ns";

/// Fails clearly when QEMU is missing (scripts/test.sh installs it).
fn require_qemu() {
    assert!(
        canopy_e2e::unikernel::qemu_installed(),
        "qemu-system-x86_64 is not installed: run the tests through scripts/test.sh, which installs it"
    );
}

/// The test kernels (`halt`, `reset`, `exit3`, `nokernel`), built once per test binary.
fn kernels() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under the build's tmp dir, one per test process; those of finished processes go.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("unikernels-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = base.join(format!("unikernels-{}", std::process::id()));
        let script = repo_root().join("scripts/unikernel-image.sh");
        for (name, ending) in [("halt", "halt"), ("reset", "reset"), ("exit3", "exit:3")] {
            let out = Command::new("bash")
                .arg(&script)
                .args(["tiny"])
                .arg(dir.join(format!("{name}.tar.gz")))
                .args([&format!("TINY-{}", name.to_uppercase()), ending])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // An archive without `kernel`, and one that is no archive.
        let junk = dir.join("src");
        std::fs::create_dir_all(&junk).unwrap();
        std::fs::write(junk.join("vmlinuz"), b"x").unwrap();
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&junk)
            .arg("-czf")
            .arg(dir.join("nokernel.tar.gz"))
            .arg("vmlinuz")
            .status()
            .unwrap();
        assert!(tar.success());
        std::fs::write(dir.join("corrupt.tar.gz"), b"this is not gzip").unwrap();
        dir
    })
}

/// The Linux micro-VM (`scripts/unikernel-image.sh linux`), built once per test binary; the
/// Debian kernel package is downloaded once into the build's tmp dir.
fn linux_microvm() -> String {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| linux_microvm_at(&kernels().join("microvm.tar.gz"), "HELLO-MICROVM"))
        .clone()
}

fn kernel(name: &str) -> String {
    kernels()
        .join(format!("{name}.tar.gz"))
        .display()
        .to_string()
}

/// The QEMU pid of an instance, while it runs.
fn qemu_pid(data: &Path, n: u32) -> Option<i32> {
    let p = data.join(format!("unikernel/vm/{JOB}.instance.{n}/pid"));
    let pid: i32 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn vms(data: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data.join("unikernel/vm"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Kills (by pid) every QEMU still recorded under the data dir when a test ends.
struct VmGuard(PathBuf);

impl Drop for VmGuard {
    fn drop(&mut self) {
        for vm in vms(&self.0) {
            let p = self.0.join(format!("unikernel/vm/{vm}/pid"));
            if let Some(pid) = std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A broker, a cluster stand-in and an in-process engine offering only unikernels, connected.
async fn unikernel_engine(test: &str) -> (Broker, Cluster, Engine, tempfile::TempDir, VmGuard) {
    let ns = Namespace::new(test);
    let broker = Broker::start().await;
    let cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let guard = VmGuard(dir.path().to_owned());
    let mut config = Engine::config(&cluster.addr, dir.path(), &ns);
    config.runtimes = vec!["unikernel".into()];
    let mut engine = Engine::start(config).await;
    engine.wait_connected(SECS_30).await;
    (broker, cluster, engine, dir, guard)
}

fn uni(n: u32, code: &str, cmd: &[&str]) -> canopy_proto::worker::DeployMessage {
    deploy(JOB, n, "unikernel", code, cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_boot_log_complete_fail_and_leave_nothing() {
    require_qemu();
    let (_broker, mut cluster, engine, dir, _guard) = unikernel_engine("uni").await;
    let http = canopy_e2e::unikernel::FileServer::start(kernels()).await;
    let base = &http.base;

    // Served over HTTP, picked by arch; `cmd` reaches the kernel's command line.
    let mut m = uni(
        0,
        &format!("{base}/halt.tar.gz,{base}/none_arm64.tar.gz"),
        &["hello", "vm"],
    );
    m.arch = vec!["amd64".into(), "arm64".into()];
    cluster.deploy(&m).await;
    cluster.status(JOB, 0, "RUNNING", SECS_60).await;
    cluster
        .logs_contain(JOB, 0, "TINY-HALT hello vm", SECS_30)
        .await;
    let pid = qemu_pid(dir.path(), 0).expect("QEMU runs");
    let r = cluster.last_resources.clone().unwrap();
    let s = r.services.iter().find(|s| s.instance == 0).unwrap();
    assert_eq!(s.virtualization, "unikernel");
    let log = engine.logs(JOB, 0).await;
    assert!(log.contains("TINY-HALT hello vm"), "{log}");
    // Delete: the guest ignores the power button, so QMP quit ends it; nothing stays.
    cluster.undeploy(JOB, 0).await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "QEMU {pid} is gone"
    );
    assert!(vms(dir.path()).is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("unikernel/qmp"))
            .unwrap()
            .count(),
        0
    );
    assert!(
        !dir.path()
            .join(format!("logs/{JOB}.instance.0.log"))
            .exists()
    );

    // A guest that resets (QEMU exits 0) as a one-shot completes; one writing 3 to
    // isa-debug-exit (QEMU exits 2·3+1) is DEAD with that code.
    let mut m = uni(1, &kernel("reset"), &[]);
    m.one_shot = true;
    cluster.deploy(&m).await;
    cluster.status(JOB, 1, "COMPLETED", SECS_60).await;
    let mut m = uni(2, &kernel("exit3"), &[]);
    m.one_shot = true;
    cluster.deploy(&m).await;
    let dead = cluster.status(JOB, 2, "DEAD", SECS_60).await;
    assert_eq!(dead.status_detail, "exited with code 7");
    let log = engine.logs(JOB, 2).await;
    assert!(log.contains("TINY-EXIT3"), "{log}");
    // Without one_shot an exit 0 is DEAD too.
    cluster.deploy(&uni(3, &kernel("reset"), &[])).await;
    let dead = cluster.status(JOB, 3, "DEAD", SECS_60).await;
    assert_eq!(dead.status_detail, "exited with code 0");

    // Bad input fails with the reason and leaves no VM, no temp file.
    let mut arm = uni(10, &kernel("halt"), &[]);
    arm.arch = vec!["arm64".into()];
    let mut tiny_mem = uni(11, &kernel("halt"), &[]);
    tiny_mem.memory = 2;
    let cases = [
        (
            uni(12, "/nonexistent/k.tar.gz", &[]),
            "code: no kernel archive at /nonexistent/k.tar.gz",
        ),
        (
            uni(13, &kernel("nokernel"), &[]),
            "code: the archive holds no `kernel` file",
        ),
        (
            uni(14, &kernel("corrupt"), &[]),
            "code: not a readable .tar.gz",
        ),
        (
            uni(15, &format!("{base}/missing.tar.gz"), &[]),
            "answered 404",
        ),
        (
            uni(16, "http://127.0.0.1:1/k.tar.gz", &[]),
            "fetching the code failed",
        ),
        (
            arm,
            "arch: no kernel for this worker's amd64 (the SLA offers arm64)",
        ),
        (tiny_mem, "memory: 2 MB is too little"),
    ];
    for (m, want) in cases {
        let n = m.instance_number;
        cluster.deploy(&m).await;
        let f = cluster.status(JOB, n, "FAILED", SECS_30).await;
        assert!(
            f.status_detail.contains(want),
            "instance {n}: {}",
            f.status_detail
        );
    }
    for n in [1, 2, 3, 10, 11, 12, 13, 14, 15, 16] {
        cluster.undeploy(JOB, n).await;
    }
    assert!(vms(dir.path()).is_empty(), "{:?}", vms(dir.path()));
    let images: Vec<String> = std::fs::read_dir(dir.path().join("unikernel/images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(images.iter().all(|i| !i.starts_with('.')), "{images:?}");
    assert_eq!(
        images.len(),
        3,
        "one extraction per good archive: {images:?}"
    );

    drop(http);
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_qemu_unikernels_are_not_offered_and_fail_saying_so() {
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = spawn_command(&cluster.addr, dir.path(), free_port());
    cmd.args(["--runtimes", "wasm,unikernel", "--no-overlay"])
        .env("PATH", "/nonexistent");
    let _engine = Proc(cmd.spawn().unwrap());
    let info = cluster
        .until(SECS_30, "worker information", |h| {
            matches!(h, Heard::Information(_))
        })
        .await;
    let Heard::Information(info) = info else {
        unreachable!()
    };
    assert_eq!(
        info["virtualization"],
        serde_json::json!(["wasm"]),
        "{info}"
    );
    cluster.deploy(&uni(0, &kernel("halt"), &[])).await;
    let f = cluster.status(JOB, 0, "FAILED", SECS_30).await;
    assert_eq!(
        f.status_detail,
        "unikernel: qemu-system-x86_64 is not installed (Debian package qemu-system-x86 or qemu-system-arm)"
    );
    assert!(vms(dir.path()).is_empty());
}

/// A Debian kernel with a busybox initramfs: the marker and `cmd` on the console, a one-shot
/// that powers off completes, one that serves httpd runs until deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_linux_micro_vm_boots_to_its_init() {
    require_qemu();
    let image = linux_microvm();
    let (_broker, mut cluster, engine, dir, _guard) = unikernel_engine("unilinux").await;

    let mut m = uni(0, &image, &common::linux_boot_args("end=poweroff"));
    m.memory = 128;
    m.one_shot = true;
    cluster.deploy(&m).await;
    cluster.status(JOB, 0, "COMPLETED", SECS_60).await;
    let log = engine.logs(JOB, 0).await;
    assert!(log.contains("HELLO-MICROVM console=ttyS0 quiet"), "{log}");
    assert!(log.contains("no_timer_check end=poweroff"), "{log}");

    let mut m = uni(1, &image, &common::linux_boot_args("end=httpd"));
    m.memory = 128;
    cluster.deploy(&m).await;
    cluster.status(JOB, 1, "RUNNING", SECS_60).await;
    cluster.logs_contain(JOB, 1, "HELLO-MICROVM", SECS_60).await;
    let pid = qemu_pid(dir.path(), 1).expect("QEMU runs");
    for n in [0, 1] {
        cluster.undeploy(JOB, n).await;
    }
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(vms(dir.path()).is_empty());
    engine.stop().await;
}

/// The image's `files/` is shared over 9p, tag fs0: the micro-VM's /init (Debian's generic
/// kernel, its 9p modules) finds the device, is refused a write to it (QEMU's `readonly=on`,
/// not just the guest's mount option), mounts it read-only and prints a file of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_linux_micro_vm_reads_its_files_over_9p_and_cannot_write_them() {
    require_qemu();
    let files = kernels().join("9p-files");
    std::fs::create_dir_all(&files).unwrap();
    let greeting = format!("shared by test process {}", std::process::id());
    std::fs::write(
        files.join("greeting.txt"),
        format!("{greeting}\nsecond line\n"),
    )
    .unwrap();
    let image =
        linux_microvm_with_files_at(&kernels().join("microvm-9p.tar.gz"), "HELLO-9P", &files);
    let (_broker, mut cluster, engine, dir, _guard) = unikernel_engine("uni9p").await;

    let mut m = uni(0, &image, &common::linux_boot_args("end=poweroff"));
    m.memory = 128;
    m.one_shot = true;
    cluster.deploy(&m).await;
    // The generic kernel boots slower than the cloud one under emulation on a loaded host.
    cluster
        .status(JOB, 0, "COMPLETED", Duration::from_secs(300))
        .await;
    let log = engine.logs(JOB, 0).await;
    for line in [
        "HELLO-9P console=ttyS0".to_owned(),
        "files: fs0 refuses writes: Read-only file system".to_owned(),
        "files: fs0 mounted read-only at /www/files".to_owned(),
        format!("files: greeting.txt: {greeting}"),
    ] {
        assert!(
            log.contains(&line),
            "{line:?} missing in the console:\n{log}"
        );
    }
    // The extracted share on the host holds what the archive held, nothing the guest wrote.
    let images = dir.path().join("unikernel/images");
    let shared: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("files"))
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(shared.len(), 1, "{shared:?}");
    let mut names: Vec<String> = std::fs::read_dir(&shared[0])
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["greeting.txt"]);
    cluster.undeploy(JOB, 0).await;
    assert!(vms(dir.path()).is_empty());
    engine.stop().await;
}

fn spawn_engine(cluster_addr: &str, data_dir: &Path, api_port: u16) -> Proc {
    spawn_engine_binary(
        cluster_addr,
        data_dir,
        api_port,
        &["--name", "uni-worker", "--runtimes", "unikernel"],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_reattaches_running_vms_and_restarts_dead_ones() {
    require_qemu();
    let broker = Broker::start().await;
    let mut cluster = Cluster::start(&broker).await;
    let dir = tempfile::tempdir().unwrap();
    let _guard = VmGuard(dir.path().to_owned());
    let api = free_port();
    let mut engine = spawn_engine(&cluster.addr, dir.path(), api);
    cluster.wait_worker(SECS_30).await;
    for n in [0, 1] {
        cluster.deploy(&uni(n, &kernel("halt"), &[])).await;
        cluster.status(JOB, n, "RUNNING", SECS_60).await;
    }
    let (pid0, pid1) = (
        qemu_pid(dir.path(), 0).unwrap(),
        qemu_pid(dir.path(), 1).unwrap(),
    );

    // SIGKILL: no clean-up. The VMs run on; then VM 1 dies while the engine is down.
    engine.0.kill().unwrap();
    engine.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        qemu_pid(dir.path(), 0),
        Some(pid0),
        "VMs outlive the engine"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(qemu_pid(dir.path(), 1), None);

    cluster.forget();
    let _engine = spawn_engine(&cluster.addr, dir.path(), api);
    let r = cluster.status(JOB, 0, "RUNNING", SECS_60).await;
    assert_eq!(r.status_detail, "re-attached after an engine restart");
    cluster.status(JOB, 1, "RUNNING", SECS_60).await;
    assert_eq!(
        qemu_pid(dir.path(), 0),
        Some(pid0),
        "re-attached, not restarted"
    );
    let new1 = qemu_pid(dir.path(), 1).expect("VM 1 runs again");
    assert_ne!(new1, pid1);
    assert_eq!(vms(dir.path()).len(), 2, "no duplicates");

    // The re-attached VM is still watched: its end is seen.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let dead = cluster.status(JOB, 0, "DEAD", SECS_30).await;
    assert_eq!(dead.status_detail, "exited with code 137");
    for n in [0, 1] {
        cluster.undeploy(JOB, n).await;
    }
    assert!(vms(dir.path()).is_empty());
    assert!(!Path::new(&format!("/proc/{new1}")).exists());
}
