//! The doctor's decisions: what the gathered [`Facts`] mean, one [`Line`] per check, each OK
//! or what to do. Pure; the gathering is in `doctor.rs`.

use std::fmt;

/// How a check came out. A failure makes `canopy doctor` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub level: Level,
    pub check: &'static str,
    pub text: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "OK  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        write!(f, "{level} {:<12} {}", self.check, self.text)
    }
}

fn line(level: Level, check: &'static str, text: impl Into<String>) -> Line {
    Line {
        level,
        check,
        text: text.into(),
    }
}

/// containerd as seen through its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Containerd {
    NoSocket,
    /// The socket exists but a connection fails (the daemon stopped, no permission).
    Unreachable(String),
    /// Answers; the server's version if `ctr version` could tell.
    Running(Option<String>),
}

/// The cgroup hierarchy mounted at `/sys/fs/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// Unified (v2), with the controllers it offers.
    V2(Vec<String>),
    /// Legacy (v1) or hybrid, with the controllers mounted.
    V1(Vec<String>),
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    Loaded,
    /// Built into the kernel (`/proc/config.gz`: `=y`, or `modules.builtin`).
    Builtin,
    /// A module that loads on demand.
    Available,
    Missing,
    /// The kernel says nothing either way (no module list, no config).
    Unknown,
}

/// Whether a target (cluster or root) answered, and with what `Date`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub what: &'static str,
    pub url: String,
    /// HTTP status, or why there was none.
    pub answer: Result<u16, String>,
    /// The server's clock minus ours, seconds (from its `Date` header).
    pub skew_secs: Option<i64>,
}

/// Everything the checks look at, gathered at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Whether the worker's checks apply (containerd, runc, cgroups, kvm, overlay).
    pub worker: bool,
    pub containerd_socket: String,
    pub containerd: Containerd,
    /// `runc --version`'s first line.
    pub runc: Option<String>,
    pub cgroups: Cgroups,
    /// `/dev/kvm`: None if absent, else whether it opens read-write.
    pub kvm: Option<bool>,
    /// The QEMU this architecture needs (`qemu-system-x86_64`), if there is one.
    pub qemu_binary: Option<&'static str>,
    /// Its `--version`'s first line, if it is installed.
    pub qemu: Option<String>,
    /// `nft --version`.
    pub nft: Option<String>,
    pub modules: Vec<(&'static str, Module)>,
    /// Port, what uses it, whether it can be bound.
    pub ports: Vec<(u16, &'static str, bool)>,
    /// Seconds since 1970 on this machine.
    pub now_unix: i64,
    pub reach: Vec<Reach>,
}

/// The kernel modules the overlay (the net manager) needs.
pub const OVERLAY_MODULES: [&str; 5] = ["vxlan", "bridge", "veth", "nf_nat", "nf_conntrack"];
/// Clock skew beyond which tokens and reports go wrong.
const MAX_SKEW_SECS: i64 = 5;
/// 2024-01-01: a clock before it has never been set.
const CLOCK_FLOOR: i64 = 1_704_067_200;

/// Every check's line, in the order they are printed.
pub fn checks(f: &Facts) -> Vec<Line> {
    let mut out = Vec::new();
    if f.worker {
        out.push(containerd(&f.containerd_socket, &f.containerd));
        out.push(match &f.runc {
            Some(v) => line(Level::Ok, "runc", v.clone()),
            None => line(Level::Fail, "runc", "not found: apt-get install runc"),
        });
        out.push(cgroups(&f.cgroups));
        out.push(match f.kvm {
            Some(true) => line(Level::Ok, "kvm", "/dev/kvm opens read-write"),
            Some(false) => line(Level::Warn, "kvm", "/dev/kvm is there but does not open read-write: run as root"),
            None => line(Level::Warn, "kvm", "no /dev/kvm: unikernels run under software emulation (TCG), slower (enable virtualization; modprobe kvm_intel or kvm_amd)"),
        });
        out.push(qemu(f.qemu_binary, f.qemu.as_deref()));
        out.push(match &f.nft {
            Some(v) => line(Level::Ok, "nftables", v.clone()),
            None => line(
                Level::Warn,
                "nftables",
                "nft not found: the overlay needs it (apt-get install nftables)",
            ),
        });
        for (name, state) in &f.modules {
            out.push(module(name, *state));
        }
    }
    for (port, what, free) in &f.ports {
        out.push(if *free {
            line(Level::Ok, "port", format!("{port} ({what}) is free"))
        } else {
            line(Level::Warn, "port", format!("{port} ({what}) is in use: if not by Canopy, free it or give the daemon another address"))
        });
    }
    out.push(clock(f.now_unix, &f.reach));
    for r in &f.reach {
        out.push(match &r.answer {
            Ok(s) if (200..300).contains(s) => {
                line(Level::Ok, r.what, format!("{} answers", r.url))
            }
            Ok(s) => line(Level::Fail, r.what, format!("{} answers {s}: is it a Canopy {}?", r.url, r.what)),
            Err(e) => line(Level::Fail, r.what, format!("{} unreachable ({e}): check the address, that it runs, and firewalls on the way", r.url)),
        });
    }
    out
}

/// QEMU runs unikernels (`virtualization: unikernel`); without it a worker offers the rest.
fn qemu(binary: Option<&str>, version: Option<&str>) -> Line {
    match (binary, version) {
        (Some(_), Some(v)) => line(Level::Ok, "qemu", v),
        (Some(b), None) => {
            let package = if b.ends_with("x86_64") {
                "qemu-system-x86"
            } else {
                "qemu-system-arm"
            };
            line(
                Level::Warn,
                "qemu",
                format!(
                    "{b} not found: unikernels are not offered (the node engine and `canopy up` run the other runtimes); apt-get install {package}"
                ),
            )
        }
        (None, _) => line(
            Level::Warn,
            "qemu",
            format!(
                "no QEMU for {}: unikernels are not offered here",
                std::env::consts::ARCH
            ),
        ),
    }
}

fn containerd(socket: &str, c: &Containerd) -> Line {
    let fix = "start it: systemctl start containerd (install: apt-get install containerd runc), or give --containerd-socket";
    match c {
        Containerd::NoSocket => line(
            Level::Fail,
            "containerd",
            format!("not running: no socket at {socket}; {fix}"),
        ),
        Containerd::Unreachable(e) => line(
            Level::Fail,
            "containerd",
            format!("{socket} does not answer ({e}); {fix}"),
        ),
        Containerd::Running(Some(v)) if too_old(v) => line(
            Level::Warn,
            "containerd",
            format!("{v} at {socket} is older than 1.6: upgrade containerd"),
        ),
        Containerd::Running(v) => line(
            Level::Ok,
            "containerd",
            format!(
                "{} at {socket}",
                v.as_deref().unwrap_or("running (version unknown)")
            ),
        ),
    }
}

/// Whether a containerd version (`1.6.20~ds1`, `v1.7.2`) is before 1.6.
fn too_old(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (1, 6),
        _ => false,
    }
}

