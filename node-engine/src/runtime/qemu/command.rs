//! Pure decisions of the QEMU runtime: which kernel of the SLA's list this worker runs, which
//! accelerator, and the QEMU command line for one VM.

use super::super::{Result, RuntimeError};
use canopy_core::Architecture;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Memory given to a VM whose SLA asks for none, MiB.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Less than this and QEMU's firmware alone does not fit, MiB.
pub const MIN_MEMORY_MB: u64 = 8;

/// How guest code is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// `--unikernel-accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelMode {
    /// KVM when /dev/kvm opens and a probe guest boots faster under it than under TCG.
    Auto,
    Kvm,
    Tcg,
}

/// The accelerator for `mode`, given whether /dev/kvm opens and, for `auto`, the probe guest's
/// boot times under KVM and TCG (`None`: the probe failed there).
pub fn choose_accel(
    mode: AccelMode,
    kvm_usable: bool,
    kvm_ms: Option<u64>,
    tcg_ms: Option<u64>,
) -> Accel {
    match mode {
        AccelMode::Kvm => Accel::Kvm,
        AccelMode::Tcg => Accel::Tcg,
        AccelMode::Auto => match (kvm_usable, kvm_ms, tcg_ms) {
            (true, Some(k), Some(t)) if k < t => Accel::Kvm,
            (true, Some(_), None) => Accel::Kvm,
            _ => Accel::Tcg,
        },
    }
}

/// The QEMU system emulator for a host architecture.
pub fn qemu_binary(host: Architecture) -> Option<&'static str> {
    match host {
        Architecture::Amd64 => Some("qemu-system-x86_64"),
        Architecture::Arm64 => Some("qemu-system-aarch64"),
        _ => None,
    }
}

/// The code for `host` out of the SLA's comma-separated `code`: the element at the index of
/// `host` in `arch` (Oakestra's rule); a single code with no `arch` runs anywhere.
pub fn select_code(code: &str, arch: &[Architecture], host: Architecture) -> Result<String> {
    let codes: Vec<&str> = code
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if codes.is_empty() {
        return Err(RuntimeError::bad("code", "no kernel archive given"));
    }
    if arch.is_empty() {
        return match codes.as_slice() {
            [one] => Ok((*one).to_owned()),
            _ => Err(RuntimeError::bad(
                "arch",
                format!("{} codes but no arch list to choose one by", codes.len()),
            )),
        };
    }
    let Some(i) = arch.iter().position(|a| *a == host) else {
        let offered: Vec<&str> = arch.iter().map(|a| a.as_str()).collect();
        return Err(RuntimeError::bad(
            "arch",
            format!(
                "no kernel for this worker's {} (the SLA offers {})",
                host.as_str(),
                offered.join(", ")
            ),
        ));
    };
    codes.get(i).map(|c| (*c).to_owned()).ok_or_else(|| {
        RuntimeError::bad(
            "code",
            format!(
                "arch lists {} at position {} but code has only {} entries",
                host.as_str(),
                i + 1,
                codes.len()
            ),
        )
    })
}

/// MiB of memory for the SLA's `memory` (0: the default).
pub fn memory_mb(requested: u64) -> Result<u64> {
    match requested {
        0 => Ok(DEFAULT_MEMORY_MB),
        m if m < MIN_MEMORY_MB => Err(RuntimeError::bad(
            "memory",
            format!("{m} MB is too little for a VM (at least {MIN_MEMORY_MB})"),
        )),
        m => Ok(m),
    }
}

/// What a kernel archive held, extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Shared read-only over 9p as `fs0`.
    pub files: Option<PathBuf>,
}

/// Everything one VM's command line depends on.
#[derive(Debug, Clone)]
pub struct Vm<'a> {
    pub name: &'a str,
    pub host: Architecture,
    pub accel: Accel,
    /// x86's microvm firmware (QEMU 10 needs it), when installed.
    pub bios: Option<&'a Path>,
    pub image: &'a Image,
    pub memory_mb: u64,
    pub vcpus: u32,
    pub cmd: &'a [String],
    pub serial_log: &'a Path,
    pub qmp: Option<&'a Path>,
    pub pid_file: &'a Path,
    /// Its network interface, when the instance is on the overlay.
    pub net: Option<&'a VmNet>,
}

/// A VM's `virtio-net` interface on a tap, and the address its guest takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNet {
    /// The tap (inside the namespace QEMU runs in).
    pub tap: String,
    pub mac: String,
    /// `vhost=on` (only when /dev/vhost-net exists).
    pub vhost: bool,
    /// The MTU offered to the guest (`host_mtu`, the instance's `eth0`).
    pub mtu: u32,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The prefix length of the worker's subnet (the netmask a Linux guest is given).
    pub prefix: u8,
}

