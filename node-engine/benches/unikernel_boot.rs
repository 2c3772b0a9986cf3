//! Unikernel boot time on this machine: QEMU spawned → the guest's marker on the serial
//! console, for the tiny PVH kernel under KVM and under TCG and for the Linux micro-VM under
//! TCG (images from scripts/unikernel-image.sh, QEMU's command line from the runtime).
//!
//!     cargo bench -p node-engine --bench unikernel_boot
//!
//! `CANOPY_BENCH_RUNS` sets the boots per kind (default 5). The last line of output is
//! `BENCH_JSON {"unikernel_boot": {...}}` (p50s, ms) for `scripts/bench.sh unikernel`.
//! `tiny_kvm` is null where /dev/kvm does not open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use canopy_core::Architecture;
use canopy_e2e::stats::summarize;
use node_engine::runtime::qemu::command::{self, Accel, Image, Vm};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn build(dir: &Path, args: &[&str]) -> Image {
    let out = dir.join(format!("{}.tar.gz", args[0]));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/unikernel-image.sh");
    let run = Command::new("bash")
        .arg(script)
        .arg(args[0])
        .arg(&out)
        .args(&args[1..])
        .status()
        .unwrap();
    assert!(run.success(), "building the {} image failed", args[0]);
    let x = dir.join(args[0]);
    std::fs::create_dir_all(&x).unwrap();
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&x)
            .arg("-xzf")
            .arg(&out)
            .status()
            .unwrap()
            .success()
    );
    let initrd = x.join("initramfs.cpio");
    Image {
        kernel: x.join("kernel"),
        initrd: initrd.is_file().then_some(initrd),
        files: None,
    }
}

/// Milliseconds from spawning QEMU to `marker` in the serial log.
fn boot_ms(dir: &Path, image: &Image, accel: Accel, cmd: &[String], marker: &str) -> f64 {
    let log = dir.join("serial.log");
    let _ = std::fs::remove_file(&log);
    let vm = Vm {
        name: "canopy-bench",
        host: Architecture::Amd64,
        accel,
        bios: Some(Path::new("/usr/share/qemu/qboot.rom")).filter(|p| p.is_file()),
        image,
        memory_mb: 128,
        vcpus: 1,
        cmd,
        serial_log: &log,
        qmp: None,
        pid_file: &dir.join("pid"),
        net: None,
    };
    let t = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(command::args(&vm))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ms = loop {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains(marker)) {
            break t.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no {marker} within 120 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    ms
}

fn main() {
    let runs: usize = std::env::var("CANOPY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-kernel");
    let tiny = build(dir.path(), &["tiny", "BENCH-TINY", "halt"]);
    let linux = build(
        dir.path(),
        &["linux", "BENCH-LINUX", cache.to_str().unwrap()],
    );
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let linux_cmd: Vec<String> = [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "tsc_early_khz=2000000",
        "no_timer_check",
        "end=httpd",
    ]
    .map(String::from)
    .to_vec();
    let times = |image: &Image, accel, cmd: &[String], marker: &str| {
        summarize(
            (0..runs)
                .map(|_| boot_ms(dir.path(), image, accel, cmd, marker))
                .collect(),
        )
    };
    eprintln!("{runs} boots each...");
    let tiny_tcg = times(&tiny, Accel::Tcg, &[], "BENCH-TINY");
    let tiny_kvm = kvm.then(|| times(&tiny, Accel::Kvm, &[], "BENCH-TINY"));
    let linux_tcg = times(&linux, Accel::Tcg, &linux_cmd, "BENCH-LINUX");
    println!();
    println!("QEMU spawned → marker on the console, {runs} runs (ms)   p50      p90      max");
    for (name, s) in [
        ("tiny PVH kernel, TCG", Some(&tiny_tcg)),
        ("tiny PVH kernel, KVM", tiny_kvm.as_ref()),
        ("Linux micro-VM, TCG", Some(&linux_tcg)),
    ] {
        match s {
            Some(s) => println!("{name:<44} {:>8.1} {:>8.1} {:>8.1}", s.p50, s.p90, s.max),
            None => println!("{name:<44}   (no usable /dev/kvm)"),
        }
    }
    println!(
        "BENCH_JSON {}",
        serde_json::json!({"unikernel_boot": {
            "runs": runs,
            "unikernel_boot_to_marker_ms": {
                "tiny_tcg": tiny_tcg.p50,
                "tiny_kvm": tiny_kvm.map(|s| s.p50),
                "linux_tcg": linux_tcg.p50,
            }
        }})
    );
}
