//! The accelerator probe: a PVH kernel of a few bytes that writes 21 to isa-debug-exit (QEMU
//! exits 43), booted once under KVM and once under TCG at start; `auto` takes the faster.

use super::command::{self, Accel, Image, Vm};
use canopy_core::Architecture;
use std::path::Path;
use std::time::{Duration, Instant};

const BASE: u32 = 0x10_0000;
/// QEMU's exit status when the probe ran: isa-debug-exit turns 21 into 2·21+1.
const PROBE_EXIT: i32 = 43;

/// An ELF32 PVH kernel: `mov dx,0xf4; mov eax,21; out dx,eax; cli; hlt; jmp $-1`.
pub fn probe_kernel() -> Vec<u8> {
    let code: &[u8] = &[
        0x66, 0xBA, 0xF4, 0x00, 0xB8, 21, 0, 0, 0, 0xEF, 0xFA, 0xF4, 0xEB, 0xFD,
    ];
    let note_off: u32 = 52 + 2 * 32;
    let code_off = note_off + 20;
    let size = code_off + code.len() as u32;
    let mut e = b"\x7fELF\x01\x01\x01".to_vec();
    e.extend([0u8; 9]);
    let h16 = |e: &mut Vec<u8>, v: u16| e.extend(v.to_le_bytes());
    let h32 = |e: &mut Vec<u8>, v: u32| e.extend(v.to_le_bytes());
    h16(&mut e, 2); // ET_EXEC
    h16(&mut e, 3); // EM_386
    h32(&mut e, 1);
    h32(&mut e, BASE + code_off); // entry
    h32(&mut e, 52); // program headers
    h32(&mut e, 0);
    h32(&mut e, 0);
    for v in [52u16, 32, 2, 40, 0, 0] {
        h16(&mut e, v);
    }
    for v in [1, 0, BASE, BASE, size, size, 7, 0x1000] {
        h32(&mut e, v); // PT_LOAD of the whole file
    }
    let note = BASE + note_off;
    for v in [4, note_off, note, note, 20, 20, 4, 4] {
        h32(&mut e, v); // PT_NOTE
    }
    for v in [4, 4, 18] {
        h32(&mut e, v); // "Xen", XEN_ELFNOTE_PHYS32_ENTRY
    }
    e.extend(b"Xen\0");
    h32(&mut e, BASE + code_off);
    e.extend(code);
    e
}

/// Milliseconds from spawning QEMU to its exit after booting the probe under `accel`
/// (`None`: it failed or took longer than 10 s).
pub async fn time_boot(
    binary: &Path,
    bios: Option<&Path>,
    accel: Accel,
    scratch: &Path,
) -> Option<u64> {
    let dir = scratch.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let r = boot(binary, bios, accel, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn boot(binary: &Path, bios: Option<&Path>, accel: Accel, dir: &Path) -> Option<u64> {
    let kernel = dir.join("kernel");
    std::fs::write(&kernel, probe_kernel()).ok()?;
    let image = Image {
        kernel,
        initrd: None,
        files: None,
    };
    let vm = Vm {
        name: "canopy-accel-probe",
        host: Architecture::Amd64,
        accel,
        bios,
        image: &image,
        memory_mb: 32,
        vcpus: 1,
        cmd: &[],
        serial_log: Path::new("/dev/null"),
        qmp: None,
        pid_file: &dir.join("pid"),
        net: None,
    };
    let t = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(command::args(&vm))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .ok()?
        .ok()?;
    (status.code() == Some(PROBE_EXIT)).then(|| t.elapsed().as_millis() as u64)
}