/// QEMU's option syntax doubles a comma inside a value.
fn val(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The value of `-name` for a VM (also how its process is recognised).
pub fn name_arg(name: &str) -> String {
    format!("{},debug-threads=on", name.replace(',', ",,"))
}

/// The QEMU arguments (after the binary) for `vm`.
pub fn args(vm: &Vm) -> Vec<String> {
    let x86 = vm.host == Architecture::Amd64;
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| (*s).to_owned()));
    push(&[
        "-name",
        &format!("{},debug-threads=on", vm.name.replace(',', ",,")),
    ]);
    push(&["-machine", if x86 { "microvm" } else { "virt" }]);
    if x86 && let Some(bios) = vm.bios {
        push(&["-bios", &val(bios)]);
    }
    match (vm.accel, x86) {
        (Accel::Kvm, true) => push(&["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
        (Accel::Kvm, false) => push(&["-accel", "kvm", "-cpu", "host"]),
        (Accel::Tcg, _) => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&["-m", &format!("{}M", vm.memory_mb)]);
    push(&["-smp", &vm.vcpus.max(1).to_string()]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    push(&[
        "-chardev",
        &format!("file,id=serial0,path={},append=on", val(vm.serial_log)),
        "-serial",
        "chardev:serial0",
    ]);
    if let Some(qmp) = vm.qmp {
        push(&["-qmp", &format!("unix:{},server=on,wait=off", val(qmp))]);
    }
    push(&["-pidfile", &vm.pid_file.display().to_string()]);
    if x86 {
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    }
    push(&["-kernel", &vm.image.kernel.display().to_string()]);
    if let Some(initrd) = &vm.image.initrd {
        push(&["-initrd", &initrd.display().to_string()]);
    }
    if let Some(files) = &vm.image.files {
        push(&[
            "-fsdev",
            &format!(
                "local,id=fs0,path={},security_model=none,readonly=on",
                val(files)
            ),
            "-device",
            "virtio-9p-device,fsdev=fs0,mount_tag=fs0",
        ]);
    }
    // The network parameters first, then the SLA's `cmd`.
    let mut cmd = Vec::new();
    if let Some(n) = vm.net {
        let mut netdev = format!(
            "tap,id=n0,ifname={},script=no,downscript=no",
            n.tap.replace(',', ",,")
        );
        if n.vhost {
            netdev.push_str(",vhost=on");
        }
        // virtio-mmio on both machines (microvm has no PCI; `virt` has mmio transports too),
        // like the 9p share.
        push(&[
            "-netdev",
            &netdev,
            "-device",
            &format!(
                "virtio-net-device,netdev=n0,mac={},host_mtu={}",
                n.mac, n.mtu
            ),
        ]);
        cmd.extend(super::net::kernel_net_args(n.address, n.gateway, n.prefix));
    }
    cmd.extend_from_slice(vm.cmd);
    if !cmd.is_empty() {
        push(&["-append", &cmd.join(" ")]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use Architecture::{Amd64, Arm64};

    #[test]
    fn the_code_is_chosen_by_the_position_of_the_host_in_arch() {
        let two = "http://a/k_amd64.tar.gz, http://a/k_arm64.tar.gz";
        assert_eq!(
            select_code(two, &[Amd64, Arm64], Amd64).unwrap(),
            "http://a/k_amd64.tar.gz"
        );
        assert_eq!(
            select_code(two, &[Amd64, Arm64], Arm64).unwrap(),
            "http://a/k_arm64.tar.gz"
        );
        assert_eq!(select_code("/k.tar.gz", &[], Arm64).unwrap(), "/k.tar.gz");
        let e = select_code(two, &[Arm64], Amd64).unwrap_err().to_string();
        assert_eq!(
            e,
            "arch: no kernel for this worker's amd64 (the SLA offers arm64)"
        );
        let e = select_code("/k.tar.gz", &[Arm64, Amd64], Amd64)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("code: arch lists amd64 at position 2"), "{e}");
        assert!(
            select_code(two, &[], Amd64)
                .unwrap_err()
                .to_string()
                .starts_with("arch:")
        );
        assert!(
            select_code(" , ", &[], Amd64)
                .unwrap_err()
                .to_string()
                .starts_with("code:")
        );
    }

    #[test]
    fn memory_has_a_default_and_a_floor() {
        assert_eq!(memory_mb(0).unwrap(), DEFAULT_MEMORY_MB);
        assert_eq!(memory_mb(128).unwrap(), 128);
        let e = memory_mb(2).unwrap_err().to_string();
        assert!(e.starts_with("memory: 2 MB is too little"), "{e}");
    }

    #[test]
    fn kvm_only_when_usable_and_faster() {
        use AccelMode::*;
        let cases = [
            (Auto, true, Some(20), Some(50), Accel::Kvm),
            (Auto, true, Some(60), Some(30), Accel::Tcg),
            (Auto, false, None, Some(30), Accel::Tcg),
            (Auto, true, None, Some(30), Accel::Tcg),
            (Auto, true, Some(60), None, Accel::Kvm),
            (Auto, false, None, None, Accel::Tcg),
            (Kvm, false, None, None, Accel::Kvm),
            (Tcg, true, Some(1), Some(100), Accel::Tcg),
        ];
        for (mode, usable, k, t, want) in cases {
            assert_eq!(
                choose_accel(mode, usable, k, t),
                want,
                "{mode:?} {usable} {k:?} {t:?}"
            );
        }
    }

    fn vm<'a>(image: &'a Image, cmd: &'a [String], host: Architecture, accel: Accel) -> Vm<'a> {
        Vm {
            name: "a.b.instance.0",
            host,
            accel,
            bios: Some(Path::new("/usr/share/qemu/qboot.rom")),
            image,
            memory_mb: 96,
            vcpus: 2,
            cmd,
            serial_log: Path::new("/logs/a,b.log"),
            qmp: Some(Path::new("/q/1.sock")),
            pid_file: Path::new("/vm/pid"),
            net: None,
        }
    }

    #[test]
    fn the_command_line_follows_the_spec() {
        let image = Image {
            kernel: "/img/kernel".into(),
            initrd: Some("/img/initramfs.cpio".into()),
            files: Some("/img/files".into()),
        };
        let cmd = vec!["console=ttyS0".to_owned(), "quiet".to_owned()];
        let a = args(&vm(&image, &cmd, Amd64, Accel::Tcg)).join(" ");
        for part in [
            "-name a.b.instance.0,debug-threads=on",
            "-machine microvm -bios /usr/share/qemu/qboot.rom",
            "-accel tcg -cpu max -m 96M -smp 2",
            "-nodefaults -no-user-config -nographic -no-reboot",
            "-chardev file,id=serial0,path=/logs/a,,b.log,append=on -serial chardev:serial0",
            "-qmp unix:/q/1.sock,server=on,wait=off -pidfile /vm/pid",
            "-device isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel /img/kernel -initrd /img/initramfs.cpio",
            "-fsdev local,id=fs0,path=/img/files,security_model=none,readonly=on -device virtio-9p-device,fsdev=fs0,mount_tag=fs0",
            "-append console=ttyS0 quiet",
        ] {
            assert!(a.contains(part), "{part:?} missing in {a}");
        }
        let bare = Image {
            kernel: "/img/kernel".into(),
            initrd: None,
            files: None,
        };
        let a = args(&vm(&bare, &[], Amd64, Accel::Kvm)).join(" ");
        assert!(a.contains("-accel kvm -cpu host,-arch-capabilities"), "{a}");
        assert!(
            !a.contains("-initrd") && !a.contains("-fsdev") && !a.contains("-append"),
            "{a}"
        );
        let a = args(&vm(&bare, &[], Arm64, Accel::Kvm)).join(" ");
        assert!(a.contains("-machine virt -accel kvm -cpu host -m"), "{a}");
        assert!(!a.contains("-bios") && !a.contains("isa-debug-exit"), "{a}");
        assert!(!a.contains("-netdev"), "{a}");
    }

    #[test]
    fn a_vm_on_the_overlay_gets_a_tap_a_mac_and_its_address() {
        let image = Image {
            kernel: "/img/kernel".into(),
            initrd: None,
            files: None,
        };
        let mut net = VmNet {
            tap: "tap0".into(),
            mac: "02:11:22:33:44:55".into(),
            vhost: false,
            mtu: 1450,
            address: "10.18.0.5".parse().unwrap(),
            gateway: "10.18.0.1".parse().unwrap(),
            prefix: 26,
        };
        let cmd = vec!["console=ttyS0".to_owned()];
        let mut v = vm(&image, &cmd, Amd64, Accel::Tcg);
        v.net = Some(&net);
        let a = args(&v).join(" ");
        for part in [
            "-netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-device,netdev=n0,mac=02:11:22:33:44:55,host_mtu=1450",
            "-append netdev.ipv4_addr=10.18.0.5 netdev.ipv4_gw_addr=10.18.0.1 netdev.ipv4_subnet_mask=255.255.255.192 ip=10.18.0.5::10.18.0.1:255.255.255.192::eth0:off console=ttyS0",
        ] {
            assert!(a.contains(part), "{part:?} missing in {a}");
        }
        assert!(!a.contains("vhost"), "{a}");
        net.vhost = true;
        let mut v = vm(&image, &[], Arm64, Accel::Kvm);
        v.net = Some(&net);
        let a = args(&v).join(" ");
        assert!(
            a.contains("ifname=tap0,script=no,downscript=no,vhost=on -device virtio-net-device"),
            "{a}"
        );
        assert!(
            a.ends_with(
                "-append netdev.ipv4_addr=10.18.0.5 netdev.ipv4_gw_addr=10.18.0.1 \
                 netdev.ipv4_subnet_mask=255.255.255.192 \
                 ip=10.18.0.5::10.18.0.1:255.255.255.192::eth0:off"
            ),
            "{a}"
        );
    }
}