fn cgroups(c: &Cgroups) -> Line {
    let need = ["cpu", "memory", "pids"];
    let missing = |have: &[String]| -> Vec<&str> {
        need.iter()
            .copied()
            .filter(|n| !have.iter().any(|h| h == n))
            .collect()
    };
    match c {
        Cgroups::V2(have) | Cgroups::V1(have) if !missing(have).is_empty() => line(
            Level::Fail,
            "cgroups",
            format!(
                "controllers {} missing: enable them (kernel command line cgroup_enable=…; systemd.unified_cgroup_hierarchy=1)",
                missing(have).join(", ")
            ),
        ),
        Cgroups::V2(_) => line(Level::Ok, "cgroups", "v2 with cpu, memory, pids"),
        Cgroups::V1(_) => line(
            Level::Ok,
            "cgroups",
            "v1 (or hybrid) with cpu, memory, pids",
        ),
        Cgroups::None => line(
            Level::Fail,
            "cgroups",
            "no cgroup file system at /sys/fs/cgroup: mount it (systemd does at boot)",
        ),
    }
}

fn module(name: &'static str, m: Module) -> Line {
    let fix = format!("the overlay needs {name}: modprobe {name}, or a kernel built with it");
    match m {
        Module::Loaded => line(Level::Ok, "module", format!("{name} loaded")),
        Module::Builtin => line(Level::Ok, "module", format!("{name} built in")),
        Module::Available => line(
            Level::Ok,
            "module",
            format!("{name} available (loads on demand)"),
        ),
        Module::Missing => line(Level::Warn, "module", format!("{name} missing: {fix}")),
        Module::Unknown => line(
            Level::Warn,
            "module",
            format!("{name}: the kernel lists no modules or config; {fix}"),
        ),
    }
}

fn clock(now: i64, reach: &[Reach]) -> Line {
    if now < CLOCK_FLOOR {
        return line(
            Level::Fail,
            "clock",
            "the system clock is before 2024: set it (timedatectl set-ntp true)",
        );
    }
    let worst = reach
        .iter()
        .filter_map(|r| r.skew_secs.map(|s| (s, r.what)))
        .max_by_key(|(s, _)| s.abs());
    match worst {
        Some((s, what)) if s.abs() > MAX_SKEW_SECS => line(
            Level::Fail,
            "clock",
            format!("{s:+} s off the {what}'s clock: run NTP on both (timedatectl set-ntp true)"),
        ),
        Some((s, what)) => line(
            Level::Ok,
            "clock",
            format!("within {} s of the {what}'s", s.abs()),
        ),
        None => line(
            Level::Ok,
            "clock",
            "set (give --cluster or --root to compare)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            worker: true,
            containerd_socket: "/run/containerd/containerd.sock".into(),
            containerd: Containerd::Running(Some("1.6.20~ds1".into())),
            runc: Some("runc version 1.1.5".into()),
            cgroups: Cgroups::V2(vec![
                "cpu".into(),
                "memory".into(),
                "pids".into(),
                "io".into(),
            ]),
            kvm: Some(true),
            qemu_binary: Some("qemu-system-x86_64"),
            qemu: Some("QEMU emulator version 10.0.2".into()),
            nft: Some("nftables v1.0.6".into()),
            modules: OVERLAY_MODULES
                .iter()
                .map(|m| (*m, Module::Builtin))
                .collect(),
            ports: vec![(10110, "node engine API", true)],
            now_unix: 1_800_000_000,
            reach: vec![Reach {
                what: "cluster",
                url: "http://10.0.0.2:10100/health".into(),
                answer: Ok(200),
                skew_secs: Some(1),
            }],
        }
    }

    fn find<'a>(lines: &'a [Line], check: &str) -> &'a Line {
        lines.iter().find(|l| l.check == check).expect(check)
    }

    #[test]
    fn a_healthy_worker_is_all_ok() {
        let lines = checks(&healthy());
        assert!(lines.iter().all(|l| l.level == Level::Ok), "{lines:#?}");
        assert_eq!(lines.len(), 5 + 1 + 5 + 1 + 1 + 1);
    }

    #[test]
    fn a_stopped_containerd_fails_with_the_fix() {
        let mut f = healthy();
        f.containerd_socket = "/nowhere/containerd.sock".into();
        f.containerd = Containerd::NoSocket;
        let l = find(&checks(&f), "containerd").clone();
        assert_eq!(l.level, Level::Fail);
        assert!(
            l.text.contains("no socket at /nowhere/containerd.sock"),
            "{l}"
        );
        assert!(l.text.contains("systemctl start containerd"), "{l}");
        f.containerd = Containerd::Unreachable("connection refused".into());
        assert_eq!(find(&checks(&f), "containerd").level, Level::Fail);
    }

    #[test]
    fn versions_and_levels() {
        assert!(too_old("1.5.9"));
        assert!(too_old("v0.9"));
        assert!(!too_old("1.6.20~ds1"));
        assert!(!too_old("2.0.0"));
        assert!(!too_old("unknown"));
        let mut f = healthy();
        f.containerd = Containerd::Running(Some("1.4.1".into()));
        f.runc = None;
        f.cgroups = Cgroups::V1(vec!["cpu".into()]);
        f.kvm = None;
        f.modules = vec![("vxlan", Module::Missing)];
        f.ports = vec![(10110, "node engine API", false)];
        let lines = checks(&f);
        assert_eq!(find(&lines, "containerd").level, Level::Warn);
        assert_eq!(find(&lines, "runc").level, Level::Fail);
        let cg = find(&lines, "cgroups");
        assert_eq!(cg.level, Level::Fail);
        assert!(cg.text.contains("memory, pids missing"), "{cg}");
        assert_eq!(find(&lines, "kvm").level, Level::Warn);
        assert!(find(&lines, "kvm").text.contains("software emulation"));
        assert!(find(&lines, "module").text.contains("modprobe vxlan"));
        assert!(
            find(&lines, "port")
                .text
                .contains("10110 (node engine API) is in use")
        );
    }

    #[test]
    fn without_qemu_unikernels_are_a_warning_not_a_failure() {
        let mut f = healthy();
        f.qemu = None;
        let l = find(&checks(&f), "qemu").clone();
        assert_eq!(l.level, Level::Warn);
        assert!(
            l.text.contains("qemu-system-x86_64 not found")
                && l.text.contains("unikernels are not offered")
                && l.text.contains("apt-get install qemu-system-x86"),
            "{l}"
        );
        f.qemu_binary = Some("qemu-system-aarch64");
        assert!(
            find(&checks(&f), "qemu")
                .text
                .contains("apt-get install qemu-system-arm")
        );
        f.qemu_binary = None;
        assert_eq!(find(&checks(&f), "qemu").level, Level::Warn);
        assert_eq!(find(&checks(&healthy()), "qemu").level, Level::Ok);
    }

    #[test]
    fn the_clock_is_compared_with_the_targets() {
        let mut f = healthy();
        f.reach[0].skew_secs = Some(-40);
        let c = find(&checks(&f), "clock").clone();
        assert_eq!(c.level, Level::Fail);
        assert!(c.text.contains("-40 s off the cluster's clock"), "{c}");
        f.now_unix = 1_000;
        assert!(find(&checks(&f), "clock").text.contains("before 2024"));
        f.now_unix = 1_800_000_000;
        f.reach.clear();
        assert_eq!(find(&checks(&f), "clock").level, Level::Ok);
    }

    #[test]
    fn an_unreachable_target_fails() {
        let mut f = healthy();
        f.reach[0].answer = Err("connection refused".into());
        let l = find(&checks(&f), "cluster").clone();
        assert_eq!(l.level, Level::Fail);
        assert!(l.text.contains("unreachable (connection refused)"), "{l}");
        f.reach[0].answer = Ok(404);
        assert_eq!(find(&checks(&f), "cluster").level, Level::Fail);
    }

    #[test]
    fn non_worker_roles_skip_the_runtime_checks() {
        let mut f = healthy();
        f.worker = false;
        f.containerd = Containerd::NoSocket;
        let lines = checks(&f);
        assert!(lines.iter().all(|l| l.check != "containerd"));
        assert!(lines.iter().all(|l| l.level == Level::Ok));
    }
}
